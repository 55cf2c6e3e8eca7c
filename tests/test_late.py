"""flowgrade.late: the submission's timestamp (read safely, parsed strictly) and the late policy
applied in the export (grades.csv); no grading here (tests/test_exchange.py grades through
nbgrader's exchange end to end)."""
from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import pytest

from flowgrade import late
from flowgrade.late import Policy, PolicyError, assess, parse_policy, parse_time, read_timestamp

REPO = Path(__file__).resolve().parents[1]
UTC = timezone.utc


def test_parse_nbgrader_default_format():
    # nbgrader's Exchange.timestamp_format default: "%Y-%m-%d %H:%M:%S.%f %Z", timezone UTC
    t = parse_time("2026-12-01 18:52:20.123456 UTC")
    assert t == datetime(2026, 12, 1, 18, 52, 20, 123456, tzinfo=UTC)


@pytest.mark.parametrize("text, expected", [
    ("2026-12-01T18:52:20+01:00", datetime(2026, 12, 1, 17, 52, 20, tzinfo=UTC)),
    ("2026-12-01 18:52:20.5 -0300", datetime(2026, 12, 1, 21, 52, 20, 500000, tzinfo=UTC)),
    ("2026-12-01 18:52:20Z", datetime(2026, 12, 1, 18, 52, 20, tzinfo=UTC)),
    ("2026-12-01 18:52", datetime(2026, 12, 1, 18, 52, tzinfo=UTC)),
    ("2026-12-01 18:52:20 Europe/Paris", datetime(2026, 12, 1, 17, 52, 20, tzinfo=UTC)),
    ("  2026-12-01 18:52:20 GMT\n", datetime(2026, 12, 1, 18, 52, 20, tzinfo=UTC)),
])
def test_parse_accepted(text, expected):
    assert parse_time(text) == expected


def test_abbreviation_only_in_the_course_zone():
    # nbgrader with Exchange.timezone = "Europe/Paris" writes "CET": accepted when the course's
    # zone calls that moment CET, refused otherwise (abbreviations are ambiguous)
    assert parse_time("2026-12-01 18:00:00 CET", "Europe/Paris") == \
        datetime(2026, 12, 1, 17, tzinfo=UTC)
    with pytest.raises(ValueError, match="ambiguous"):
        parse_time("2026-12-01 18:00:00 CET")
    with pytest.raises(ValueError, match="ambiguous"):
        parse_time("2026-07-01 18:00:00 CET", "Europe/Paris")  # summer: CEST


@pytest.mark.parametrize("text", [
    "", "yesterday", "2026-13-01 10:00:00", "2026-12-01 25:00:00", "2026-12-01 10:00:00 +2500",
    "2026-12-01 10:00:00 Mars/Olympus", "2026-12-01 10:00:00; rm -rf /", "=cmd|' /C calc'!A0",
    "2026-12-01 10:00:00 UTC" + " " * 60, "1" * 10_000,
])
def test_parse_refused(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_read_timestamp_from_a_snapshot(tmp_path):
    (tmp_path / "timestamp.txt").write_text("2026-12-01 18:52:20.123456 UTC")
    assert read_timestamp(tmp_path) == ("2026-12-01T18:52:20.123456+00:00", "")
    assert read_timestamp(tmp_path / "nothing") == ("", "")


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_bytes(b"2026-12-01 10:00:00 UTC" + b" " * 300), "unreadable"),  # > cap
    (lambda p: p.write_bytes(b"\xff\xfe2026"), "not ASCII"),
    (lambda p: p.write_text("tomorrow, honest"), "malformed"),
    (lambda p: os.mkfifo(p), "unreadable"),                           # must not block
    (lambda p: os.symlink("/etc/passwd", p), "unreadable"),           # never followed
    (lambda p: p.mkdir(), "unreadable"),
])
def test_hostile_timestamp_is_a_note(tmp_path, make, why):
    make(tmp_path / "timestamp.txt")
    iso, note = read_timestamp(tmp_path)
    assert iso == "" and why in note and "lateness not checked" in note


