"""flowgrade.lms: canvas.csv and moodle.csv beside grades.csv, checked against each format's
documented columns (see flowgrade/lms.py for the sources), with hostile strings escaped."""
from __future__ import annotations

import csv
import json

import pytest

from flowgrade import lms
from flowgrade.lms import CANVAS_COLUMNS, RosterError, read_roster

from test_late import POLICY, at, graded, minimal_course, run_export


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def rows_of(table):
    return [dict(zip(table[0], r)) for r in table[1:]]


ROWS = [
    {"student": "alice", "assignment": "ps1", "score": 10.8, "max_score": 12.0,
     "status": "graded"},
    {"student": "alice", "assignment": "ps2", "score": 0.0, "max_score": 5.0,
     "status": "missing"},
    {"student": "bob", "assignment": "ps1", "score": 0.0, "max_score": 12.0, "status": "failed"},
    {"student": "bob", "assignment": "ps2", "score": 4.5, "max_score": 5.0, "status": "graded"},
]


def test_canvas_format_without_roster():
    table, warnings = lms.canvas_rows(ROWS, None)
    # Canvas: "Student", "ID", "SIS User ID", "SIS Login ID", "Section", then one column per
    # assignment; the second row is "Points Possible" with the maximum of each assignment
    assert table[0] == CANVAS_COLUMNS + ["ps1", "ps2"]
    assert table[1][0].strip() == "Points Possible" and table[1][1:] == ["", "", "", "", "12", "5"]
    assert table[2] == ["alice", "", "", "alice", "", "10.8", ""]  # missing: empty (no change)
    assert table[3] == ["bob", "", "", "bob", "", "0", "4.5"]     # failed: 0
    assert warnings == []


def test_moodle_format_without_roster():
    table = lms.moodle_rows(ROWS, None)
    # Moodle: one identifier column (mapped to a user field on import), one per grade item
    assert table[0] == ["username", "ps1", "ps2"]
    assert table[1:] == [["alice", "10.8", ""], ["bob", "0", "4.5"]]


def test_roster_maps_ids_and_escapes(tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text(
        "student,name,canvas_id,sis_user_id,sis_login_id,section,email\n"
        'alice,"Liddell, Alice",101,S1,aliddell,A,alice@uni.example\n'
        'bob,=HYPERLINK("http://x"),102,S2,@bob,-B,+bob@uni.example\n')
    r = read_roster(roster)
    table, warnings = lms.canvas_rows(ROWS + [
        {"student": "mallory", "assignment": "ps1", "score": 3.0, "max_score": 12.0,
         "status": "graded"}], r)
    got = rows_of(table)
    assert got[1] == {"Student": "Liddell, Alice", "ID": "101", "SIS User ID": "S1",
                      "SIS Login ID": "aliddell", "Section": "A", "ps1": "10.8", "ps2": ""}
    assert got[2]["Student"] == "'=HYPERLINK(\"http://x\")" and got[2]["SIS Login ID"] == "'@bob"
    assert got[2]["Section"] == "'-B"
    assert [g["Student"] for g in got[1:]] == ["Liddell, Alice", "'=HYPERLINK(\"http://x\")"]
    assert warnings == ["mallory: not in the roster, left out of canvas.csv and moodle.csv"]
    moodle = lms.moodle_rows(ROWS, r)
    assert moodle[0][0] == "email"  # every student has one: the preferred identifier
    assert moodle[1:] == [["alice@uni.example", "10.8", ""], ["'+bob@uni.example", "0", "4.5"]]


@pytest.mark.parametrize("text, match", [
    ("name,email\nAlice,a@x\n", "no 'student' column"),
    ("student,password\nalice,x\n", "unknown column"),
    ("student\nalice\nalice\n", "twice"),
    ("student,email\n,a@x\n", "empty student"),
])
def test_roster_errors(tmp_path, text, match):
    (tmp_path / "roster.csv").write_text(text)
    with pytest.raises(RosterError, match=match):
        read_roster(tmp_path / "roster.csv")


def test_export_writes_both_files_after_the_late_policy(tmp_path):
    root = minimal_course(tmp_path)
    (root / "grading_policy.json").write_text(json.dumps(POLICY))
    graded(root, "bob", "ps1", 12, at("2026-12-09 12:00"))       # 1 day late: 10.8
    graded(root, "alice", "ps1", 12, at("2026-12-01 12:00"))
    graded(root, "carol", "ps2", 3)
    run_export(root)
    canvas = read(root / "grading" / "canvas.csv")
    assert canvas[0] == CANVAS_COLUMNS + ["ps1", "ps2"]
    assert canvas[1][0].strip() == "Points Possible" and canvas[1][5:] == ["12", "12"]
    by = {r[0]: r for r in canvas[2:]}
    assert by["bob"][5] == "10.8" and by["alice"][5] == "12" and by["carol"][6] == "3"
    moodle = read(root / "grading" / "moodle.csv")
    assert moodle[0] == ["username", "ps1", "ps2"]
    assert {r[0]: r[1:] for r in moodle[1:]} == {"carol": ["", "3"], "alice": ["12", ""],
                                                 "bob": ["10.8", ""]}
