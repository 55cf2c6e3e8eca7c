"""The grading pipeline end to end: nbgrader + tools/grade.py on a private copy of the course.

One module-scoped run grades a whole class in a temporary course directory (a copy of
nbgrader_config.py, solutions/ and tools/; exercises/ is regenerated), exactly as an instructor
would:

1. `grade.py all` on an empty grading/submitted/: generates exercises/, copies the demo class
   (alice, bob, carol, dave), autogrades, writes feedback and grades.csv (this is `make grade`);
2. four more submissions, graded with the subcommands: the instructor's source notebook itself,
   a wrong answer that passes the visible tests, a notebook that is not valid JSON and one that
   nbgrader rejects.

Grading a class costs about 5 to 10 s per submission (an nbgrader process and a kernel each),
so the tests share that one run; they only read it. They run in one xdist worker.
"""
from __future__ import annotations

import csv
import html
import importlib.util
import json
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

pytestmark = pytest.mark.xdist_group("grading")


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
    proc = subprocess.run([sys.executable, str(course / "tools" / "grade.py"),
                           "--root", str(course), *args],
                          capture_output=True, text=True, timeout=900)
    print(f"$ grade.py {' '.join(args)}  (rc {proc.returncode})\n{proc.stdout}{proc.stderr}")
    return proc


def read_csv(course: Path) -> dict[str, dict]:
    with open(course / "grading" / "grades.csv", newline="") as fh:
        return {row["student"]: row for row in csv.DictReader(fh) if row["assignment"] == PS}


def cell_scores(course: Path, student: str) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook

    db = f"sqlite:///{course / 'grading' / 'gradebook.db'}"
    with Gradebook(db) as gb:
        nb = gb.find_submission_notebook(PS, PS, student)
        return {g.name: (float(g.score), float(g.max_score)) for g in nb.grades}


def submit(course: Path, student: str, nb) -> None:
    folder = course / "grading" / "submitted" / student / PS
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, (str, bytes)):
        (folder / NB).write_text(nb if isinstance(nb, str) else nb.decode())
    else:
        nbformat.write(nb, folder / NB)


def wrong_but_visible() -> nbformat.NotebookNode:
    """The solution with one classic bug: the chain is inverted in forward order. The visible
    test of part 3 uses commuting layers, so only the hidden tests can see it."""
    nb = nbformat.read(REPO / "solutions" / PS / NB, as_version=4)
    (cell,) = [c for c in nb.cells
               if c.metadata.get("nbgrader", {}).get("grade_id") == "part3_solution"]
    assert "reversed(layers)" in cell.source
    cell.source = cell.source.replace("reversed(layers)", "layers")
    return nb


