#!/usr/bin/env python3
"""Grading driver of the Flows course: nbgrader from sources to grades.csv.

    python tools/grade.py generate    solutions/<ps> -> exercises/<ps>, registered in the gradebook
    python tools/grade.py autograde   grade grading/submitted/<student>/<ps>/, one process each
    python tools/grade.py feedback    grading/feedback/<student>/<ps>/*.html (no hidden tests)
    python tools/grade.py export      grading/grades.csv: one row per student x assignment
    python tools/grade.py all         all of the above; copies the demo class into an empty
                                      grading/submitted/ first (`make grade`)

Options: --root (course root, default: this repository), and for autograde/feedback/all
--assignment/-a and --student/-s to restrict the run (repeatable).

nbgrader is driven through its command line (the `nbgrader` next to this Python), from the
course root, so that it reads nbgrader_config.py there. Each submission is autograded by its
own `nbgrader autograde` process (`grade_submission`, the unit a pool of workers with time and
memory limits would run): a malformed notebook or an nbgrader error stops that student only.
Each cell may run for `Execute.timeout` seconds (nbgrader_config.py). The outcome of every
submission is kept in grading/status.json, which `export` reads (a failed submission is
exported with score 0 and status "failed"); nbgrader's output is in grading/logs/.

Exit status: 0 when every step succeeded and every submission was graded; 1 when a submission
failed (the others are still graded, fed back and exported); 2 on a usage or setup error.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_CLASS = Path(__file__).resolve().parent / "demo_class"
# Student and assignment ids become nbgrader glob patterns and path components: keep them plain.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
ERROR_RE = re.compile(r"\[(?:[^\]]*\| )?(?:ERROR|CRITICAL)\]")  # "[AutogradeApp | ERROR]"


class GradingError(Exception):
    """A setup or pipeline error that stops the whole run (not one submission)."""


# ----------------------------------------------------------------------------- course layout


@dataclass
class Course:
    """Paths of a course directory, read from its nbgrader_config.py."""

    root: Path
    source: Path = field(init=False)
    release: Path = field(init=False)
    submitted: Path = field(init=False)
    autograded: Path = field(init=False)
    feedback: Path = field(init=False)
    db_url: str = field(init=False)
    course_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        config_file = self.root / "nbgrader_config.py"
        if not config_file.is_file():
            raise GradingError(f"no nbgrader_config.py in {self.root}")
        from traitlets.config.loader import PyFileConfigLoader

        cfg = PyFileConfigLoader(config_file.name, path=str(self.root)).load_config()
        cd = cfg.CourseDirectory

        def path(key: str, default: str) -> Path:
            return self.root / (cd[key] if key in cd else default)

        self.source = path("source_directory", "source")
        self.release = path("release_directory", "release")
        self.submitted = path("submitted_directory", "submitted")
        self.autograded = path("autograded_directory", "autograded")
        self.feedback = path("feedback_directory", "feedback")
        self.db_url = cd.db_url if "db_url" in cd else f"sqlite:///{self.root / 'gradebook.db'}"
        self.course_id = cd.course_id if "course_id" in cd else ""

    @property
    def grading(self) -> Path:
        """The instructor-side folder (holds gradebook, status, logs, grades.csv)."""
        return self.submitted.parent

    @property
    def status_file(self) -> Path:
        return self.grading / "status.json"

    @property
    def grades_csv(self) -> Path:
        return self.grading / "grades.csv"

    @property
    def logs(self) -> Path:
        return self.grading / "logs"

    def prepare(self) -> None:
        """Create grading/ and the folder of the sqlite gradebook (sqlite will not)."""
        for folder in (self.grading, self.submitted, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        if self.db_url.startswith("sqlite:///"):
            Path(self.db_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

    def assignments(self) -> list[str]:
        """Assignments = folders of the source directory holding a notebook."""
        if not self.source.is_dir():
            return []
        return sorted(p.name for p in self.source.iterdir()
                      if p.is_dir() and any(p.glob("*.ipynb")))

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, self.course_id)


# ----------------------------------------------------------------------------- running nbgrader


def tool_env(root: Path) -> dict[str, str]:
    """Environment for nbgrader and its kernels: the venv first on PATH (nbgrader calls
    `alembic` by name), Jupyter/IPython/matplotlib state in .cache/ unless already set."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    cache = root / ".cache"
    defaults = {
        "MPLCONFIGDIR": cache / "matplotlib",
        "IPYTHONDIR": cache / "ipython",
        "JUPYTER_CONFIG_DIR": cache / "jupyter" / "config",
        "JUPYTER_DATA_DIR": cache / "jupyter" / "data",
        "JUPYTER_RUNTIME_DIR": cache / "jupyter" / "runtime",
    }
    for key, value in defaults.items():
        if key not in env:
            value.mkdir(parents=True, exist_ok=True)
            env[key] = str(value)
    env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # Small notebooks: one thread per kernel avoids oversubscribing the cores when graders
    # (or the test suite) run side by side.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def nbgrader_command() -> list[str]:
    script = Path(sys.executable).parent / "nbgrader"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nbgrader"]


