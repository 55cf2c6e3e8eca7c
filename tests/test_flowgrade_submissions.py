"""flowgrade.submissions against hostile trees (DESIGN.md 4b): links, FIFOs, any name bytes,
deep and wide trees, huge sparse files, read-only folders, links planted at run time.

Every tree is built by the test itself. Trees that need many inodes (the deep chain, 5,000
files) go to a tmpfs when there is one: on this machine's ext4, rmdir costs about 3 ms whatever
the code, so 100,000 nested folders take ~5 min to delete on disk and ~5 s on tmpfs.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from flowgrade.submissions import (
    FileTooLargeError, TreeLimits, UnsafeTreeError, list_submissions, read_notebook_bytes,
    remove_tree, safe_write, snapshot, tree_size,
)

NB = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
SECRET = b"hidden test: assert f(3) == 42"


def within(seconds: float, fn, *args, **kwargs):
    """Run fn in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def fast_tmp(tmp_path):
    """A fresh folder on tmpfs (/dev/shm) when available, else tmp_path; removed afterwards."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(dir=shm, prefix="flowgrade-test-"))
        yield d
        remove_tree(d)
    else:
        yield tmp_path


@pytest.fixture
def outside(tmp_path):
    """Instructor files outside any submission: a 0600 secret and a solutions folder."""
    out = tmp_path / "instructor"
    (out / "solutions" / "ps1").mkdir(parents=True)
    (out / "solutions" / "ps1" / "ps1.ipynb").write_bytes(SECRET)
    secret = out / "gradebook.db"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return out


def make_sub(root: Path, student: str, assignment: str = "ps1") -> Path:
    d = root / student / assignment
    d.mkdir(parents=True)
    (d / "ps1.ipynb").write_bytes(NB)
    return d


def all_bytes_under(folder: Path) -> bytes:
    out = b""
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                out += p.read_bytes()
    return out


def deep_chain(base: Path, depth: int, leaf: bytes = b"") -> float:
    """base/d/d/.../d (depth folders) made without recursion or long paths; seconds taken."""
    t0 = time.perf_counter()
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if leaf:
            out = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, leaf)
            os.close(out)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- list_submissions

def test_symlinked_assignment_and_student_folders_are_rejected_not_followed(tmp_path, outside):
    root = tmp_path / "submitted"
    make_sub(root, "bob")
    (root / "alice").mkdir()
    # The attack that graded the solutions as alice's work: her ps1 *is* the solutions folder.
    (root / "alice" / "ps1").symlink_to(outside / "solutions" / "ps1")
    # A whole student folder that is a link to another student's.
    (root / "mallory").symlink_to(root / "bob")
    subs, rejected = list_submissions(root)
    assert [s.key for s in subs] == ["bob/ps1"]
    why = {r.path: r.reason for r in rejected}
    assert "symbolic link" in why["alice/ps1"]
    assert "symbolic link" in why["mallory"]


def test_bad_names_and_special_files_are_rejected_with_printable_reasons(tmp_path):
    root = tmp_path / "submitted"
    make_sub(root, "bob")
    make_sub(root, "carol", "ps1.backup")
    broot = os.fsencode(root)
    os.mkdir(broot + b"/\xff\xfeevil")  # not UTF-8
    os.makedirs(broot + b"/dave/\xc3(")  # bad UTF-8 assignment
    (root / "eve\nx").mkdir()  # a newline would forge lines in a report
    (root / ".hidden").mkdir()
    (root / ("x" * 65)).mkdir()
    (root / "notes.txt").write_text("a file, not a student")
    os.mkfifo(root / "fifo")
    (root / "frank").mkdir()
    os.mkfifo(root / "frank" / "ps1")
    subs, rejected = within(10, list_submissions, root)
    assert sorted(s.key for s in subs) == ["bob/ps1", "carol/ps1.backup"]
    paths = {r.path for r in rejected}
    assert repr(b"\xff\xfeevil") in paths and "dave/" + repr(b"\xc3(") in paths
    assert repr("eve\nx") in paths and "frank/ps1" in paths
    assert all(r.path.isprintable() and r.reason.isprintable() for r in rejected)
    assert len(rejected) == 8


def test_missing_root_is_empty(tmp_path):
    assert list_submissions(tmp_path / "nope") == ([], [])


# ----------------------------------------------------------------------------- snapshot

def test_snapshot_copies_regular_files_with_grader_modes(tmp_path):
    src = make_sub(tmp_path / "submitted", "bob")
    (src / "ps1.ipynb").chmod(0o600)
    (src / "helper.py").write_text("x = 1\n")
    (src / "helper.py").chmod(0o4777)  # setuid and world-writable: neither may survive
    (src / "data" / "sub").mkdir(parents=True)
    (src / "data" / "sub" / "a.csv").write_text("1,2\n")
    (src / "data").chmod(0o700)
    snap = snapshot(src, tmp_path / "work")
    assert snap.files == ["data/sub/a.csv", "helper.py", "ps1.ipynb"]
    assert snap.skipped == [] and not snap.truncated
    assert (tmp_path / "work" / "ps1.ipynb").read_bytes() == NB
    for dirpath, dirs, files in os.walk(tmp_path / "work"):
        assert stat.S_IMODE(os.lstat(dirpath).st_mode) == 0o755
        for f in files:
            st = os.lstat(Path(dirpath) / f)
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
            assert st.st_uid == os.getuid()
    with pytest.raises(FileExistsError):  # dest must be fresh
        snapshot(src, tmp_path / "work")


def test_snapshot_never_follows_links_to_secrets(tmp_path, outside):
    src = make_sub(tmp_path / "submitted", "alice")
    (src / "answers.ipynb").symlink_to(outside / "gradebook.db")  # a 0600 file outside
    (src / "sol").symlink_to(outside / "solutions")
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    os.link(outside / "gradebook.db", src / "hardlinked.db")
    snap = snapshot(src, tmp_path / "work")
    reasons = {s.path: s.reason for s in snap.skipped}
    assert "symbolic link" in reasons["answers.ipynb"] and "symbolic link" in reasons["sol"]
    assert "symbolic link" in reasons["dangling"] and "hard link" in reasons["hardlinked.db"]
    assert snap.files == ["ps1.ipynb"]
    assert SECRET not in all_bytes_under(tmp_path / "work")
    assert stat.S_IMODE((outside / "gradebook.db").stat().st_mode) == 0o600
    assert not any(p.is_symlink() for p in (tmp_path / "work").rglob("*"))


def test_snapshot_refuses_a_linked_submission_folder(tmp_path, outside):
    root = tmp_path / "submitted"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "ps1").symlink_to(outside / "solutions" / "ps1")
    with pytest.raises(UnsafeTreeError):
        snapshot(root / "alice" / "ps1", tmp_path / "work")
    assert not (tmp_path / "work").exists()
    # Listed as a real folder, then swapped for a link before the copy: trusted_root re-checks.
    make_sub(root, "bob")
    (subs, _) = list_submissions(root)
    (sub,) = subs
    os.rename(root / "bob", tmp_path / "bob-moved")
    (root / "bob").symlink_to(outside / "solutions")
    with pytest.raises(UnsafeTreeError):
        snapshot(sub.path, tmp_path / "work", trusted_root=sub.root)


def test_fifo_named_like_the_notebook_never_blocks(tmp_path):
    src = tmp_path / "submitted" / "alice" / "ps1"
    src.mkdir(parents=True)
    os.mkfifo(src / "ps1.ipynb")
    snap = within(5, snapshot, src, tmp_path / "work")
    assert snap.files == [] and "FIFO" in snap.skipped[0].reason
    with pytest.raises(UnsafeTreeError, match="FIFO"):
        within(5, read_notebook_bytes, src / "ps1.ipynb", 2**20)


def test_read_notebook_bytes(tmp_path, outside):
    (tmp_path / "ok.ipynb").write_bytes(NB)
    assert read_notebook_bytes(tmp_path / "ok.ipynb", 2**20) == NB
    (tmp_path / "link.ipynb").symlink_to(outside / "gradebook.db")
    with pytest.raises(UnsafeTreeError, match="symbolic link"):
        read_notebook_bytes(tmp_path / "link.ipynb", 2**20)
    with pytest.raises(FileTooLargeError):
        read_notebook_bytes(tmp_path / "ok.ipynb", len(NB) - 1)
    with open(tmp_path / "huge.ipynb", "wb") as f:
        f.truncate(100 * 2**20)  # sparse: costs no disk, and must not be read
    t0 = time.perf_counter()
    with pytest.raises(FileTooLargeError):
        read_notebook_bytes(tmp_path / "huge.ipynb", 20 * 2**20)
    assert time.perf_counter() - t0 < 1
    with pytest.raises(UnsafeTreeError):
        read_notebook_bytes(tmp_path, 2**20)
    with pytest.raises(FileNotFoundError):
        read_notebook_bytes(tmp_path / "missing.ipynb", 2**20)


def test_snapshot_skips_bad_names_with_printable_records(tmp_path):
    src = make_sub(tmp_path / "submitted", "alice")
    bsrc = os.fsencode(src)
    for raw in (b"\xff\xfe.ipynb", b"ok\x1b[31m.py", "rtl\u202egnp.exe".encode()):
        with open(bsrc + b"/" + raw, "wb") as f:
            f.write(b"x")
    os.mkdir(bsrc + b"/\xc3(dir")
    with open(bsrc + b"/\xc3(dir/inner.py", "wb") as f:
        f.write(b"x")
    (src / ".ipynb_checkpoints").mkdir()
    (src / "café.py").write_text("ok = True\n")  # non-ASCII but valid: kept
    snap = snapshot(src, tmp_path / "work")
    assert sorted(snap.files) == ["café.py", "ps1.ipynb"]
    skipped = {s.path: s.reason for s in snap.skipped}
    assert skipped[repr(b"\xff\xfe.ipynb")] == "name is not valid UTF-8"
    assert skipped[repr(b"\xc3(dir")] == "name is not valid UTF-8"
    assert "control" in skipped[repr("ok\x1b[31m.py")]
    assert "control" in skipped[repr("rtl\u202egnp.exe")]
    assert skipped[".ipynb_checkpoints"] == "hidden name"
    assert all(s.path.isprintable() and s.reason.isprintable() for s in snap.skipped)
    assert snap.report().count("\n") == len(snap.skipped)


def test_snapshot_limits_entries_depth_and_bytes(fast_tmp):
    wide = fast_tmp / "wide"
    wide.mkdir()
    for i in range(5000):
        (wide / f"f{i:04d}.txt").write_bytes(b"x")
    t0 = time.perf_counter()
    snap = snapshot(wide, fast_tmp / "wide-copy")
    elapsed = time.perf_counter() - t0
    assert snap.truncated and len(snap.files) == 2000 and snap.entries == 2001
    assert len(os.listdir(fast_tmp / "wide-copy")) == 2000 and elapsed < 10

    deep = fast_tmp / "deep"
    deep.mkdir()
    deep_chain(deep, 12, leaf=b"deep")
    snap = snapshot(deep, fast_tmp / "deep-copy")
    assert len(snap.dirs) == 8 and snap.files == []
    assert "deeper than 8" in snap.skipped[0].reason

    big = fast_tmp / "big"
    big.mkdir()
    with open(big / "a_huge.ipynb", "wb") as f:
        f.truncate(100 * 2**20)  # sparse 100 MB: over the 20 MB cap, skipped without reading
    for name in ("b", "c", "d"):
        (big / name).write_bytes(b"y" * (15 * 2**20))
    limits = TreeLimits(max_total_bytes=40 * 2**20)
    snap = snapshot(big, fast_tmp / "big-copy", limits)
    assert snap.files == ["b", "c"] and snap.total_bytes == 30 * 2**20
    reasons = [s.reason for s in snap.skipped]
    assert reasons[0].startswith("larger than 20971520 bytes") and "total limit" in reasons[1]
    assert tree_size(fast_tmp / "big-copy", 2**40) < 31 * 2**20


# ----------------------------------------------------------------------------- safe_write

def test_safe_write_replaces_a_planted_link_and_never_touches_its_target(tmp_path, outside):
    feedback = tmp_path / "feedback"
    (feedback / "alice" / "ps1").mkdir(parents=True)
    # Student code at run time plants a link where the feedback page will be written.
    target = outside / "gradebook.db"
    (feedback / "alice" / "ps1" / "ps1.html").symlink_to(target)
    out = safe_write(feedback, "alice/ps1/ps1.html", b"<p>feedback</p>")
    assert out == feedback / "alice" / "ps1" / "ps1.html"
    st = os.lstat(out)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert out.read_bytes() == b"<p>feedback</p>"
    assert target.read_bytes() == SECRET and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in out.parent.iterdir()) == ["ps1.html"]  # no temp file left


def test_safe_write_refuses_linked_parents(tmp_path, outside):
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    (feedback / "alice").symlink_to(outside / "solutions")  # a linked student folder
    with pytest.raises(UnsafeTreeError):
        safe_write(feedback, "alice/ps1/ps1.ipynb", b"overwritten")
    assert (outside / "solutions" / "ps1" / "ps1.ipynb").read_bytes() == SECRET
    (tmp_path / "linked-root").symlink_to(outside)
    with pytest.raises(UnsafeTreeError):
        safe_write(tmp_path / "linked-root", "x.html", b"x")
    assert not (outside / "x.html").exists()
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "", "a/\x1b.html", "a/."):
        with pytest.raises(ValueError):
            safe_write(feedback, bad, b"x")


def test_safe_write_over_fifo_and_folder(tmp_path):
    root = tmp_path / "autograded"
    (root / "a").mkdir(parents=True)
    os.mkfifo(root / "a" / "ps1.ipynb")
    within(5, safe_write, root, "a/ps1.ipynb", NB)  # replaced, never opened for writing
    assert (root / "a" / "ps1.ipynb").read_bytes() == NB
    (root / "a" / "dir.html").mkdir()
    with pytest.raises(IsADirectoryError):
        safe_write(root, "a/dir.html", b"x")
    assert sorted(p.name for p in (root / "a").iterdir()) == ["dir.html", "ps1.ipynb"]
    safe_write(root, "new/deeper/f.txt", b"z")  # missing folders are created 0o755
    assert stat.S_IMODE((root / "new" / "deeper").stat().st_mode) == 0o755


# ------------------------------------------------------------------------- remove_tree, tree_size

def test_remove_tree_beyond_the_recursion_limit(fast_tmp):
    on_tmpfs = str(fast_tmp).startswith("/dev/shm")
    # Measured here on tmpfs: 100,000 folders take 1.5 s to create and 5 s to remove (8-10 s
    # under load, a third of the suite's budget), so the suite uses 50,000 (FLOWGRADE_TEST_DEPTH
    # runs any other). On disk each rmdir costs ~3 ms whatever the code (100,000: 5 min), so
    # there it goes just past the recursion limit that broke shutil.rmtree and os.walk.
    depth = int(os.environ.get("FLOWGRADE_TEST_DEPTH", 50_000)) if on_tmpfs \
        else sys.getrecursionlimit() + 200
    assert depth > sys.getrecursionlimit()
    created = deep_chain(fast_tmp, depth, leaf=b"x" * 10)
    assert created < 5, f"creating {depth} folders took {created:.1f} s"
    remove_tree(fast_tmp / "d")
    assert os.listdir(fast_tmp) == []


def test_tree_size_and_snapshot_beyond_the_recursion_limit(fast_tmp):
    depth = sys.getrecursionlimit() + 500
    deep_chain(fast_tmp, depth, leaf=b"x" * 10)
    assert tree_size(fast_tmp / "d", 2**60) >= depth + 10  # every folder and the leaf
    assert tree_size(fast_tmp / "d", 100) > 100  # stops once past the cap
    snap = snapshot(fast_tmp / "d", fast_tmp / "copy")  # stops at 8 levels, no recursion
    assert len(snap.dirs) == 8 and snap.skipped[0].reason == "deeper than 8 levels"


def test_remove_tree_links_readonly_folders_and_bad_names(tmp_path, outside):
    victim = tmp_path / "autograded"
    (victim / "ro" / "inner").mkdir(parents=True)
    (victim / "ro" / "inner" / "f").write_text("x")
    (victim / "ro" / "f").write_text("x")
    (victim / "ro" / "inner").chmod(0o500)
    (victim / "ro").chmod(0o555)
    (victim / "none").mkdir()
    (victim / "none").chmod(0)
    os.makedirs(os.fsencode(victim) + b"/\xff\xfe/\x80")
    (victim / "to-solutions").symlink_to(outside / "solutions")
    (victim / "to-secret").symlink_to(outside / "gradebook.db")
    os.mkfifo(victim / "fifo")
    remove_tree(victim)
    assert not victim.exists() and not victim.is_symlink()
    assert (outside / "solutions" / "ps1" / "ps1.ipynb").read_bytes() == SECRET
    assert stat.S_IMODE((outside / "gradebook.db").stat().st_mode) == 0o600
    remove_tree(victim)  # missing: nothing to do
    # A link given as the tree itself: the link goes, its target stays.
    (tmp_path / "link").symlink_to(outside / "solutions")
    remove_tree(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink() and (outside / "solutions" / "ps1").is_dir()


def test_tree_size_counts_sparse_files_and_ignores_link_targets(tmp_path, outside):
    t = tmp_path / "work"
    t.mkdir()
    with open(t / "sparse", "wb") as f:
        f.truncate(100 * 2**20)
    (t / "link").symlink_to(outside / "gradebook.db")
    size = tree_size(t, 2**40)
    assert 100 * 2**20 <= size < 100 * 2**20 + 64 * 2**10
    assert tree_size(tmp_path / "missing", 10) == 0
