r"""Submitted trees, handled as hostile input (DESIGN.md section 4b).

Everything under ``grading/submitted/`` was written by students, and anything under a work,
autograded or feedback folder may have been touched by student code at run time.  This module
is the only place the driver reads or writes such trees, and it guarantees:

* **No symbolic link is ever followed** below a trusted root: every component is opened with
  ``O_NOFOLLOW`` relative to the already-open parent (``openat`` style), and every file is
  ``fstat``-ed after opening, so swapping an entry for a link between a check and a use gains
  nothing.
* **Nothing blocks**: FIFOs, sockets and devices are recognised from ``lstat`` and never opened;
  regular files are opened with ``O_NONBLOCK`` in case one is swapped in meanwhile.
* **Any name bytes** are survivable: names are handled as bytes; an undecodable or control-
  character name is skipped or rejected with a printable ``repr``, never raised on.
* **Bounded, iterative walks**: no recursion anywhere (a chain of 100,000 folders is fine),
  limits on depth, entries and bytes, and a bounded number of open descriptors.
* **Grader-owned output**: copies are 0o755 folders and 0o644 files created by this process;
  nothing is ever ``chmod``-ed by path, so a planted link cannot redirect a mode change.

Names and reasons in :class:`Rejected` and :class:`Skipped` are printable but student-chosen:
escape them (``flowgrade.sanitize``) before they go into HTML, Markdown or CSV.

Example::

    subs, rejected = list_submissions(course / "grading" / "submitted")
    for sub in subs:
        snap = snapshot(sub.path, work / sub.student / sub.assignment, trusted_root=sub.root)
        nb = read_notebook_bytes(snap.dest / "ps1.ipynb", cap=20 * 2**20)
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NAME_PATTERN", "Submission", "Rejected", "TreeLimits", "Skipped", "Snapshot",
    "UnsafeTreeError", "FileTooLargeError",
    "list_submissions", "snapshot", "read_notebook_bytes", "remove_tree", "tree_size",
    "safe_write", "printable_name",
]

#: Student and assignment folder names (fullmatch: ``$`` alone would accept a trailing newline).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
# O_NOFOLLOW is what makes every open below safe; a platform without it is not supported.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _NOCTTY | _CLOEXEC
_CHUNK = 1 << 20


class UnsafeTreeError(Exception):
    """A path cannot be used safely: a symbolic link, a FIFO, a device, a changed tree."""


class FileTooLargeError(UnsafeTreeError):
    """A file is larger than the cap it is read or copied with."""


# ----------------------------------------------------------------------------- names

def _bad_char(ch: str) -> bool:
    # Cc: C0/C1 controls (terminal escapes, newlines, tabs); Cf: format characters such as
    # U+202E RIGHT-TO-LEFT OVERRIDE, which make a name display as something it is not;
    # Zl/Zp: line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def printable_name(name: bytes | str) -> str:
    """A one-line printable form of a name: itself when valid UTF-8 without control or format
    characters, else its Python ``repr`` (of the bytes when they are not UTF-8)."""
    if isinstance(name, str):
        name = os.fsencode(name)  # undo surrogateescape so the repr shows the real bytes
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return repr(name)
    if not text or any(_bad_char(c) for c in text) or "/" in text:
        return repr(text)  # repr escapes every non-printable character
    return text


def _name_problem(name: bytes) -> str:
    """'' when a file name may be copied, else why not."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return "name is not valid UTF-8"
    if "/" in text or "\x00" in text or text in (".", ".."):
        return "name is not a plain file name"
    if any(_bad_char(c) for c in text):
        return "name contains control or format characters"
    return ""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link (not followed)"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "regular file"
    return "special file"


# ----------------------------------------------------------------------------- listing

@dataclass(frozen=True)
class Submission:
    """A ``<root>/<student>/<assignment>/`` folder whose two names matched :data:`NAME_PATTERN`
    and which were real directories (not links) when listed. ``root`` is the submitted root:
    pass it to :func:`snapshot` as ``trusted_root`` so the copy re-checks every component."""

    student: str
    assignment: str
    path: Path
    root: Path

    @property
    def key(self) -> str:
        return f"{self.student}/{self.assignment}"


