"""The grading pipeline end to end: `python -m flowgrade` (nbgrader + the harness) on a copy of
the course, as an instructor runs it (`make grade`), with a class holding every assignment's
solution, every untouched exercise, the demo class, and the honest, wrong and hostile cases of
tests/grading/cases.py (one per class of attack on grading v1), graded in ONE batch with 2
workers. Each hostile case must gain no point, leak nothing, and leave every other grade intact.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import importlib.util

import nbformat
import pytest
from flowgrade_cli import flowgrade

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("grading_cases", REPO / "tests" / "grading"
                                               / "cases.py")
_cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _cases  # dataclasses look their module up there
_spec.loader.exec_module(_cases)
FULL, NB, PS, cases = _cases.FULL, _cases.NB, _cases.PS, _cases.cases
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir())
DEMO_EXPECTED = {"alice": 12.0, "bob": 0.0, "carol": 4.0, "dave": 5.0}
CASES = cases()

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (apt-get install bubblewrap)")


def hidden_lines() -> list[str]:
    """Every hidden-test line of every assignment (12 characters or more) that appears nowhere
    else in the instructor's notebooks (the visible tests, the solutions, the text)."""
    hidden, public = [], []
    for nb_path in (REPO / "solutions").glob("*/*.ipynb"):
        for cell in nbformat.read(nb_path, as_version=4).cells:
            inside = False
            for line in cell.source.split("\n"):
                if "### BEGIN HIDDEN TESTS" in line:
                    inside = True
                elif "### END HIDDEN TESTS" in line:
                    inside = False
                elif inside:
                    hidden.append(line.strip())
                else:
                    public.append(line)
    text = "\n".join(public)
    return [line for line in hidden if len(line) >= 12 and line not in text]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions", course / "solutions")
    submitted = course / "grading" / "submitted"
    for sdir in sorted(p for p in (REPO / "tests" / "grading" / "demo_class").iterdir()
                       if p.is_dir()):
        shutil.copytree(sdir, submitted / sdir.name)
    for ps in ASSIGNMENTS:
        for who, src in (("instructor", REPO / "solutions"), ("untouched", REPO / "exercises")):
            (submitted / who / ps).mkdir(parents=True)
            shutil.copy(src / ps / f"{ps}.ipynb", submitted / who / ps)
    for case in CASES:
        case.write(submitted)
    # class 5: trees that stopped the v1 run
    (submitted / "linked").mkdir()
    os.symlink(course / "solutions" / PS, submitted / "linked" / PS)       # folder -> solutions/
    fifo = submitted / "fifo" / PS
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / NB)
    odd = CASES[-1].write(submitted / ".." / "submitted_odd")  # a blank copy, then odd names
    shutil.move(str(odd.parent), str(submitted / "oddnames"))
    folder = submitted / "oddnames" / PS
    with open(os.path.join(os.fsencode(folder), b"caf\xe9-\xff.txt"), "wb") as fh:
        fh.write(b"not utf-8")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(2000):  # deeper than Python's recursion limit and than PATH_MAX
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    limits = ["--workers", "2", "--cell-timeout", "180", "--cell-timeout", f"{PS}=30",
              "--timeout", "600"]
    first = flowgrade(course, "all", "--no-demo", *limits)
    status = json.loads((course / "grading" / "status.json").read_text())
    again = flowgrade(course, "autograde", *limits)
    print(f"timing: `all` on {len(status)} submissions {first.seconds:.1f} s; "
          f"unchanged re-run {again.seconds:.1f} s")
    yield {"course": course, "all": first, "again": again, "status": status,
           "csv": (course / "grading" / "grades.csv").read_text()}
    from flowgrade.submissions import remove_tree

    remove_tree(submitted / "oddnames")  # deeper than shutil.rmtree (pytest's clean-up) copes with


def score(graded, student: str, ps: str = PS) -> float | None:
    out = graded["status"].get(f"{student}/{ps}")
    return None if out is None or out["status"] != "graded" else out["score"]


def test_the_run_finishes_and_exports(graded):
    assert graded["all"].returncode in (0, 1), graded["all"].stderr[-3000:]
    assert "grades:" in graded["all"].stdout
    assert graded["again"].returncode in (0, 1)
    assert "0 submission(s) to grade" in graded["again"].stdout, "an unchanged re-run grades again"


def test_generate_reproduces_committed_exercises(graded):
    for ps in ASSIGNMENTS:
        made = nbformat.read(graded["course"] / "exercises" / ps / f"{ps}.ipynb", as_version=4)
        committed = nbformat.read(REPO / "exercises" / ps / f"{ps}.ipynb", as_version=4)
        assert [c.source for c in made.cells] == [c.source for c in committed.cells], ps


@pytest.mark.parametrize("ps", ASSIGNMENTS)
def test_solutions_get_full_marks_and_exercises_zero(graded, ps):
    sol = graded["status"][f"instructor/{ps}"]
    assert sol["status"] == "graded", sol["reason"]
    assert sol["score"] == sol["max_score"] > 0, sol["cells"]
    assert score(graded, "untouched", ps) == 0.0


def test_demo_class_gets_its_expected_scores(graded):
    for student, expected in DEMO_EXPECTED.items():
        assert score(graded, student) == expected, student


@pytest.mark.parametrize("case", CASES, ids=[c.student for c in CASES])
def test_case_scores(graded, case):
    out = graded["status"][f"{case.student}/{PS}"]
    assert out["status"] == "graded", out["reason"]
    assert out["score"] == case.expected, (case.why, out["cells"])


def test_trees_that_stopped_v1_only_fail_themselves(graded):
    status = graded["status"]
    assert f"linked/{PS}" not in status, "a submission folder linked to solutions/ was graded"
    assert "not graded" in graded["all"].stdout and "linked" in graded["all"].stdout
    fifo = status[f"fifo/{PS}"]
    assert fifo["status"] == "failed" and fifo["score"] == 0
    odd = status[f"oddnames/{PS}"]
    assert odd["status"] == "graded" and odd["score"] == 0.0
    assert "skipped" in " ".join(odd["notes"])


def _pages(graded) -> dict[str, str]:
    root = graded["course"] / "grading"
    return {str(p.relative_to(root)): p.read_text(errors="replace")
            for folder in ("feedback", "autograded") for p in (root / folder).rglob("*")
            if p.is_file() and p.suffix in (".html", ".ipynb")}


def test_no_hidden_test_anywhere_a_student_or_page_shows(graded):
    secrets = hidden_lines()
    assert len(secrets) > 100
    pages = _pages(graded)
    assert sum(p.endswith(".html") for p in pages) >= len(ASSIGNMENTS) * 2
    for name, text in pages.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, (name, leaked[:3])
    reader = graded["status"][f"reader/{PS}"]
    assert reader["score"] == 0


def test_feedback_pages_run_no_script(graded):
    for name, text in _pages(graded).items():
        if not name.endswith(".html"):
            continue
        assert not re.search(r"<\s*script|onerror\s*=|javascript:", text, re.I), name
        assert "Content-Security-Policy" in text, name


def test_grades_csv_is_plain_and_escaped(graded):
    rows = list(csv.DictReader(io.StringIO(graded["csv"])))
    assert rows and all(not r["note"].startswith(("=", "+", "-", "@")) for r in rows)
    students = {r["student"] for r in rows}
    assert {"alice", "instructor", "honest_unusual", "forger"} <= students


def test_honest_neighbours_keep_their_grades(graded):
    assert score(graded, "honest_unusual") == FULL
    assert score(graded, "limits") == FULL
    assert score(graded, "alice") == FULL
