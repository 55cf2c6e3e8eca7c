"""Late submissions: the submission's timestamp and the course's late-penalty policy.

The timestamp is nbgrader's: `nbgrader submit` writes `timestamp.txt` into the submission and
`nbgrader collect` copies it into `<submitted>/<student>/<ps>/`. It is read from the grader's
snapshot (flowgrade.submissions.snapshot: a copy without links, FIFOs or devices) with
`read_notebook_bytes` and a cap of 256 bytes, and parsed strictly; anything unusual becomes a
note for the instructor, never a crash and never a penalty.

The policy lives in `grading_policy.json` beside nbgrader_config.py (optional; no file: no
deadline, no penalty)::

    {
      "timezone": "Europe/Paris",          deadlines and timestamps without a zone (default UTC)
      "grace_minutes": 5,                  lateness below this is not late (default 0)
      "penalty_per_day": 0.1,              per started day late (default 0)
      "penalty_unit": "fraction",          of the assignment's max score, or "points"
      "cutoff_days": 3,                    later than this many days: score 0 (null: no cutoff)
      "deadlines": {
        "ps1_change_of_variables": "2026-12-08 23:59",
        "ps2_made": {"deadline": "2026-12-15 23:59", "penalty_per_day": 0, "cutoff_days": 0}
      },
      "extensions": {"alice/ps1_change_of_variables": "2026-12-10 23:59"}
    }

`cutoff_days: 0` is nbgrader's LateSubmissionPlugin 'zero' (late at all: 0). The policy is applied
in the export (grades.csv and the LMS files), from the raw scores kept in the gradebook and in
status.json: changing a deadline or granting an extension needs `python -m flowgrade export`,
not a re-grade, and a penalty is never counted twice. Why not nbgrader's AssignLatePenalties:
its plugin knows 'none' and 'zero' only, it runs inside the per-submission grader (whose private
gradebook holds neither deadlines nor timestamps), and it would bake the penalty into the scores.
The gradebook still gets nbgrader's fields (SubmittedAssignment.timestamp, Assignment.duedate,
SubmittedAssignment.extension), so formgrader shows who was late.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

POLICY_FILE = "grading_policy.json"
TIMESTAMP_FILE = "timestamp.txt"
TIMESTAMP_CAP = 256
FIELDS = ["submitted_at", "days_late", "late_penalty"]  # columns added to grades.csv

_TS_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
                    r"(?:\s*(Z|[+-]\d{2}:?\d{2}|[A-Za-z][A-Za-z0-9_+/-]{0,39}))?$")
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


class PolicyError(ValueError):
    """grading_policy.json is malformed (the instructor's to fix)."""


def _zone(name: str):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name in ("UTC", "Z", "GMT"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def parse_time(text: str, default_tz: str = "UTC") -> datetime:
    """A timestamp as nbgrader writes it ('2026-12-01 18:52:20.123456 UTC', its default
    Exchange.timestamp_format '%Y-%m-%d %H:%M:%S.%f %Z'), ISO 8601 with an offset, or without a
    zone (read in ``default_tz``). A zone abbreviation other than UTC/GMT is accepted only when
    it is what ``default_tz`` calls that moment (nbgrader's %Z with Exchange.timezone set):
    abbreviations alone are ambiguous (CST). Returns an aware UTC datetime; ValueError else."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("not a timestamp (too long)")
    text = text.strip()
    m = _TS_RE.match(text)
    if not m:
        raise ValueError(f"not a timestamp: {text[:40]!r}")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    naive = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0),
                     int((frac or "0").ljust(6, "0")))
    if zone is None:
        local = naive.replace(tzinfo=_zone(default_tz))
    elif _OFFSET_RE.match(zone):
        sign, hh, mm = _OFFSET_RE.match(zone).groups()
        delta = timedelta(hours=int(hh), minutes=int(mm))
        if delta > timedelta(hours=14):
            raise ValueError(f"offset out of range: {zone}")
        local = naive.replace(tzinfo=timezone(delta if sign == "+" else -delta))
    elif zone in ("Z", "UTC", "GMT"):
        local = naive.replace(tzinfo=timezone.utc)
    elif "/" in zone:
        local = naive.replace(tzinfo=_zone(zone))
    else:
        course = naive.replace(tzinfo=_zone(default_tz))
        if course.tzname() != zone:
            raise ValueError(f"time zone abbreviation {zone!r} is ambiguous (the course's zone "
                             f"{default_tz} calls this moment {course.tzname()})")
        local = course
    return local.astimezone(timezone.utc)


def read_timestamp(folder: Path, default_tz: str = "UTC") -> tuple[str, str]:
    """(ISO UTC time or '', note or '') from ``folder``/timestamp.txt of a snapshot."""
    from .submissions import UnsafeTreeError, read_notebook_bytes

    path = Path(folder) / TIMESTAMP_FILE
    try:
        raw = read_notebook_bytes(path, TIMESTAMP_CAP)
    except FileNotFoundError:
        return "", ""
    except (UnsafeTreeError, OSError) as exc:
        return "", f"{TIMESTAMP_FILE} unreadable ({str(exc)[:100]}): lateness not checked"
    try:
        text = raw.decode("ascii").strip()
        when = parse_time(text, default_tz)
    except (UnicodeDecodeError, ValueError) as exc:
        why = "not ASCII" if isinstance(exc, UnicodeDecodeError) else str(exc)[:120]
        return "", f"{TIMESTAMP_FILE} malformed ({why}): lateness not checked"
    note = ""
    if when > datetime.now(timezone.utc) + timedelta(minutes=10):
        note = f"{TIMESTAMP_FILE} is in the future ({when.isoformat()})"
    return when.isoformat(), note


# ----------------------------------------------------------------------------- the policy


@dataclass
class Rule:
    deadline: datetime | None = None
    penalty_per_day: float = 0.0
    penalty_unit: str = "fraction"
    cutoff_days: float | None = None
    grace: timedelta = timedelta(0)


@dataclass
class Policy:
    timezone: str = "UTC"
    rules: dict = field(default_factory=dict)  # assignment -> Rule
    extensions: dict = field(default_factory=dict)  # "student/assignment" -> datetime
    default: Rule = field(default_factory=Rule)

    def rule(self, assignment: str) -> Rule:
        return self.rules.get(assignment, self.default)

    def deadline(self, student: str, assignment: str) -> datetime | None:
        return self.extensions.get(f"{student}/{assignment}", self.rule(assignment).deadline)


_TOP = {"timezone", "grace_minutes", "penalty_per_day", "penalty_unit", "cutoff_days",
        "deadlines", "extensions", "comment"}
_PER = {"deadline", "grace_minutes", "penalty_per_day", "penalty_unit", "cutoff_days"}


def _number(data: dict, key: str, default, where: str, allow_none=False):
    value = data.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
            or not math.isfinite(value):
        raise PolicyError(f"{where}{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _rule(data: dict, base: Rule, tz: str, where: str) -> Rule:
    unit = data.get("penalty_unit", base.penalty_unit)
    if unit not in ("fraction", "points"):
        raise PolicyError(f"{where}penalty_unit: 'fraction' or 'points', not {unit!r}")
    grace = base.grace if "grace_minutes" not in data else \
        timedelta(minutes=_number(data, "grace_minutes", 0, where))
    deadline = base.deadline
    if "deadline" in data:
        deadline = _time(data["deadline"], tz, f"{where}deadline")
    return Rule(deadline=deadline,
                penalty_per_day=_number(data, "penalty_per_day", base.penalty_per_day, where),
                penalty_unit=unit,
                cutoff_days=_number(data, "cutoff_days", base.cutoff_days, where, True)
                if "cutoff_days" in data else base.cutoff_days,
                grace=grace)


def _time(value, tz: str, where: str) -> datetime:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a date and time string, got {value!r}")
    try:
        return parse_time(value, tz)
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from None


def parse_policy(data) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError("expected a JSON object")
    unknown = set(data) - _TOP
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(unknown))} (known: "
                          f"{', '.join(sorted(_TOP))})")
    tz = data.get("timezone", "UTC")
    try:
        _zone(tz) if isinstance(tz, str) else None
    except ValueError as exc:
        raise PolicyError(f"timezone: {exc}") from None
    if not isinstance(tz, str):
        raise PolicyError(f"timezone: expected a name such as 'UTC' or 'Europe/Paris'")
    default = _rule(data, Rule(), tz, "")
    policy = Policy(timezone=tz, default=Rule(penalty_per_day=default.penalty_per_day,
                                              penalty_unit=default.penalty_unit,
                                              cutoff_days=default.cutoff_days,
                                              grace=default.grace))
    deadlines = data.get("deadlines", {})
    if not isinstance(deadlines, dict):
        raise PolicyError("deadlines: expected an object {assignment: deadline or {...}}")
    for ps, value in deadlines.items():
        where = f"deadlines.{ps}."
        if isinstance(value, str):
            value = {"deadline": value}
        if not isinstance(value, dict) or "deadline" not in value or set(value) - _PER:
            raise PolicyError(f"deadlines.{ps}: expected a date string or an object with "
                              f"'deadline' and any of {', '.join(sorted(_PER - {'deadline'}))}")
        policy.rules[ps] = _rule(value, policy.default, tz, where)
    extensions = data.get("extensions", {})
    if not isinstance(extensions, dict):
        raise PolicyError("extensions: expected an object {\"student/assignment\": deadline}")
    for key, value in extensions.items():
        if not isinstance(key, str) or key.count("/") != 1:
            raise PolicyError(f"extensions: key {key!r} is not 'student/assignment'")
        policy.extensions[key] = _time(value, tz, f"extensions.{key}")
    return policy


def load_policy(root: Path) -> Policy:
    """The policy of the course at ``root`` (no file: no deadline). PolicyError if malformed."""
    path = Path(root) / POLICY_FILE
    if not path.is_file():
        return Policy()
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


def course_timezone(root: Path) -> str:
    """The policy's time zone, 'UTC' when the policy is absent or broken (the export reports
    a broken policy; reading timestamps must not stop on it)."""
    try:
        return load_policy(root).timezone
    except PolicyError:
        return "UTC"


# ----------------------------------------------------------------------------- applying it


@dataclass
class Late:
    days_late: int = 0
    penalty: float = 0.0
    note: str = ""


def assess(policy: Policy, student: str, assignment: str, submitted_at: str, score: float,
           max_score: float | None) -> Late:
    """What the policy does to one graded submission."""
    rule = policy.rule(assignment)
    deadline = policy.deadline(student, assignment)
    if deadline is None:
        return Late()
    if not submitted_at:
        return Late(note="no submission timestamp: lateness not checked")
    when = datetime.fromisoformat(submitted_at)
    late_by = when - deadline - rule.grace
    if late_by <= timedelta(0):
        return Late()
    days = math.ceil(late_by / timedelta(days=1))
    hours = (when - deadline) / timedelta(hours=1)
    if rule.cutoff_days is not None and late_by > timedelta(days=rule.cutoff_days):
        return Late(days, score, f"late by {hours:.1f} h, past the cutoff of "
                                 f"{rule.cutoff_days:g} day(s): score 0")
    per_day = rule.penalty_per_day * ((max_score or 0.0) if rule.penalty_unit == "fraction"
                                      else 1.0)
    penalty = min(score, days * per_day)
    note = f"late by {hours:.1f} h ({days} day(s))"
    if penalty:
        note += f": -{penalty:g}"
    return Late(days, penalty, note)


def apply(policy: Policy, rows: list[dict], status: dict) -> None:
    """Add the FIELDS to each grades.csv row and take the penalty off graded scores."""
    for row in rows:
        row.update(submitted_at="", days_late="", late_penalty="")
        last = status.get(f"{row['student']}/{row['assignment']}") or {}
        if row["status"] not in ("graded", "failed"):
            continue
        row["submitted_at"] = last.get("submitted_at", "") or ""
        if row["status"] != "graded":
            continue
        late = assess(policy, row["student"], row["assignment"], row["submitted_at"],
                      float(row["score"]), row["max_score"])
        row["days_late"] = late.days_late
        row["late_penalty"] = late.penalty
        row["score"] = max(0.0, float(row["score"]) - late.penalty)
        if late.note:
            row["note"] = "; ".join(x for x in (row["note"], late.note) if x)


def gradebook_time(iso: str) -> datetime | None:
    """nbgrader's convention: naive UTC datetimes."""
    if not iso:
        return None
    return datetime.fromisoformat(iso).astimezone(timezone.utc).replace(tzinfo=None)


def sync_gradebook(gb, policy: Policy) -> None:
    """nbgrader's own fields from the policy: Assignment.duedate, SubmittedAssignment.extension
    (formgrader shows lateness with them; nbgrader's late penalties are not configured)."""
    from nbgrader.api import MissingEntry

    for a in gb.assignments:  # an assignment the policy leaves out keeps its duedate
        rule = policy.rules.get(a.name)
        due = gradebook_time(rule.deadline.isoformat()) if rule and rule.deadline else None
        if due is not None and a.duedate != due:
            a.duedate = due
    for key, when in policy.extensions.items():
        student, assignment = key.split("/")
        rule = policy.rules.get(assignment)
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            continue
        base = rule.deadline if rule and rule.deadline else None
        sub.extension = (when - base) if base is not None and when > base else None
    gb.db.commit()