@dataclass(frozen=True)
class Rejected:
    """Something under the submitted root that is not graded: ``path`` is printable (relative to
    the root, ``repr`` for bad names), ``reason`` says why."""

    path: str
    reason: str


def _scan_names(dir_fd: int) -> list[bytes]:
    # scandir on a descriptor yields str names (surrogateescape); fsencode gives the exact bytes.
    with os.scandir(dir_fd) as it:
        return sorted(os.fsencode(e.name) for e in it)


def _check_entry(name: bytes, dir_fd: int, label: str) -> tuple[str, str]:
    """(decoded name, '') when ``name`` is a valid name and a real directory, else (printable
    path, reason)."""
    shown = printable_name(name)
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return shown, f"{label} name is not valid UTF-8"
    if not NAME_PATTERN.fullmatch(text):
        return shown, f"{label} name does not match {NAME_PATTERN.pattern}"
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return shown, f"cannot be examined ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return shown, f"{label} folder is a {_kind(st.st_mode)}, not a directory"
    return text, ""


def list_submissions(submitted_root: Path) -> tuple[list[Submission], list[Rejected]]:
    """Every valid ``<root>/<student>/<assignment>/`` folder, and everything else with a reason.

    Guarantees: never raises for anything students control (names, links, file types,
    permissions); never follows a symbolic link below ``submitted_root`` (a linked student or
    assignment folder is rejected, not read); submissions are sorted by (assignment, student).
    A missing root gives two empty lists. ``submitted_root`` itself is trusted (it may be
    reached through links set up by the course).
    """
    subs: list[Submission] = []
    rejected: list[Rejected] = []
    root = Path(submitted_root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except FileNotFoundError:
        return subs, rejected
    try:
        for sname in _scan_names(root_fd):
            student, why = _check_entry(sname, root_fd, "student")
            if why:
                rejected.append(Rejected(student, why))
                continue
            try:
                # O_NOFOLLOW again: the entry may have become a link since the lstat above.
                sfd = os.open(sname, _DIR_FLAGS, dir_fd=root_fd)
            except OSError as exc:
                rejected.append(Rejected(student, f"cannot be opened ({exc.strerror})"))
                continue
            try:
                names = _scan_names(sfd)
                for aname in names:
                    assignment, why = _check_entry(aname, sfd, "assignment")
                    if why:
                        rejected.append(Rejected(f"{student}/{assignment}", why))
                        continue
                    subs.append(Submission(student, assignment, root / student / assignment,
                                           root))
            except OSError as exc:
                rejected.append(Rejected(student, f"cannot be listed ({exc.strerror})"))
            finally:
                os.close(sfd)
    finally:
        os.close(root_fd)
    subs.sort(key=lambda s: (s.assignment, s.student))
    return subs, rejected


# ----------------------------------------------------------------------------- snapshot

@dataclass(frozen=True)
class TreeLimits:
    """Bounds for :func:`snapshot`. ``max_depth``: folders more than this many levels below the
    submission are not copied (the submission's own files are at level 1); ``max_entries``:
    directory entries examined in all (copied or skipped); bytes per file and in total.
    ``skip_hidden``: names starting with '.' (checkpoints, editor files) are not copied."""

    max_depth: int = 8
    max_entries: int = 2000
    max_file_bytes: int = 20 * 2**20
    max_total_bytes: int = 50 * 2**20
    skip_hidden: bool = True


@dataclass(frozen=True)
class Skipped:
    """One entry left out of a snapshot: printable relative path and the reason."""

    path: str
    reason: str


@dataclass
class Snapshot:
    """What :func:`snapshot` copied into ``dest`` (relative '/'-joined paths, sorted per
    folder) and what it skipped and why; ``truncated`` when a limit stopped the walk early."""

    src: Path
    dest: Path
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    total_bytes: int = 0
    entries: int = 0
    truncated: bool = False

    def report(self) -> str:
        """Plain text for the instructor (student-chosen names: escape before HTML use)."""
        lines = [f"copied {len(self.files)} files ({self.total_bytes} bytes), "
                 f"{len(self.dirs)} folders; skipped {len(self.skipped)}"
                 + ("; stopped at a limit" if self.truncated else "")]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _open_trusted_dir(path: Path, trusted_root: Path | None) -> int:
    """Open ``path`` as a directory without following a link at its last component, or at any
    component below ``trusted_root`` when given."""
    if trusted_root is None:
        try:
            return os.open(path, _DIR_FLAGS)
        except OSError as exc:
            raise _unsafe(exc, path) from None
    rel = Path(os.path.relpath(path, trusted_root))
    if rel.is_absolute() or ".." in rel.parts:
        raise UnsafeTreeError(f"{path} is not under {trusted_root}")
    fd = os.open(trusted_root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for part in rel.parts if rel != Path(".") else ():
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as exc:
        os.close(fd)
        raise _unsafe(exc, path) from None
    return fd


def _unsafe(exc: OSError, path: object) -> Exception:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafeTreeError(f"{path}: a component is a symbolic link or not a directory")
    return exc


def _copy_file(name: bytes, src_fd: int, dest_fd: int, cap: int) -> int:
    """Copy one regular file (already lstat-ed) from ``src_fd`` to ``dest_fd``; bytes copied.
    Raises UnsafeTreeError when it is no longer a regular file, FileTooLargeError past ``cap``."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=src_fd)
    try:
        st = os.fstat(fd)  # what was opened, not what was listed: closes the swap race
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeTreeError(f"became a {_kind(st.st_mode)} while copied")
        if st.st_size > cap:
            raise FileTooLargeError(f"larger than {cap} bytes ({st.st_size})")
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC,
                      0o644, dir_fd=dest_fd)
        done = 0
        try:
            os.fchmod(out, 0o644)  # the umask may have removed bits; fchmod touches only ours
            while True:
                chunk = os.read(fd, min(_CHUNK, cap + 1 - done))
                if not chunk:
                    break
                done += len(chunk)
                if done > cap:  # it grew after the fstat
                    raise FileTooLargeError(f"larger than {cap} bytes")
                os.write(out, chunk)
        except BaseException:
            os.close(out)
            os.unlink(name, dir_fd=dest_fd)
            raise
        os.close(out)
        return done
    finally:
        os.close(fd)


def snapshot(src: Path, dest: Path, limits: TreeLimits = TreeLimits(), *,
             trusted_root: Path | None = None) -> Snapshot:
    """Copy the submission folder ``src`` into the new folder ``dest`` and return what happened.

    Guarantees: ``dest`` did not exist before (FileExistsError otherwise; its parent must
    exist) and afterwards holds only 0o755 folders and 0o644 regular files created by this
    process; no symbolic link in ``src`` is followed (not at its last component, nor at any
    component below ``trusted_root`` when given); FIFOs, sockets, devices and links are
    skipped without being opened; names that are not UTF-8 or hold control/format characters
    are skipped; the limits bound depth, entries and bytes; the walk is iterative and keeps at
    most ``2 * (max_depth + 1)`` descriptors open. Per-entry failures are recorded in
    ``Snapshot.skipped``; only an unusable ``src`` or ``dest`` raises (UnsafeTreeError when
    ``src`` is a link or not a directory).
    """
    src, dest = Path(src), Path(dest)
    snap = Snapshot(src, dest)
    src_fd = _open_trusted_dir(src, trusted_root)
    try:
        os.mkdir(dest, 0o755)
        dest_fd = os.open(dest, _DIR_FLAGS)
    except BaseException:
        os.close(src_fd)
        raise
    os.fchmod(dest_fd, 0o755)
    # One frame per open folder: (src fd, dest fd, relative path, depth, sorted names left).
    # Names are read one folder at a time and capped by the entries still allowed, so a folder
    # of a million entries costs no more than the limit.
    stack: list[tuple[int, int, str, int, list[bytes]]] = []

    def push(sfd: int, dfd: int, rel: str, depth: int) -> None:
        budget = limits.max_entries - snap.entries + 1
        names: list[bytes] = []
        try:
            with os.scandir(sfd) as it:
                for entry in it:
                    names.append(os.fsencode(entry.name))
                    if len(names) >= budget:
                        break
        except OSError as exc:
            snap.skipped.append(Skipped(rel or ".", f"cannot be listed ({exc.strerror})"))
        names.sort(reverse=True)  # popped from the end: ascending order
        stack.append((sfd, dfd, rel, depth, names))

    push(src_fd, dest_fd, "", 0)
    try:
        while stack:
            sfd, dfd, rel, depth, names = stack[-1]
            if not names:
                stack.pop()
                os.close(sfd)
                os.close(dfd)
                continue
            name = names.pop()
            shown = (rel + "/" if rel else "") + printable_name(name)
            snap.entries += 1
            if snap.entries > limits.max_entries:
                snap.truncated = True
                snap.skipped.append(Skipped(shown, f"more than {limits.max_entries} entries: "
                                                   "this and the rest were not copied"))
                break
            why = _name_problem(name)
            if why:
                snap.skipped.append(Skipped(shown, why))
                continue
            if limits.skip_hidden and name.startswith(b"."):
                snap.skipped.append(Skipped(shown, "hidden name"))
                continue
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except OSError as exc:
                snap.skipped.append(Skipped(shown, f"cannot be examined ({exc.strerror})"))
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if depth + 1 > limits.max_depth:
                    snap.skipped.append(Skipped(shown, f"deeper than {limits.max_depth} levels"))
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=sfd)
                except OSError as exc:
                    snap.skipped.append(Skipped(shown, f"cannot be opened ({exc.strerror})"))
                    continue
                try:
                    os.mkdir(name, 0o755, dir_fd=dfd)
                    dchild = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                    os.fchmod(dchild, 0o755)
                except BaseException:
                    os.close(child)
                    raise
                snap.dirs.append(shown)
                push(child, dchild, shown, depth + 1)
            elif stat.S_ISREG(mode):
                if st.st_nlink > 1:
                    # A hard link may name a file the student could not otherwise submit
                    # (where protected_hardlinks is off); a real upload has one link.
                    snap.skipped.append(Skipped(shown, "hard link (more than one name)"))
                    continue
                left = limits.max_total_bytes - snap.total_bytes
                if st.st_size > limits.max_file_bytes:
                    snap.skipped.append(Skipped(
                        shown, f"larger than {limits.max_file_bytes} bytes ({st.st_size})"))
                    continue
                if st.st_size > left:
                    snap.skipped.append(Skipped(
                        shown, f"over the total limit of {limits.max_total_bytes} bytes"))
                    continue
                try:
                    snap.total_bytes += _copy_file(name, sfd, dfd,
                                                   min(limits.max_file_bytes, left))
                    snap.files.append(shown)
                except UnsafeTreeError as exc:
                    snap.skipped.append(Skipped(shown, str(exc)))
                except OSError as exc:
                    snap.skipped.append(Skipped(shown, f"cannot be copied ({exc.strerror})"))
            else:
                snap.skipped.append(Skipped(shown, _kind(mode)))
    finally:
        for sfd, dfd, *_ in stack:
            os.close(sfd)
            os.close(dfd)
    return snap


def read_notebook_bytes(path: Path, cap: int) -> bytes:
    """The bytes of one regular file, at most ``cap`` of them.

    Guarantees: returns at once or raises UnsafeTreeError (the last component is a symbolic
    link, a FIFO, a socket, a device or a directory: nothing but a regular file is opened, and
    that with O_NONBLOCK), FileTooLargeError (more than ``cap`` bytes, checked before and while
    reading) or FileNotFoundError. Parent components of ``path`` are trusted (a snapshot).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    if not stat.S_ISREG(st.st_mode):  # decided before open: opening a device can act
        raise UnsafeTreeError(f"{printable_name(os.fsencode(path))} is a {_kind(st.st_mode)}, "
                              "not a regular file")
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as exc:
        raise _unsafe(exc, printable_name(os.fsencode(path))) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeTreeError(f"{printable_name(os.fsencode(path))} became a "
                                  f"{_kind(st.st_mode)}")
        if st.st_size > cap:
            raise FileTooLargeError(f"larger than {cap} bytes ({st.st_size})")
        chunks, n = [], 0
        while True:
            chunk = os.read(fd, min(_CHUNK, cap + 1 - n))
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
            if n > cap:
                raise FileTooLargeError(f"larger than {cap} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------- walking by descriptor
# Trees written by student code can be arbitrarily deep: a path string would pass PATH_MAX and
# one descriptor per level would pass the descriptor limit. So the walks below hold one open
# folder, go down by name with O_NOFOLLOW and come back up through "..", checking that ".." is
# the (device, inode) recorded on the way down (a moved folder would otherwise lead elsewhere).

def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _up(fd: int, expected: tuple[int, int]) -> int:
    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC, dir_fd=fd)
    if _ident(parent) != expected:
        os.close(parent)
        raise UnsafeTreeError("the tree was moved while it was walked")
    return parent


def _chmod_dir_nofollow(name: bytes, dir_fd: int, mode: int) -> None:
    """Give the owner rwx on a folder already lstat-ed as a folder, never through a link."""
    want = stat.S_IMODE(mode) | stat.S_IRWXU
    try:
        os.chmod(name, want, dir_fd=dir_fd, follow_symlinks=False)
    except (NotImplementedError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # Without lchmod-at: open it as a folder without following, then fchmod what opened.
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(fd, want)
        finally:
            os.close(fd)


def _open_child_dir(name: bytes, dir_fd: int) -> int:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) & stat.S_IRWXU != stat.S_IRWXU:
        _chmod_dir_nofollow(name, dir_fd, st.st_mode)  # read-only folders: u+rwx to empty them
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if _ident(fd) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise UnsafeTreeError("a folder was replaced while it was walked")
    return fd


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it.

    Guarantees: a missing ``path`` is not an error; a symbolic link (at ``path`` or anywhere
    below) is removed itself, its target never touched; any depth (iterative, one folder open
    at a time) and any name bytes; read-only folders are given u+rwx (through no link) so they
    can be emptied. Parent components of ``path`` are trusted. Raises OSError for what cannot be
    removed (e.g. a file system mounted read-only) and UnsafeTreeError when the tree is moved
    while it is being removed.
    """
    path = Path(path)
    name = os.fsencode(path.name)
    if not name or name in (b".", b".."):
        raise ValueError(f"refusing to remove {path!s}")
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)  # a link or a file: the entry, never a target
            return
        cur = _open_child_dir(name, parent_fd)
        top = cur_ident = _ident(cur)
        # Ancestors below path: (identity, this folder's name in it). Plain ints and bytes, so
        # a chain of 100,000 folders costs a few MB.
        stack: list[tuple[tuple[int, int], bytes]] = []
        try:
            while True:
                child = None
                with os.scandir(cur) as it:
                    for entry in it:
                        ename = os.fsencode(entry.name)
                        try:
                            st = os.stat(ename, dir_fd=cur, follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            child = ename  # go down first; this folder is rescanned on return
                            break
                        os.unlink(ename, dir_fd=cur)
                if child is not None:
                    nxt = _open_child_dir(child, cur)
                    stack.append((cur_ident, child))
                    os.close(cur)
                    cur, cur_ident = nxt, _ident(nxt)
                    continue
                if not stack:  # the top folder is empty
                    break
                ident, my_name = stack.pop()
                parent = _up(cur, ident)
                os.close(cur)
                cur, cur_ident = parent, ident
                os.rmdir(my_name, dir_fd=cur)
        finally:
            os.close(cur)
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != top:
            raise UnsafeTreeError(f"{path} was replaced while it was removed")
        os.rmdir(name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def tree_size(path: Path, cap: int) -> int:
    """Bytes taken by the tree at ``path``: for each entry the larger of its size and its
    allocated blocks (a sparse file counts at its apparent size). Stops as soon as the total
    exceeds ``cap`` and returns that total, so ``tree_size(p, cap) > cap`` is the test.

    Guarantees: iterative (any depth), never follows a symbolic link, one folder open at a
    time, never raises for what happens in the tree: a missing ``path`` is 0, entries that
    vanish or cannot be read are not counted, and a folder moved during the walk ends it with
    the total counted so far.
    """
    def size(st: os.stat_result) -> int:
        return max(st.st_size, st.st_blocks * 512)

    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return size(st)
    try:
        cur = os.open(path, _DIR_FLAGS)
    except OSError:
        return size(st)
    total = size(st)
    # For each ancestor: its identity and the subfolder names still to visit there.
    stack: list[tuple[tuple[int, int], list[bytes]]] = []

    def scan(fd: int) -> list[bytes]:
        nonlocal total
        subdirs: list[bytes] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    ename = os.fsencode(entry.name)
                    try:
                        est = os.stat(ename, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    total += size(est)
                    if stat.S_ISDIR(est.st_mode):
                        subdirs.append(ename)
                    if total > cap:
                        break
        except OSError:
            pass
        return subdirs

    pending = scan(cur)
    try:
        while total <= cap:
            if pending:
                sub = pending.pop()
                try:
                    nxt = os.open(sub, _DIR_FLAGS, dir_fd=cur)
                except OSError:  # vanished, became a link, unreadable
                    continue
                stack.append((_ident(cur), pending))
                os.close(cur)
                cur = nxt
                pending = scan(cur)
                continue
            if not stack:
                break
            ident, pending = stack.pop()
            try:
                parent = _up(cur, ident)
            except (UnsafeTreeError, OSError):
                # Moved under the walk (it runs while student code may still write): what was
                # counted stands; the sandbox's size-limited tmpfs is the hard cap on disk use.
                break
            os.close(cur)
            cur = parent
    finally:
        os.close(cur)
    return total


# ----------------------------------------------------------------------------- writing

def _split_relative(relative: str) -> list[str]:
    parts = relative.split("/")
    if relative.startswith("/") or not all(parts):
        raise ValueError(f"not a plain relative path: {relative!r}")
    for part in parts:
        why = _name_problem(part.encode("utf-8", "surrogateescape"))
        if why:
            raise ValueError(f"bad component {part!r} in {relative!r}: {why}")
    return parts


def safe_write(root: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` to ``root/relative`` (a 0o644 file), creating missing 0o755 folders.

    Guarantees: nothing outside ``root`` is written, created or chmod-ed. ``root`` must be a
    real directory (not a link; its parents are trusted); every folder below it is opened with
    O_DIRECTORY|O_NOFOLLOW from its parent's descriptor, so a link planted at any parent
    component raises UnsafeTreeError. The file is written to a fresh O_EXCL name and renamed
    over the final component, so whatever was planted there (a link, a hard link, a FIFO) is
    replaced, never written through, and its target keeps its contents and mode. A folder at
    the final component raises IsADirectoryError. ``relative`` is '/'-separated plain names
    ('..', '.', empty or control-character components raise ValueError). Returns the path.
    """
    parts = _split_relative(relative)
    root = Path(root)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise _unsafe(exc, root) from None
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # created meanwhile: opened (without following) just below
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(nfd, 0o755)
            except OSError as exc:
                raise _unsafe(exc, f"{root}/{relative}") from None
            os.close(fd)
            fd = nfd
        final = parts[-1]
        while True:
            tmp = f".{final}.{secrets.token_hex(8)}.tmp"
            try:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | _CLOEXEC, 0o644, dir_fd=fd)
                break
            except FileExistsError:
                continue
        try:
            os.fchmod(out, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        except BaseException:
            os.close(out)
            os.unlink(tmp, dir_fd=fd)
            raise
        os.close(out)
        try:
            st = os.stat(final, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"{root}/{relative} is a directory")
        except FileNotFoundError:
            pass
        except BaseException:
            os.unlink(tmp, dir_fd=fd)
            raise
        try:
            # rename replaces the directory entry itself: a link there is not followed.
            os.rename(tmp, final, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)
    return root.joinpath(*parts)