def run_nbgrader(course: Course, args: list[str], log: Path | None = None
                 ) -> subprocess.CompletedProcess:
    """Run one nbgrader command in the course root; its combined output goes to `log`."""
    proc = subprocess.run(nbgrader_command() + args, cwd=course.root, env=tool_env(course.root),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("$ nbgrader " + " ".join(args) + "\n" + proc.stdout)
    return proc


def error_lines(output: str, limit: int = 2, width: int = 300) -> str:
    """The most telling part of an nbgrader log: its last [ERROR] messages (with their
    continuation lines), else the last line that names an error, else the last line."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in output.splitlines():
        match = ERROR_RE.search(line)
        if match:
            current = [line[match.end():].strip()]
            blocks.append("")
        elif current is not None and not line.lstrip().startswith("["):
            if line.strip():
                current.append(line.strip())
        else:
            current = None
        if current is not None:
            blocks[-1] = " ".join(current)
    if not blocks:
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        named = [ln for ln in lines if "Error" in ln or "Exception" in ln]
        blocks = (named or lines)[-1:]
    text = " | ".join(b for b in blocks[-limit:] if b) or "(no output)"
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- generate


def generate(course: Course) -> list[str]:
    """solutions/<ps> -> exercises/<ps> for every assignment; registers it in the gradebook.
    Always --force, so the result depends only on the sources (idempotent)."""
    course.prepare()
    names = course.assignments()
    if not names:
        raise GradingError(f"no assignment (folder with a notebook) in {course.source}")
    for ps in names:
        t0 = time.perf_counter()
        log = course.logs / f"generate__{ps}.log"
        proc = run_nbgrader(course, ["generate_assignment", ps, "--force"], log=log)
        made = sorted((course.release / ps).glob("*.ipynb"))
        expected = sorted((course.source / ps).glob("*.ipynb"))
        if proc.returncode != 0 or len(made) != len(expected):
            raise GradingError(f"generate_assignment {ps} failed: {error_lines(proc.stdout)}"
                               f" (log: {log})")
        rel = made[0].parent.relative_to(course.root)
        print(f"generated {ps}: {len(made)} notebook(s) in {rel}/ "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return names


# ----------------------------------------------------------------------------- autograde


@dataclass
class Submission:
    student: str
    assignment: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.student}/{self.assignment}"


@dataclass
class Result:
    student: str
    assignment: str
    status: str  # "graded" or "failed"
    score: float | None = None
    max_score: float | None = None
    seconds: float = 0.0
    message: str = ""
    log: str = ""


def find_submissions(course: Course, assignments: list[str] | None = None,
                     students: list[str] | None = None) -> list[Submission]:
    """Every grading/submitted/<student>/<assignment>/ folder, sorted by assignment, student."""
    subs = []
    if not course.submitted.is_dir():
        return subs
    for sdir in sorted(p for p in course.submitted.iterdir() if p.is_dir()):
        if students and sdir.name not in students:
            continue
        for adir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            if assignments and adir.name not in assignments:
                continue
            subs.append(Submission(sdir.name, adir.name, adir))
    return sorted(subs, key=lambda s: (s.assignment, s.student))


def check_submission(course: Course, sub: Submission) -> str | None:
    """Why this submission cannot be graded, or None. Cheap checks made before any process
    starts, so that a malformed submission gets a clear message."""
    import nbformat

    if not ID_RE.match(sub.student):
        return f"invalid student id {sub.student!r} (letters, digits, _ . @ - only)"
    if sub.assignment not in course.assignments():
        return f"unknown assignment {sub.assignment!r} (not in {course.source.name}/)"
    expected = sorted(p.name for p in (course.source / sub.assignment).glob("*.ipynb"))
    found = sorted(p.name for p in sub.path.glob("*.ipynb"))
    if not found:
        return f"no notebook in the submission (expected {', '.join(expected)})"
    for name in found:
        try:
            text = (sub.path / name).read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{name} is not UTF-8 text (byte {exc.start})"
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{name} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})"
        try:
            nbformat.reads(text, as_version=4)
        except Exception as exc:  # nbformat's reader errors: not a notebook, unknown version
            return f"{name} is not a readable notebook: {type(exc).__name__}: {str(exc)[:200]}"
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"missing notebook(s): {', '.join(missing)}"
    return None


def read_score(course: Course, student: str, assignment: str) -> tuple[float, float] | None:
    from nbgrader.api import MissingEntry

    with course.gradebook() as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            return None
        return float(sub.score), float(sub.max_score)


def clear_outputs_of(course: Course, sub: Submission) -> None:
    """Remove what an earlier run made of this submission (stale after a failure)."""
    for folder in (course.autograded, course.feedback):
        shutil.rmtree(folder / sub.student / sub.assignment, ignore_errors=True)


def grade_submission(course: Course, sub: Submission) -> Result:
    """Autograde one submission in its own `nbgrader autograde` process.

    This is the unit of work: it touches only this student's folders and its own log, so it
    can later run in a pool of workers, under time and memory limits."""
    t0 = time.perf_counter()
    result = Result(sub.student, sub.assignment, "failed")
    problem = check_submission(course, sub)
    clear_outputs_of(course, sub)  # what exists after the run was made by this run
    if problem is None:
        log = course.logs / f"autograde__{sub.assignment}__{sub.student}.log"
        result.log = str(log.relative_to(course.root))
        proc = run_nbgrader(course, ["autograde", sub.assignment, "--student", sub.student,
                                     "--force"], log=log)
        outputs = [course.autograded / sub.student / sub.assignment / p.name
                   for p in sub.path.glob("*.ipynb")]
        score = read_score(course, sub.student, sub.assignment)
        if proc.returncode != 0:
            problem = f"nbgrader autograde exited {proc.returncode}: {error_lines(proc.stdout)}"
        elif not all(p.exists() for p in outputs) or score is None:
            problem = f"nbgrader autograde produced no graded notebook: {error_lines(proc.stdout)}"
        else:
            result.status = "graded"
            result.score, result.max_score = score
    if problem is not None:
        result.message = problem
        clear_outputs_of(course, sub)  # nothing half-made is left for feedback
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def load_status(course: Course) -> dict[str, dict]:
    try:
        return json.loads(course.status_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_status(course: Course, status: dict[str, dict]) -> None:
    tmp = course.status_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
    tmp.replace(course.status_file)


def autograde(course: Course, assignments: list[str] | None = None,
              students: list[str] | None = None) -> list[Result]:
    """Grade every submission, one process each, printing one line per submission."""
    course.prepare()
    subs = find_submissions(course, assignments, students)
    if not subs:
        where = f"{course.submitted.relative_to(course.root)}/"
        only = " ".join(f"{flag} {v}" for flag, vs in (("-a", assignments), ("-s", students))
                        for v in vs or [])
        print(f"autograde: no submission under {where}" + (f" matching {only}" if only else ""),
              flush=True)
        return []
    status = load_status(course)
    results = []
    width = len(str(len(subs)))
    for i, sub in enumerate(subs, 1):
        print(f"[{i:>{width}}/{len(subs)}] {sub.assignment} {sub.student:<16} ", end="",
              flush=True)
        res = grade_submission(course, sub)
        results.append(res)
        status[sub.key] = asdict(res)
        save_status(course, status)
        if res.status == "graded":
            print(f"{res.score:g} / {res.max_score:g}  ({res.seconds:.1f} s)", flush=True)
        else:
            print(f"FAILED ({res.seconds:.1f} s): {res.message}", flush=True)
    return results


# ----------------------------------------------------------------------------- feedback


def feedback(course: Course, assignments: list[str] | None = None,
             students: list[str] | None = None) -> list[str]:
    """HTML feedback for every autograded submission (hidden tests removed by the config).
    Returns the problems found (empty when all went well)."""
    course.prepare()
    problems = []
    for ps in assignments or course.assignments():
        graded = sorted(p.parent.name for p in course.autograded.glob(f"*/{ps}")
                        if p.is_dir() and (not students or p.parent.name in students))
        if not graded:
            continue
        args = ["generate_feedback", ps, "--force"]
        if students:
            if len(graded) != 1:
                # nbgrader's --student is a single id (a glob); run one process per student
                for s in graded:
                    problems += feedback(course, [ps], [s])
                continue
            args += ["--student", graded[0]]
        t0 = time.perf_counter()
        log = course.logs / f"feedback__{ps}{'__' + students[0] if students else ''}.log"
        proc = run_nbgrader(course, args, log=log)
        missing = [s for s in graded
                   if not list((course.feedback / s / ps).glob("*.html"))]
        if proc.returncode != 0 or missing:
            problems.append(f"feedback {ps}: {error_lines(proc.stdout)}; no feedback for "
                            f"{', '.join(missing) or '-'} (log: {log})")
        print(f"feedback {ps}: {len(graded) - len(missing)} student(s) in "
              f"{course.feedback.relative_to(course.root)}/<student>/{ps}/ "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return problems


# ----------------------------------------------------------------------------- export


CSV_FIELDS = ["student", "assignment", "score", "max_score", "status", "note"]


def export(course: Course) -> list[dict]:
    """Write grading/grades.csv: one row per student x assignment, from the gradebook and the
    outcome of the last autograde (status.json). status: graded, failed or missing."""
    from nbgrader.api import MissingEntry

    course.prepare()
    status = load_status(course)
    rows = []
    with course.gradebook() as gb:
        assignments = sorted({a.name for a in gb.assignments} | set(course.assignments()))
        students = sorted({s.id for s in gb.students} | {v["student"] for v in status.values()})
        max_scores = {}
        for ps in assignments:
            try:
                max_scores[ps] = float(gb.find_assignment(ps).max_score)
            except MissingEntry:
                max_scores[ps] = None
        for ps in assignments:
            for student in students:
                row = {"student": student, "assignment": ps, "score": 0.0,
                       "max_score": max_scores[ps], "status": "missing", "note": ""}
                last = status.get(f"{student}/{ps}")
                if last and last["status"] == "failed":
                    row.update(status="failed", note=last["message"])
                else:
                    try:
                        sub = gb.find_submission(ps, student)
                    except MissingEntry:
                        pass
                    else:
                        row.update(score=float(sub.score), max_score=float(sub.max_score),
                                   status="graded")
                rows.append(row)
    tmp = course.grades_csv.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "score": f"{row['score']:g}",
                             "max_score": "" if row["max_score"] is None
                             else f"{row['max_score']:g}"})
    tmp.replace(course.grades_csv)
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        print("(no grades)")
        return
    ws = max(7, *(len(r["student"]) for r in rows))
    wa = max(10, *(len(r["assignment"]) for r in rows))
    print(f"{'student':<{ws}}  {'assignment':<{wa}}  {'score':>13}  status")
    for r in rows:
        score = (f"{r['score']:g} / {r['max_score']:g}" if r["max_score"] is not None
                 else f"{r['score']:g}")
        note = f"  ({r['note']})" if r["note"] else ""
        print(f"{r['student']:<{ws}}  {r['assignment']:<{wa}}  {score:>13}  {r['status']}{note}")


# ----------------------------------------------------------------------------- all


def copy_demo_class(course: Course, demo: Path = DEMO_CLASS) -> int:
    """Copy the bundled demo class into grading/submitted/ when that holds nothing yet."""
    course.prepare()
    if any(course.submitted.iterdir()):
        return 0
    students = sorted(p for p in demo.iterdir() if p.is_dir()) if demo.is_dir() else []
    for sdir in students:
        shutil.copytree(sdir, course.submitted / sdir.name)
    return len(students)


def run_all(course: Course, assignments=None, students=None, demo: bool = True) -> int:
    t0 = time.perf_counter()
    generate(course)
    if demo:
        n = copy_demo_class(course)
        if n:
            print(f"{course.submitted.relative_to(course.root)}/ was empty: copied the demo "
                  f"class ({n} students) from {DEMO_CLASS.relative_to(REPO)}/", flush=True)
    results = autograde(course, assignments, students)
    problems = feedback(course, assignments, students)
    rows = export(course)
    print()
    print_table(rows)
    print()
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"FAILED {r.student}/{r.assignment}: {r.message}")
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"grades:   {course.grades_csv}")
    print(f"feedback: {course.feedback}/<student>/<assignment>/")
    print(f"{len(results)} submission(s), {len(failed)} failed, "
          f"{time.perf_counter() - t0:.1f} s in all")
    return 1 if failed or problems else 0


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO,
                        help="course root holding nbgrader_config.py (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="solutions/ -> exercises/ (always --force: idempotent)")
    for name, text in [("autograde", "grade grading/submitted/<student>/<ps>/"),
                       ("feedback", "HTML feedback from grading/autograded/"),
                       ("all", "generate, demo class if nothing submitted, autograde, "
                               "feedback, export")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("-a", "--assignment", action="append", help="only this assignment")
        p.add_argument("-s", "--student", action="append", help="only this student")
        if name == "all":
            p.add_argument("--no-demo", action="store_true",
                           help="do not copy the demo class into an empty grading/submitted/")
    sub.add_parser("export", help="write grading/grades.csv")
    args = parser.parse_args(argv)

    os.environ.update(tool_env(args.root.resolve()))  # for in-process Gradebook (alembic)
    try:
        course = Course(args.root)
        if args.command == "generate":
            generate(course)
            return 0
        if args.command == "autograde":
            results = autograde(course, args.assignment, args.student)
            return 1 if any(r.status == "failed" for r in results) else 0
        if args.command == "feedback":
            problems = feedback(course, args.assignment, args.student)
            for p in problems:
                print(f"PROBLEM {p}")
            return 1 if problems else 0
        if args.command == "export":
            rows = export(course)
            print_table(rows)
            print(f"grades: {course.grades_csv}")
            return 0
        return run_all(course, args.assignment, args.student, demo=not args.no_demo)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