def test_future_timestamp_is_noted(tmp_path):
    future = datetime.now(UTC) + timedelta(days=3)
    (tmp_path / "timestamp.txt").write_text(future.strftime("%Y-%m-%d %H:%M:%S.%f UTC"))
    iso, note = read_timestamp(tmp_path)
    assert iso and "future" in note


POLICY = {
    "timezone": "UTC", "penalty_per_day": 0.1, "cutoff_days": 3, "grace_minutes": 10,
    "deadlines": {"ps1": "2026-12-08 23:59",
                  "ps2": {"deadline": "2026-12-15 12:00", "penalty_per_day": 2,
                          "penalty_unit": "points", "cutoff_days": None},
                  "ps3": {"deadline": "2026-12-20 12:00", "cutoff_days": 0}},
    "extensions": {"alice/ps1": "2026-12-10 23:59"},
}


def at(text: str) -> str:
    return parse_time(text).isoformat()


def test_policy_per_day_grace_cutoff_extension():
    p = parse_policy(POLICY)
    on_time = assess(p, "bob", "ps1", at("2026-12-08 23:59"), 10, 12)
    assert on_time.penalty == 0 and on_time.days_late == 0
    grace = assess(p, "bob", "ps1", at("2026-12-09 00:05"), 10, 12)  # within 10 minutes
    assert grace.penalty == 0
    one = assess(p, "bob", "ps1", at("2026-12-09 01:00"), 10, 12)   # 1 started day: 10% of 12
    assert one.days_late == 1 and one.penalty == pytest.approx(1.2) and "late by" in one.note
    three = assess(p, "bob", "ps1", at("2026-12-11 20:00"), 10, 12)
    assert three.days_late == 3 and three.penalty == pytest.approx(3.6)
    cut = assess(p, "bob", "ps1", at("2026-12-12 01:00"), 10, 12)   # past 3 days: 0
    assert cut.penalty == 10 and "cutoff" in cut.note
    small = assess(p, "bob", "ps1", at("2026-12-11 20:00"), 1, 12)   # never below 0
    assert small.penalty == 1
    ext = assess(p, "alice", "ps1", at("2026-12-10 20:00"), 10, 12)  # her own deadline
    assert ext.penalty == 0
    points = assess(p, "bob", "ps2", at("2026-12-25 12:00"), 10, 12)  # no cutoff, 2 pts a day
    assert points.days_late == 10 and points.penalty == 10
    zero = assess(p, "bob", "ps3", at("2026-12-20 12:30"), 10, 12)    # nbgrader's 'zero'
    assert zero.penalty == 10
    none = assess(p, "bob", "ps1", "", 10, 12)
    assert none.penalty == 0 and "no submission timestamp" in none.note
    free = assess(p, "bob", "other", at("2030-01-01 00:00"), 10, 12)  # no deadline
    assert free.penalty == 0 and free.note == ""


