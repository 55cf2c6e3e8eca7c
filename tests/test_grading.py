"""The grading pipeline end to end: nbgrader + tools/grade.py on a private copy of the course.

One module-scoped fixture grades a whole class in a temporary course directory (a copy of
nbgrader_config.py, solutions/ and tools/; exercises/ is regenerated), as an instructor would:

1. the class: the demo class (alice, bob, carol, dave), the instructor's source notebook of every
   assignment, a wrong answer that passes the visible tests, and every hostile case of
   tools/hostile.py, graded in ONE batch with 2 workers by `grade.py all` (this is `make grade`:
   generate exercises/, autograde, export, report), 8 s per cell for problem set 1;
2. `grade.py autograde` again: nothing changed, nothing is graded (idempotence);
3. `grade.py review x_exit ... accept` settles one flagged submission.

Grading costs a few seconds of CPU per submission (a sandboxed nbgrader process and a kernel
each), so the tests share that one run and only read it. Quick unit tests of the static scan and
of the notebook repair (tools/scan.py) need no grading.
"""
from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
PS = "ps1_change_of_variables"
NB = f"{PS}.ipynb"
MAX_SCORE = 12.0
CANARY_ENV = "FLOWS_CANARY_SECRET"
sys.path.insert(0, str(REPO / "tools"))

import hostile  # noqa: E402  (tools/hostile.py)
import sandbox  # noqa: E402
import scan  # noqa: E402

pytestmark = pytest.mark.xdist_group("grading")
CAPS = sandbox.capabilities()
CASES = hostile.cases(CAPS)


