"""The course on a JupyterHub with nbgrader's exchange, run locally with nbgrader's own commands:
the instructor releases into a temporary exchange, a student (another home; student id ada:
the test runs as one uid, so `--student ada` stands for the hub user) fetches, answers and
submits, the instructor collects, and `python -m flowgrade autograde` grades the
collected submission; its timestamp.txt (written by `nbgrader submit`) reaches status.json, the
gradebook and grades.csv, and the late policy of grading_policy.json applies in the export.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PS = "ps1_change_of_variables"
NB = f"{PS}.ipynb"
DEMO = REPO / "tests" / "grading" / "demo_class"

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (apt-get install bubblewrap)")


def nbgrader(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nbgrader"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nbgrader"]
    proc = subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_release_fetch_submit_collect_autograde(tmp_path):
    from flowgrade.driver import tool_env

    course, exchange, home = tmp_path / "course", tmp_path / "exchange", tmp_path / "ada"
    course.mkdir()
    home.mkdir()
    shutil.copytree(REPO / "solutions" / PS, course / "solutions" / PS)
    # the course's own configuration, pointed at the exchange (as on the hub: see README)
    config = (REPO / "nbgrader_config.py").read_text()
    (course / "nbgrader_config.py").write_text(
        config + f"\nc.Exchange.root = {str(exchange)!r}\n")
    instructor = tool_env(course)
    instructor["USER"] = instructor["LOGNAME"] = "instructor"

    def flowgrade(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowgrade", "--root", str(course), *args],
                              capture_output=True, text=True, env=instructor, timeout=1200)

    gen = flowgrade("generate")
    assert gen.returncode == 0, gen.stdout + gen.stderr
    nbgrader(["release_assignment", PS], course, instructor)
    assert (exchange / "flows" / "outbound" / PS / NB).is_file()

    # the student: a home of their own, only the exchange's address in their configuration
    (home / ".jupyter").mkdir()
    (home / ".jupyter" / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.Exchange.root = {str(exchange)!r}\n")
    student = {"PATH": os.environ["PATH"], "HOME": str(home), "USER": "ada", "LOGNAME": "ada",
               "JUPYTER_CONFIG_DIR": str(home / ".jupyter"), "JUPYTER_PLATFORM_DIRS": "1",
               "JUPYTER_DATA_DIR": str(home / ".local"), "LANG": "C.UTF-8"}
    nbgrader(["fetch_assignment", PS, "--course", "flows"], home, student)
    fetched = home / PS / NB
    assert fetched.is_file()
    shutil.copy(DEMO / "alice" / PS / NB, fetched)  # the student's answers: all correct
    nbgrader(["submit", PS, "--course", "flows", "--student", "ada"], home, student)

    nbgrader(["collect", PS], course, instructor)
    submitted = course / "grading" / "submitted" / "ada" / PS
    stamp = (submitted / "timestamp.txt").read_text()
    assert (submitted / NB).is_file()
    submitted_at = datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S.%f %Z").replace(
        tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - submitted_at) < timedelta(minutes=30)

    # the deadline was 30 hours before the submission: 2 started days, 10% of 12 points each
    deadline = (submitted_at - timedelta(hours=30)).strftime("%Y-%m-%d %H:%M:%S")
    (course / "grading_policy.json").write_text(json.dumps(
        {"timezone": "UTC", "penalty_per_day": 0.1, "cutoff_days": 5,
         "deadlines": {PS: deadline}}))
    graded = flowgrade("autograde", "--workers", "1", "--cell-timeout", "60")
    assert graded.returncode == 0, graded.stdout + graded.stderr
    status = json.loads((course / "grading" / "status.json").read_text())[f"ada/{PS}"]
    assert status["status"] == "graded" and status["score"] == 12.0
    assert datetime.fromisoformat(status["submitted_at"]) == submitted_at

    assert flowgrade("export").returncode == 0
    with open(course / "grading" / "grades.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["student"] == "ada")
    assert (row["score"], row["days_late"], row["late_penalty"]) == ("9.6", "2", "2.4")
    assert row["autograde_score"] == "12" and "late by 30.0 h" in row["note"]
    assert datetime.fromisoformat(row["submitted_at"]) == submitted_at
    with open(course / "grading" / "canvas.csv", newline="") as fh:
        canvas = list(csv.reader(fh))
    assert canvas[2][0] == "ada" and canvas[2][5] == "9.6"

    # nbgrader's gradebook holds the timestamp and the deadline (formgrader shows the lateness)
    os.environ.update(tool_env(course))
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'grading' / 'gradebook.db'}", "flows") as gb:
        sub = gb.find_submission(PS, "ada")
        assert sub.timestamp == submitted_at.replace(tzinfo=None)
        assert sub.assignment.duedate == (submitted_at - timedelta(hours=30)).replace(
            tzinfo=None, microsecond=0)
        assert sub.total_seconds_late == pytest.approx(30 * 3600, abs=1)