@pytest.mark.parametrize("bad, match", [
    ({"deadline": "2026-12-01"}, "unknown key"),
    ({"penalty_per_day": -1}, "number >= 0"),
    ({"penalty_per_day": "10%"}, "number >= 0"),
    ({"penalty_unit": "percent"}, "penalty_unit"),
    ({"timezone": "Moon/Base"}, "timezone"),
    ({"deadlines": {"ps1": "next friday"}}, "deadlines.ps1"),
    ({"deadlines": {"ps1": {"due": "2026-12-01 10:00"}}}, "deadlines.ps1"),
    ({"extensions": {"alice": "2026-12-01 10:00"}}, "student/assignment"),
    ([], "JSON object"),
])
def test_policy_errors(bad, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(bad)


def test_load_policy(tmp_path):
    assert late.load_policy(tmp_path).rules == {}
    (tmp_path / late.POLICY_FILE).write_text("{not json")
    with pytest.raises(PolicyError):
        late.load_policy(tmp_path)
    assert late.course_timezone(tmp_path) == "UTC"
    (tmp_path / late.POLICY_FILE).write_text(json.dumps(POLICY))
    assert set(late.load_policy(tmp_path).rules) == {"ps1", "ps2", "ps3"}


# ----------------------------------------------------------------------------- the export


def minimal_course(root: Path, assignments=("ps1", "ps2")) -> Path:
    """A course the export can read without grading: config, sources, submissions and a
    status.json as autograde leaves it."""
    shutil.copy(REPO / "nbgrader_config.py", root)
    for ps in assignments:
        (root / "solutions" / ps).mkdir(parents=True)
        nbformat.write(nbformat.v4.new_notebook(), root / "solutions" / ps / f"{ps}.ipynb")
    return root


def graded(root: Path, student: str, ps: str, score: float, submitted_at: str = "",
           status: str = "graded", note: str = "") -> None:
    folder = root / "grading" / "submitted" / student / ps
    folder.mkdir(parents=True, exist_ok=True)
    path = root / "grading" / "status.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[f"{student}/{ps}"] = {"student": student, "assignment": ps, "hash": "x",
                               "status": status, "score": score, "max_score": 12.0,
                               "autograde_score": score, "submitted_at": submitted_at,
                               "reason": note}
    path.write_text(json.dumps(data))


def run_export(root: Path) -> dict:
    from flowgrade.driver import Course, export, tool_env

    os.environ.update(tool_env(root))
    export(Course(root))
    with open(root / "grading" / "grades.csv", newline="") as fh:
        return {(r["student"], r["assignment"]): r for r in csv.DictReader(fh)}


def test_export_applies_the_policy(tmp_path):
    root = minimal_course(tmp_path)
    (root / late.POLICY_FILE).write_text(json.dumps(POLICY))
    graded(root, "alice", "ps1", 12, at("2026-12-10 12:00"))   # extension: on time
    graded(root, "bob", "ps1", 12, at("2026-12-09 12:00"))     # 1 day late: -1.2
    graded(root, "carol", "ps1", 12, at("2026-12-31 12:00"))   # past the cutoff: 0
    graded(root, "dave", "ps1", 12)                            # no timestamp: noted
    graded(root, "erin", "ps1", 0, at("2026-12-31 12:00"), "failed", "not JSON")
    rows = run_export(root)
    assert list(rows[("alice", "ps1")])[-3:] == late.FIELDS
    assert rows[("alice", "ps1")]["score"] == "12"
    assert rows[("alice", "ps1")]["submitted_at"] == "2026-12-10T12:00:00+00:00"
    bob = rows[("bob", "ps1")]
    assert (bob["score"], bob["days_late"], bob["late_penalty"]) == ("10.8", "1", "1.2")
    assert "late by 12.0 h" in bob["note"] and bob["autograde_score"] == "12"
    assert rows[("carol", "ps1")]["score"] == "0" and "cutoff" in rows[("carol", "ps1")]["note"]
    assert rows[("dave", "ps1")]["score"] == "12"
    assert "no submission timestamp" in rows[("dave", "ps1")]["note"]
    assert rows[("erin", "ps1")]["status"] == "failed" and rows[("erin", "ps1")]["score"] == "0"
    assert rows[("alice", "ps2")]["status"] == "missing"
    # a changed deadline needs an export, not a re-grade
    POLICY2 = dict(POLICY, deadlines={"ps1": "2026-12-31 23:00"})
    (root / late.POLICY_FILE).write_text(json.dumps(POLICY2))
    rows = run_export(root)
    assert rows[("bob", "ps1")]["score"] == "12" and rows[("carol", "ps1")]["score"] == "12"


def test_export_refuses_a_broken_policy(tmp_path):
    from flowgrade.driver import GradingError

    root = minimal_course(tmp_path)
    (root / late.POLICY_FILE).write_text(json.dumps({"penalty_per_day": "lots"}))
    graded(root, "bob", "ps1", 12)
    with pytest.raises(GradingError, match="penalty_per_day"):
        run_export(root)