def _load_demo_expected() -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("make_demo_class",
                                                  REPO / "tools" / "make_demo_class.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: float(v) for k, v in module.EXPECTED.items()}


DEMO_EXPECTED = _load_demo_expected()


# ----------------------------------------------------------------------------- helpers


def hidden_regions(source: str) -> tuple[list[str], list[str]]:
    """(lines inside BEGIN/END HIDDEN TESTS, lines outside), stripped, non-empty."""
    inside, outside, hidden = [], [], False
    for line in source.splitlines():
        s = line.strip()
        if "BEGIN HIDDEN TESTS" in s:
            hidden = True
        elif "END HIDDEN TESTS" in s:
            hidden = False
        elif s:
            (inside if hidden else outside).append(s)
    return inside, outside


def secret_lines(nb_path: Path) -> list[str]:
    """Lines of the hidden tests that appear nowhere else in the instructor's notebook."""
    nb = nbformat.read(nb_path, as_version=4)
    inside, outside = [], set()
    for cell in nb.cells:
        i, o = hidden_regions(cell.source)
        inside += i
        outside.update(o)
    secrets = [s for s in dict.fromkeys(inside) if s not in outside]
    assert len(secrets) > 10, "the instructor notebook should hold hidden tests"
    return secrets


def html_text(path: Path) -> str:
    """The visible text of an HTML file (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


def grade_py(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{CANARY_ENV: "do-not-leak"})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(course / "tools" / "grade.py"),
                           "--root", str(course), *args],
                          capture_output=True, text=True, timeout=1500, env=env)
    proc.seconds = time.perf_counter() - t0
    print(f"$ grade.py {' '.join(args)}  (rc {proc.returncode}, {proc.seconds:.1f} s)\n"
          f"{proc.stdout}{proc.stderr[-3000:]}")
    return proc


def read_csv(text: str, assignment: str = PS) -> dict[str, dict]:
    return {row["student"]: row for row in csv.DictReader(text.splitlines())
            if row["assignment"] == assignment}


def cell_scores(course: Path, student: str, assignment: str = PS
                ) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook

    db = f"sqlite:///{course / 'grading' / 'gradebook.db'}"
    with Gradebook(db) as gb:
        nb = gb.find_submission_notebook(assignment, assignment, student)
        return {g.name: (float(g.score), float(g.max_score)) for g in nb.grades}


def submit(course: Path, student: str, nb, assignment: str = PS) -> None:
    folder = course / "grading" / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, (str, bytes)):
        (folder / f"{assignment}.ipynb").write_text(nb if isinstance(nb, str) else nb.decode())
    else:
        nbformat.write(nb, folder / f"{assignment}.ipynb")


def wrong_but_visible() -> nbformat.NotebookNode:
    """The solution with one classic bug: the chain is inverted in forward order. The visible
    test of part 3 uses commuting layers, so only the hidden tests can see it."""
    nb = nbformat.read(REPO / "solutions" / PS / NB, as_version=4)
    (cell,) = [c for c in nb.cells
               if c.metadata.get("nbgrader", {}).get("grade_id") == "part3_solution"]
    assert "reversed(layers)" in cell.source
    cell.source = cell.source.replace("reversed(layers)", "layers")
    return nb


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"


def sleepers() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if hostile.SLEEP_MARK in cmd and "sleep" in cmd:
            out.append(f"{pid}: {cmd}")
    return out


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions", course / "solutions")
    shutil.copytree(REPO / "tools", course / "tools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # exercises/ is left out on purpose: `all` must regenerate it from solutions/
    # files outside the course copy may be edited by others while this runs: for those, the
    # test looks for what x_write appends rather than comparing hashes
    guarded = {p: sha(p) for p in [course / "nbgrader_config.py",
                                   course / "solutions" / PS / NB]}
    # the class: the demo class, the instructor's notebook of every assignment, a wrong answer
    # that passes the visible tests, every hostile case
    submitted = course / "grading" / "submitted"
    for sdir in sorted(p for p in (REPO / "tools" / "demo_class").iterdir() if p.is_dir()):
        shutil.copytree(sdir, submitted / sdir.name)
    for src in sorted((course / "solutions").glob("*/*.ipynb")):
        submit(course, "instructor", src.read_text(), src.parent.name)
    submit(course, "wrong", wrong_but_visible())
    for case in CASES:
        hostile.write(case, submitted)
    # short cell time-outs for problem set 1 (its cells take well under a second; the hostile
    # loops cost one time-out per cell); the other assignments' notebooks train models
    limits = ["--workers", "2", "--cell-timeout", "120", "--cell-timeout", f"{PS}=8",
              "--timeout", "300"]

    first = grade_py(course, "all", "--no-demo", *limits)  # make grade, on the whole class
    csv_text = (course / "grading" / "grades.csv").read_text()
    status = json.loads((course / "grading" / "status.json").read_text())
    again = grade_py(course, "autograde", *limits)
    review = grade_py(course, "review", "x_exit", PS, "accept", "--note", "exit() was harmless")
    reviewed_csv = (course / "grading" / "grades.csv").read_text()
    print(f"timing: `all` on {len(status)} submissions {first.seconds:.1f} s; "
          f"unchanged re-run {again.seconds:.1f} s; review {review.seconds:.1f} s")
    return {"course": course, "all": first, "again": again, "review": review, "csv": csv_text,
            "status": status, "reviewed_csv": reviewed_csv, "guarded": guarded,
            "sleepers": sleepers()}


# ----------------------------------------------------------------------------- generation


def test_generate_reproduces_committed_exercises(graded):
    """`generate` from solutions/ gives exactly the committed exercises/ (cells, ids,
    metadata, checksums; no outputs)."""
    made = graded["course"] / "exercises"
    committed = REPO / "exercises"
    graded_ps = {p.name for p in (graded["course"] / "solutions").iterdir()}  # when copied
    names = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file()
                   and p.relative_to(committed).parts[0] in graded_ps)
    assert names == sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    assert names, "exercises/ holds the student versions"
    for name in names:
        if name.suffix != ".ipynb":
            assert (made / name).read_bytes() == (committed / name).read_bytes(), name
            continue
        new, old = (json.loads((root / name).read_text()) for root in (made, committed))
        assert new["metadata"] == old["metadata"]
        assert len(new["cells"]) == len(old["cells"])
        for a, b in zip(new["cells"], old["cells"]):
            assert a == b, f"{name}: cell {b.get('id')} differs; run `make exercises`"
        assert new == old


def test_exercises_hold_no_hidden_tests_nor_solutions():
    for src in sorted((REPO / "solutions").glob("*/*.ipynb")):
        student = REPO / "exercises" / src.relative_to(REPO / "solutions")
        assert student.exists(), f"{student} missing: run `make exercises`"
        text = "\n".join(c.source for c in nbformat.read(student, as_version=4).cells)
        raw = student.read_text()
        for marker in ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "BEGIN SOLUTION", "END SOLUTION"):
            assert marker not in raw
        leaked = [s for s in secret_lines(src) if s in text]
        assert not leaked, f"hidden tests leaked into {student}: {leaked[:3]}"
        nb = nbformat.read(student, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        # every solution cell of the student version is a stub
        stubs = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)


# ----------------------------------------------------------------------------- make grade


def test_make_grade_grades_the_whole_class(graded):
    proc = graded["all"]
    failing = [c for c in CASES if c.status == "failed"]
    assert proc.returncode == (1 if failing else 0), proc.stdout + proc.stderr
    assert "2 worker(s)" in proc.stdout and f"8 s for {PS}" in proc.stdout
    for student, score in DEMO_EXPECTED.items():  # progress, one line per submission
        assert re.search(rf"\] {PS} {student}\s+{score:g} / 12\s+graded", proc.stdout), student
    status = graded["status"]
    counts = {
        "graded \\(score > 0\\)": sum(v["status"] == "graded" and v["score"] > 0
                                      for v in status.values()),
        "graded, score 0": sum(v["status"] == "graded" and v["score"] == 0
                               for v in status.values()),
        "flagged for review": sum(v["status"] == "flagged" for v in status.values()),
        "failed to run": sum(v["status"] == "failed" for v in status.values()),
    }
    for text, n in counts.items():
        assert re.search(rf"\n\s+{n}\s+{text}", proc.stdout), (text, n)
    assert sorted(k.split("/")[0] for k, v in status.items() if v["status"] == "failed") == \
        sorted(c.student for c in failing)
    for name in ("grades.csv", "reports", "feedback"):
        assert name in proc.stdout
    rows = read_csv(graded["csv"])
    for student, score in DEMO_EXPECTED.items():
        assert (rows[student]["status"], float(rows[student]["score"])) == ("graded", score)
        assert float(rows[student]["max_score"]) == MAX_SCORE


def test_make_grade_copies_the_demo_class_into_an_empty_class(tmp_path):
    import grade

    course = tmp_path / "course"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    c = grade.Course(course)
    assert grade.copy_demo_class(c) == len(DEMO_EXPECTED)
    assert sorted(p.name for p in c.submitted.iterdir()) == sorted(DEMO_EXPECTED)
    assert grade.copy_demo_class(c) == 0  # not empty any more: nothing copied


def test_every_assignment_solution_scores_full_marks_unflagged(graded):
    """The instructor's notebook of every assignment in solutions/, submitted as is: full
    marks, and neither the static scan nor the runtime guard finds anything to flag."""
    assignments = sorted(p.name for p in (graded["course"] / "solutions").iterdir()
                         if p.is_dir())
    for ps in assignments:
        row = read_csv(graded["csv"], ps)["instructor"]
        assert row["status"] == "graded", (ps, row)
        assert float(row["score"]) == float(row["max_score"]) > 0, (ps, row)
        assert all(s == m for s, m in cell_scores(graded["course"], "instructor", ps).values())


def test_honest_submissions_graded_correctly_in_the_hostile_batch(graded):
    course = graded["course"]
    rows = read_csv(graded["csv"])
    expected = dict(DEMO_EXPECTED, instructor=MAX_SCORE, wrong=MAX_SCORE - 3)
    for student, score in expected.items():
        assert (rows[student]["status"], float(rows[student]["score"])) == ("graded", score), \
            (student, rows[student])
        assert rows[student]["note"] == ""
    # a wrong answer that passes the visible tests loses the hidden points only
    scores = cell_scores(course, "wrong")
    assert scores["part3_visible"] == (1.0, 1.0) and scores["part3_hidden"] == (0.0, 3.0)
    carol = cell_scores(course, "carol")
    for part in ("part1", "part2", "part3"):
        score, points = carol[f"{part}_visible"]
        assert score == points > 0 and carol[f"{part}_hidden"][0] == 0
    # the untouched exercise: 0 everywhere, only NotImplementedError, no crash
    nb = nbformat.read(course / "grading" / "autograded" / "bob" / PS / NB, as_version=4)
    errors = {o.ename for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"}
    assert errors == {"NotImplementedError"}


@pytest.mark.parametrize("case", CASES, ids=[c.student for c in CASES])
def test_hostile_submission_outcome(graded, case):
    """Each hostile case gets its documented outcome (docs_grading.md): status, score, note."""
    row = read_csv(graded["csv"])[case.student]
    assert row["status"] == case.status, row
    assert float(row["score"]) == case.score, row
    assert re.search(case.note, row["note"], re.S), row["note"]
    if case.status == "flagged":
        out = graded["status"][f"{case.student}/{PS}"]
        assert out["flags"], out
        # the parts after the first suspicious cell count 0 until review
        assert out["score"] <= out["autograde_score"]


def test_time_and_memory_limits_contained_the_loops(graded):
    status = graded["status"]
    for student in ("x_loop_cell", "x_loop_function", "x_loop_stubborn", "x_memory"):
        assert status[f"{student}/{PS}"]["seconds"] < 300, student
    nb = nbformat.read(graded["course"] / "grading" / "autograded" / "x_loop_stubborn" / PS / NB,
                       as_version=4)
    enames = [o.ename for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert "CellTimeoutError" in enames and "CellNotRun" in enames
    size = (graded["course"] / "grading" / "autograded" / "x_output" / PS / NB).stat().st_size
    assert size < 2_000_000  # 30 MB and 200 000 lines of output were capped


@pytest.mark.skipif(not CAPS["landlock"], reason="no Landlock here: files are not confined")
def test_sandbox_kept_files_secrets_and_processes_safe(graded):
    course = graded["course"]
    for path, digest in graded["guarded"].items():
        assert sha(path) == digest, f"{path} was changed by a submission"
    injected = "torch.allclose = lambda *a, **k: False"  # what x_write appends
    for path in [REPO / "flowlib" / "__init__.py", course / "grading" / "grades.csv",
                 course / "grading" / "gradebook.db"]:
        assert injected.encode() not in path.read_bytes(), path
    assert not Path(hostile.CANARY_TMP).exists()
    assert not hostile.CANARY_STARTUP.exists()
    assert not graded["sleepers"], graded["sleepers"]

    def outputs(student: str) -> str:
        nb = nbformat.read(course / "grading" / "autograded" / student / PS / NB, as_version=4)
        return "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))

    if any(c.student == "x_read_hidden" for c in CASES):
        text = outputs("x_read_hidden")
        assert "LEAK" not in text, text[:2000]
        assert f"DENIED {REPO / 'solutions' / PS / NB}" in text
        assert "DENIED ../../../gradebook.db" in text
        env = re.search(r"ENV (\[.*\])", text).group(1)
        assert CANARY_ENV not in env and "HOME" in env
    if any(c.student == "x_write" for c in CASES):
        text = outputs("x_write")
        assert "WROTE " + str(REPO) not in text
        assert text.count("DENIED") >= 5, text
    if any(c.student == "x_network" for c in CASES):
        text = outputs("x_network")
        assert "CONNECTED" not in text and text.count("BLOCKED") == 4
    # only HTML ever reaches a student (x_write left a file in its own folder)
    for folder in ("feedback", "withheld"):
        for p in (course / "grading" / folder).rglob("*"):
            assert p.is_dir() or p.suffix == ".html", p
    assert not (course / "grading" / ".work").exists()  # private folders cleaned up


def test_flagged_feedback_is_withheld_until_review(graded):
    course = graded["course"]
    for student, out in graded["status"].items():
        name = student.split("/")[0]
        if not student.endswith(PS) or name == "x_exit":  # x_exit was reviewed since
            continue
        fb = course / "grading" / "feedback" / name / PS / f"{PS}.html"
        held = course / "grading" / "withheld" / name / PS / f"{PS}.html"
        if out["status"] == "graded":
            assert fb.exists() and not held.exists(), name
        elif out["status"] == "flagged":
            assert held.exists() and not fb.exists(), name
        else:
            assert not fb.exists() and not held.exists(), name


def test_feedback_html_shows_no_hidden_tests(graded):
    course = graded["course"]
    secrets = secret_lines(REPO / "solutions" / PS / NB)
    pages = sorted((course / "grading").glob(f"*/*/{PS}/{PS}.html"))
    assert len(pages) > 25
    for page in pages:
        student = page.parent.parent.name
        text = html_text(page)
        submitted = course / "grading" / "submitted" / student / PS / NB
        try:
            own = {s for c in nbformat.read(submitted, as_version=4).cells
                   for s in hidden_regions(c.source)[1]}  # what the student wrote may coincide
        except Exception:
            own = set()
        leaked = [s for s in secrets if s in text and s not in own]
        assert not leaked, f"{page}: hidden test source shown: {leaked[:3]}"
        assert "HIDDEN TESTS" not in text
        assert "hidden tests were run here" in text
        assert "flows-guard" not in text and "__flows_guard__" not in text
    # the autograded notebook, which the student never sees, does hold them
    assert "BEGIN HIDDEN TESTS" in (course / "grading" / "autograded" / "carol" / PS / NB
                                    ).read_text()
    # carol failed hidden tests: told which and with what, without their code
    text = html_text(course / "grading" / "feedback" / "carol" / PS / f"{PS}.html")
    assert "Grade cell: part1_hidden" in text
    assert "AssertionError" in text
    assert "raised while running the hidden tests of part1_hidden" in text
    assert "Score: 0.0 / 2.0" in text


def test_main_gradebook_matches_the_outcomes(graded):
    """The main gradebook, written by one thread only, holds every graded and flagged
    submission once, with the counted scores; flagged notebooks are marked and their zeroed
    cells need manual grading; failed ones are absent."""
    from nbgrader.api import Gradebook, MissingEntry

    status = graded["status"]
    db = f"sqlite:///{graded['course'] / 'grading' / 'gradebook.db'}"
    with Gradebook(db) as gb:
        subs = gb.assignment_submissions(PS)
        keys = sorted(f"{s.student.id}/{PS}" for s in subs)
        expected = sorted(k for k, v in status.items() if k.endswith(PS)
                          and v["status"] in ("graded", "flagged"))
        assert keys == expected
        for key in expected:
            student = key.split("/")[0]
            out = status[key]
            if student == "x_exit":
                continue  # reviewed since
            sub = gb.find_submission(PS, student)
            assert float(sub.score) == out["score"], key
            nb = gb.find_submission_notebook(PS, PS, student)
            assert nb.flagged == (out["status"] == "flagged"), key
            for grade in nb.grades:
                assert grade.needs_manual_grade == (grade.name in out["zeroed"]), key
        for key, out in status.items():
            if out["status"] == "failed":
                with pytest.raises(MissingEntry):
                    gb.find_submission(out["assignment"], out["student"])


def test_rerun_is_idempotent_and_nothing_was_graded_twice(graded):
    proc = graded["again"]
    assert proc.returncode == 0  # nothing graded, nothing failed
    n = len(graded["status"])
    assert f"0 submission(s) to grade, {n} unchanged (skipped)" in proc.stdout
    ledger = [json.loads(line) for line in
              (graded["course"] / "grading" / "ledger.jsonl").read_text().splitlines()]
    keys = [e["key"] for e in ledger]
    assert sorted(keys) == sorted(set(keys)), "a submission was graded twice"
    assert set(keys) == set(graded["status"]), "a submission was lost"
    submitted = {f"{p.parent.name}/{p.name}"
                 for p in (graded["course"] / "grading" / "submitted").glob("*/*")}
    assert submitted == set(graded["status"])


def test_report_for_the_instructor(graded):
    reports = graded["course"] / "grading" / "reports"
    md = (reports / f"{PS}.md").read_text()
    assert (reports / f"{PS}_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    n = sum(1 for k in graded["status"] if k.endswith(PS))
    assert f"{n} submission(s):" in md
    assert "| `part1_hidden` | 2 |" in md and "| `part3_visible` | 1 |" in md
    assert "## Flagged for review" in md and "x_patch_allclose" in md
    assert "## Failed to run" in md and "x_invalid_json" in md
    index = (reports / "README.md").read_text()
    assert f"[{PS}]({PS}.md)" in index


def test_review_settles_a_flagged_submission(graded):
    course = graded["course"]
    assert graded["review"].returncode == 0, graded["review"].stdout + graded["review"].stderr
    before = read_csv(graded["csv"])["x_exit"]
    after = read_csv(graded["reviewed_csv"])["x_exit"]
    assert before["status"] == "flagged" and float(before["score"]) < MAX_SCORE
    assert after["status"] == "graded" and float(after["score"]) == MAX_SCORE
    assert after["note"].startswith("reviewed: accept (exit() was harmless)")
    assert (course / "grading" / "feedback" / "x_exit" / PS / f"{PS}.html").exists()
    assert not (course / "grading" / "withheld" / "x_exit").exists()
    assert cell_scores(course, "x_exit")["part3_hidden"] == (3.0, 3.0)


# ----------------------------------------------------------------------------- static scan


@pytest.fixture(scope="module")
def ps1_info():
    return scan.AssignmentInfo.build(
        PS, nbformat.read(REPO / "solutions" / PS / NB, as_version=4),
        nbformat.read(REPO / "exercises" / PS / NB, as_version=4))


def _scan(info, code: str, cell: str = "part2_solution") -> list[str]:
    nb = hostile.student(hostile.correct(), {cell: code})
    return [f.reason for f in scan.scan(nb, info)]


def test_scan_passes_honest_code(ps1_info):
    for student in DEMO_EXPECTED:
        nb = nbformat.read(REPO / "tools" / "demo_class" / student / PS / NB, as_version=4)
        assert scan.scan(nb, ps1_info) == [], student
    honest = """
import math
import numpy as np
from functools import lru_cache
import torch.nn.functional as F


class Scale:
    def __init__(self, s):
        self.s = s

    def __repr__(self):
        return f"{self.__class__.__name__}({self.s})"


def helper(z, layers=()):
    total = torch.zeros(z.shape[0])
    for layer in layers:
        z, ladj = layer.forward(z)
        total = total + ladj
    x = [v for v in range(3)]
    try:
        return F.softplus(z).sum(-1) + math.log(2.0) + np.float64(0.0)
    except Exception:
        return total
"""
    assert _scan(ps1_info, honest) == []


@pytest.mark.parametrize("code, reason", [
    ("torch.allclose = lambda *a, **k: True", "assigns `torch.allclose`"),
    ("setattr(torch, 'allclose', print)", "uses `setattr`"),
    ("import os", "imports `os`"),
    ("from subprocess import run", "imports from `subprocess`"),
    ("import importlib", "imports `importlib`"),
    ("get_ipython().events.register('post_run_cell', print)", "uses `get_ipython`"),
    ("!ls /", "shell commands"),
    ("%env X=1", "magics"),
    ("exec('1')", "uses `exec`"),
    ("getattr(torch, 'all' + 'close')", "computed name"),
    ("torch.__dict__['allclose'] = print", "uses `.__dict__`"),
    ("().__class__.__base__.__subclasses__()", "uses `.__subclasses__`"),
    ("def f():\n    global torch\n    torch = None", "rebinds `torch`"),
    ("normal_log_prob = lambda z: 0", "rebinds `normal_log_prob`"),
    ("import math as torch", "rebinds `torch`"),
    ("abs = lambda v: 0", "rebinds `abs`"),
    ("Affine.forward = lambda self, z: (z, 0)", "assigns `Affine.forward`"),
    ("t = torch.nn\nt.Module.__call__ = print", "assigns `t.Module.__call__`"),
    ("class T(torch.Tensor):\n    pass", "subclass of `torch.Tensor`"),
    ("class E:\n    def __eq__(self, o):\n        return True", "defines `__eq__`"),
    ("try:\n    pass\nexcept KeyboardInterrupt:\n    pass", "catches `KeyboardInterrupt`"),
    ("open('/etc/passwd')", "opens files"),
    ("torch.save(1, 'x.pt')", "reads or writes files"),
    ("torch.utils.cpp_extension.load_inline('x', '')", "uses `.cpp_extension`"),
    ("x = torch._C", "private `torch._C`"),
    ("__flows_guard__ = print", "guard"),
])
def test_scan_flags_hostile_code(ps1_info, code, reason):
    found = _scan(ps1_info, code)
    assert any(reason in r for r in found), found


def test_repair_restores_structure(ps1_info):
    nb = nbformat.read(REPO / "exercises" / PS / NB, as_version=4)
    tests = {c.metadata.nbgrader["grade_id"] for c in nb.cells
             if c.metadata.get("nbgrader", {}).get("grade")}
    # deleted tests and an unknown id
    cut = nbformat.from_dict(json.loads(json.dumps(nb)))
    cut.cells = [c for c in cut.cells if not c.metadata.get("nbgrader", {}).get("grade")]
    cut.cells[3].metadata["nbgrader"]["grade_id"] = "mine"
    fixed, notes, flags = scan.repair(cut, ps1_info)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in fixed.cells]
    assert tests <= set(ids) and "mine" not in ids and not flags
    assert any("deleted test cells put back" in n for n in notes)
    assert [i for i in ids if i in ps1_info.order] == \
        [i for i in ps1_info.order if i in ids]  # put back in the assignment's order
    # empty: becomes the exercise
    empty = nbformat.v4.new_notebook()
    fixed, notes, flags = scan.repair(empty, ps1_info)
    assert [c.metadata.get("nbgrader", {}).get("grade_id") for c in fixed.cells] == \
        [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    assert notes[0].startswith("empty notebook") and not flags
    # a notebook without any answer cell of ps1 is flagged
    other = nbformat.v4.new_notebook()
    other.cells = [nbformat.v4.new_code_cell("x = 1")]
    assert scan.repair(other, ps1_info)[2]


def test_docs_table_lists_every_hostile_case():
    """docs_grading.md documents the outcome of every case the tests grade."""
    docs = (REPO / "docs_grading.md").read_text()
    for case in hostile.CASES:
        row = re.search(rf"^\| `{case.student}` \|.*$", docs, re.M)
        assert row, f"{case.student} missing from the table in docs_grading.md"
        cells = [c.strip() for c in row.group(0).split("|")]
        assert cells[3] == case.status and float(cells[4]) == case.score, cells