def old_metadata() -> nbformat.NotebookNode:
    """A correct notebook whose cell metadata claims an old nbgrader schema: it passes the
    driver's own checks and makes `nbgrader autograde` fail (exit 1, an [ERROR] message)."""
    nb = nbformat.read(REPO / "tools" / "demo_class" / "alice" / PS / NB, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "part1_solution":
            cell.metadata["nbgrader"]["schema_version"] = 1
    return nb


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions", course / "solutions")
    shutil.copytree(REPO / "tools", course / "tools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # exercises/ is left out on purpose: `all` must regenerate it from solutions/

    t0 = time.perf_counter()
    first = grade_py(course, "all")
    t_all = time.perf_counter() - t0

    submit(course, "instructor", (REPO / "solutions" / PS / NB).read_text())
    submit(course, "wrong", wrong_but_visible())
    good = (REPO / "solutions" / PS / NB).read_text()
    submit(course, "broken", good[: len(good) // 2])  # a truncated file: not JSON
    submit(course, "tampered", old_metadata())  # valid JSON that nbgrader itself rejects
    t0 = time.perf_counter()
    second = grade_py(course, "autograde", "-s", "instructor", "-s", "wrong", "-s", "broken",
                      "-s", "tampered")
    feedback = grade_py(course, "feedback")
    export = grade_py(course, "export")
    t_more = time.perf_counter() - t0
    print(f"timing: `all` on the demo class {t_all:.1f} s; 4 more submissions, feedback and "
          f"export {t_more:.1f} s")
    return {"course": course, "all": first, "autograde": second, "feedback": feedback,
            "export": export}


# ----------------------------------------------------------------------------- generation


def test_generate_reproduces_committed_exercises(graded):
    """`generate` from solutions/ gives exactly the committed exercises/ (cells, ids,
    metadata, checksums; no outputs)."""
    made = graded["course"] / "exercises"
    committed = REPO / "exercises"
    names = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
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


# ----------------------------------------------------------------------------- grading


def test_make_grade_on_the_demo_class(graded):
    proc = graded["all"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "copied the demo class (4 students)" in proc.stdout
    assert "grades.csv" in proc.stdout
    for student in DEMO_EXPECTED:
        assert re.search(rf"\] {PS} {student}\s+\S+ / 12", proc.stdout), student  # progress
    # after the second round the demo students are still there, unchanged
    rows = read_csv(graded["course"])
    for student, score in DEMO_EXPECTED.items():
        assert rows[student]["status"] == "graded"
        assert float(rows[student]["score"]) == score, student
        assert float(rows[student]["max_score"]) == MAX_SCORE


def test_solution_scores_full_marks(graded):
    rows = read_csv(graded["course"])
    for student in ("instructor", "alice"):  # the source notebook itself, and a clean copy
        assert (rows[student]["status"], float(rows[student]["score"])) == ("graded", MAX_SCORE)
        assert all(s == m for s, m in cell_scores(graded["course"], student).values())


def test_untouched_student_version_scores_zero_without_crashing(graded):
    course = graded["course"]
    row = read_csv(course)["bob"]
    assert (row["status"], float(row["score"])) == ("graded", 0.0)
    scores = cell_scores(course, "bob")
    assert len(scores) == 6 and all(s == 0 for s, _ in scores.values())
    nb = nbformat.read(course / "grading" / "autograded" / "bob" / PS / NB, as_version=4)
    errors = [o.ename for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and set(errors) == {"NotImplementedError"}


def test_wrong_answer_passing_visible_tests_loses_hidden_points(graded):
    course = graded["course"]
    scores = cell_scores(course, "wrong")
    assert scores["part3_visible"] == (1.0, 1.0)  # the bug is invisible to the visible test
    assert scores["part3_hidden"] == (0.0, 3.0)   # the hidden tests catch it
    assert float(read_csv(course)["wrong"]["score"]) == MAX_SCORE - 3
    # carol (demo class): every visible test passed, every hidden one failed
    carol = cell_scores(course, "carol")
    for part in ("part1", "part2", "part3"):
        score, points = carol[f"{part}_visible"]
        assert score == points > 0
        assert carol[f"{part}_hidden"][0] == 0


def test_invalid_json_fails_only_that_student(graded):
    course, proc = graded["course"], graded["autograde"]
    assert proc.returncode == 1
    assert re.search(r"broken\s+FAILED .*not valid JSON", proc.stdout), proc.stdout
    rows = read_csv(course)
    assert rows["broken"]["status"] == "failed" and float(rows["broken"]["score"]) == 0
    assert "not valid JSON" in rows["broken"]["note"]
    assert not (course / "grading" / "autograded" / "broken").exists()
    assert not (course / "grading" / "feedback" / "broken").exists()
    for student in ("instructor", "wrong"):  # graded in the same batch, before and after it
        assert rows[student]["status"] == "graded"


def test_nbgrader_failure_fails_only_that_student(graded):
    """When nbgrader itself gives up on a submission, the student is reported as failed with
    nbgrader's own message; nothing stale is left for feedback."""
    course, proc = graded["course"], graded["autograde"]
    assert re.search(r"tampered\s+FAILED .*nbgrader autograde exited 1: .*metadata", proc.stdout)
    row = read_csv(course)["tampered"]
    assert row["status"] == "failed" and float(row["score"]) == 0
    assert not (course / "grading" / "autograded" / "tampered").exists()
    assert not (course / "grading" / "feedback" / "tampered").exists()
    assert (course / "grading" / "logs" / f"autograde__{PS}__tampered.log").exists()
    assert graded["feedback"].returncode == 0 and graded["export"].returncode == 0


def test_feedback_html_shows_no_hidden_tests(graded):
    course = graded["course"]
    secrets = secret_lines(REPO / "solutions" / PS / NB)
    students = ["alice", "bob", "carol", "dave", "instructor", "wrong"]
    for student in students:
        page = course / "grading" / "feedback" / student / PS / f"{PS}.html"
        text = html_text(page)
        submitted = (course / "grading" / "submitted" / student / PS / NB).read_text()
        own = {s for c in nbformat.reads(submitted, as_version=4).cells
               for s in hidden_regions(c.source)[1]}  # what the student wrote may coincide
        leaked = [s for s in secrets if s in text and s not in own]
        assert not leaked, f"{page}: hidden test source shown: {leaked[:3]}"
        assert "HIDDEN TESTS" not in text
        assert "hidden tests were run here" in text
        # the autograded notebook, which the student never sees, does hold them (sanity check
        # that the test above looks for the right thing)
        autograded = (course / "grading" / "autograded" / student / PS / NB).read_text()
        assert "BEGIN HIDDEN TESTS" in autograded
    # carol failed hidden tests: she is told so, without the traceback's source lines
    text = html_text(course / "grading" / "feedback" / "carol" / PS / f"{PS}.html")
    assert "raised while running the hidden tests" in text
    assert "Score: 0.0 / 3.0" in text
