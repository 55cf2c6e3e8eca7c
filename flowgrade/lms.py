"""Grade files an LMS imports, written by `python -m flowgrade export` beside grades.csv.

    grading/canvas.csv   Canvas gradebook import
    grading/moodle.csv   Moodle "Import grades: CSV file"

Formats relied on (checked 2026-12):

* Canvas: the gradebook import takes the columns of Canvas's own gradebook export: "Student",
  "ID", "SIS User ID", "SIS Login ID", "Section", then one column per assignment; a student is
  matched by name, ID or SIS User ID (one is enough), SIS Login ID and Section identify the
  enrolment; a second row "Points Possible" (as in the export: its Student cell holds the words
  and the assignment cells the maximum points) is read-only on import. A column named
  "Title (12345)" updates assignment 12345; a title without an id creates a new assignment;
  an empty cell leaves a grade as it is. (Instructure, "How do I import grades in the
  Gradebook?"; OSU Teaching Resources, "Import a CSV file to Carmen grades": "Student Name OR
  Student ID OR Student SIS User ID ... SIS Login ID ... Section ... Assignment Name".)
* Moodle: grade/import/csv reads a header row, then one row per user; on import the teacher
  maps one column to a user field ("Map from" the file's column, "Map to" email, username,
  idnumber or userid) and each other column to a grade item (moodle/moodle,
  grade/import/csv/classes/load_data.php, map_user_data_with_value: 'userid', 'username',
  'useridnumber', 'useremail'; grade/import/csv/index.php). Empty cells are skipped.

The roster: an optional `grading/roster.csv` (the instructor's, never committed: grading/ is
ignored) with a header row and the columns `student` (the course id: the folder name under
grading/submitted/, the JupyterHub user), and any of `name`, `canvas_id`, `sis_user_id`,
`sis_login_id`, `section`, `email`, `username`, `idnumber`. Without a roster, Canvas's
"SIS Login ID" and Moodle's `username` are the course id (true where the hub logs students in
through the LMS). With a roster, a student it does not list is left out of both files (and
named in the export's warnings): an LMS cannot match them.

Every text cell goes through flowgrade.sanitize.csv_field (spreadsheet formula injection);
scores are numbers. Graded and failed submissions give their score after the late policy
(flowgrade.late); missing and ungraded ones an empty cell.
"""
from __future__ import annotations

import csv
from pathlib import Path

CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
POINTS_POSSIBLE = "    Points Possible"  # as Canvas's own export writes it
ROSTER_COLUMNS = ["student", "name", "canvas_id", "sis_user_id", "sis_login_id", "section",
                  "email", "username", "idnumber"]
MOODLE_IDS = ("email", "idnumber", "username")  # preferred identifier, first one complete
ROSTER_FILE = "roster.csv"
MAX_ROSTER_BYTES = 16 * 2**20


class RosterError(ValueError):
    """roster.csv is malformed (the instructor's to fix)."""


def read_roster(path: Path) -> dict[str, dict] | None:
    """{course id: {column: value}} from roster.csv; None when there is no roster."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_ROSTER_BYTES:
        raise RosterError(f"{path}: larger than {MAX_ROSTER_BYTES // 2**20} MB")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "student" not in fields:
            raise RosterError(f"{path}: no 'student' column (columns: "
                              f"{', '.join(ROSTER_COLUMNS)})")
        unknown = [f for f in fields if f not in ROSTER_COLUMNS]
        if unknown:
            raise RosterError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}")
        out: dict[str, dict] = {}
        for n, row in enumerate(reader, start=2):
            sid = (row.get("student") or "").strip()
            if not sid:
                raise RosterError(f"{path}, line {n}: empty student")
            if sid in out:
                raise RosterError(f"{path}, line {n}: student {sid!r} listed twice")
            out[sid] = {k: (v or "").strip() for k, v in row.items() if k in ROSTER_COLUMNS}
    return out


def _table(rows: list[dict]) -> tuple[list[str], list[str], dict, dict]:
    """(assignments, students, {(student, assignment): score or None}, {assignment: max})."""
    assignments = sorted({r["assignment"] for r in rows})
    students = sorted({r["student"] for r in rows})
    scores, maxima = {}, {}
    for r in rows:
        counted = r["status"] in ("graded", "failed")
        scores[(r["student"], r["assignment"])] = float(r["score"]) if counted else None
        if r.get("max_score") is not None and r["assignment"] not in maxima:
            maxima[r["assignment"]] = float(r["max_score"])
    return assignments, students, scores, maxima


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def canvas_rows(rows: list[dict], roster: dict | None) -> tuple[list[list[str]], list[str]]:
    """The Canvas gradebook CSV as a list of rows (header first), and warnings."""
    from .sanitize import csv_field

    assignments, students, scores, maxima = _table(rows)
    out = [CANVAS_COLUMNS + [csv_field(a) for a in assignments],
           [POINTS_POSSIBLE, "", "", "", ""] + [_num(maxima.get(a)) for a in assignments]]
    warnings = []
    for s in students:
        if roster is not None and s not in roster:
            warnings.append(f"{s}: not in the roster, left out of canvas.csv and moodle.csv")
            continue
        info = (roster or {}).get(s, {})
        out.append([csv_field(info.get("name") or s), csv_field(info.get("canvas_id", "")),
                    csv_field(info.get("sis_user_id", "")),
                    csv_field(info.get("sis_login_id") or (s if roster is None else "")),
                    csv_field(info.get("section", ""))]
                   + [_num(scores.get((s, a))) for a in assignments])
    return out, warnings


def moodle_rows(rows: list[dict], roster: dict | None) -> list[list[str]]:
    """The Moodle grade import CSV: an identifier column (email, idnumber or username: the
    first one the roster gives for every student; username = course id without a roster),
    then one column per assignment."""
    from .sanitize import csv_field

    assignments, students, scores, _ = _table(rows)
    listed = [s for s in students if roster is None or s in roster]
    key = "username"
    if roster is not None:
        for candidate in MOODLE_IDS:
            if listed and all(roster[s].get(candidate) for s in listed):
                key = candidate
                break
    out = [[key] + [csv_field(a) for a in assignments]]
    for s in listed:
        ident = (roster or {}).get(s, {}).get(key) or s
        out.append([csv_field(ident)] + [_num(scores.get((s, a))) for a in assignments])
    return out


def _write(path: Path, table: list[list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table)
    tmp.replace(path)


def write(grading: Path, rows: list[dict]) -> tuple[list[Path], list[str]]:
    """grading/canvas.csv and grading/moodle.csv from the export's rows (after the late policy).
    Returns the files written and warnings."""
    grading = Path(grading)
    roster = read_roster(grading / ROSTER_FILE)
    canvas, warnings = canvas_rows(rows, roster)
    paths = [grading / "canvas.csv", grading / "moodle.csv"]
    _write(paths[0], canvas)
    _write(paths[1], moodle_rows(rows, roster))
    return paths, warnings
