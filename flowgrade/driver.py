"""Grading driver of the Flows course: nbgrader underneath, from sources to grades.csv.

    python -m flowgrade generate    solutions/<ps> -> exercises/<ps>, registered in the gradebook
    python -m flowgrade autograde   grade every grading/submitted/<student>/<ps>/ in parallel;
                                    feedback for each
    python -m flowgrade feedback    re-make feedback from the gradebook (after manual grading)
    python -m flowgrade export      grading/grades.csv: one row per student x assignment
    python -m flowgrade report      grading/reports/: per-assignment report and score plot
    python -m flowgrade review S PS accept|zero [--note TEXT]
                                    settle a submission the scan annotated, after looking at it
    python -m flowgrade sandbox     what confinement this machine gives the student's code
    python -m flowgrade all         generate, demo class if nothing submitted, autograde,
                                    export, report (`make grade`)

autograde/all options: -a/--assignment, -s/--student (repeatable), --workers N (default: the
number of CPUs), --timeout S (wall clock per submission, 300), --cell-timeout [PS=]S (per cell,
60; repeat with PS= for one assignment), --memory MB (the student's kernel, 4096), --force
(re-grade unchanged submissions), --retry-failed.

How one submission is graded (`grade_submission`, run by a pool of worker threads):

1. the submitted folder is listed and copied without following any link, skipping FIFOs and
   devices, with depth, count and size limits (flowgrade.submissions); the copy is hashed, and an
   unchanged submission already graded is skipped (idempotent);
2. the notebook is parsed, repaired and scanned (flowgrade.scan): changed grade_ids, deleted
   cells, other assignments' notebooks, unusual code -> notes for the instructor, never a score;
3. a private course directory is made under grading/.work/: a gradebook holding only the
   assignments, and the repaired notebook (no other submitted file);
4. a warm fork server forks a grader process that runs nbgrader's autograde and feedback there
   with flowgrade.preprocessor.HarnessExecute: the student's cells run in a bubblewrap sandbox
   (flowgrade.sandbox), the tests in the grader's trusted harness (flowgrade.harness);
5. the main thread alone (no concurrent sqlite writer) copies the scores into
   grading/gradebook.db, the autograded notebook into grading/autograded/, the feedback into
   grading/feedback/, and records the outcome in grading/status.json and grading/ledger.jsonl.

Outcomes: graded (score, possibly 0; scan notes attached), failed (could not be graded: score
0 and the reason). Exit status: 0 when every submission could be graded, 1 when one failed, 2 on
a usage or setup error.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
DEMO_CLASS = REPO / "tests" / "grading" / "demo_class"

# nbgrader's own remove/add of a submission makes SQLAlchemy warn; harmless
warnings.filterwarnings("ignore", message=".*not in session.*")

# Bump when grading itself changes: every submission is then graded again.
GRADER_VERSION = "4"
# Student and assignment ids become nbgrader glob patterns and path components: keep them plain.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
ERROR_RE = re.compile(r"\[(?:[^\]]*\| )?(?:ERROR|CRITICAL)\]")  # "[AutogradeApp | ERROR]"
MAX_NOTEBOOK_MB = 20
MAX_WORKDIR_MB = 512


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
        """The instructor-side folder (gradebook, status, logs, grades.csv, reports)."""
        return self.submitted.parent

    status_file = property(lambda self: self.grading / "status.json")
    ledger = property(lambda self: self.grading / "ledger.jsonl")
    grades_csv = property(lambda self: self.grading / "grades.csv")
    logs = property(lambda self: self.grading / "logs")
    reports = property(lambda self: self.grading / "reports")
    work = property(lambda self: self.grading / ".work")

    @property
    def db_path(self) -> Path:
        if not self.db_url.startswith("sqlite:///"):
            raise GradingError(f"only sqlite gradebooks are supported, not {self.db_url}")
        return Path(self.db_url[len("sqlite:///"):])

    def prepare(self) -> None:
        """Create grading/ and the folder of the sqlite gradebook (sqlite will not)."""
        for folder in (self.grading, self.submitted, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)

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
    """Environment for nbgrader run by the instructor (not for student code): the venv first
    on PATH (nbgrader calls `alembic` by name), Jupyter/IPython/matplotlib state in .cache/."""
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


# ----------------------------------------------------------------------------- submissions


@dataclass
class Limits:
    workers: int = 0  # 0: number of CPUs
    timeout: float = 300.0  # wall clock per submission, seconds
    cell_timeout: int = 60  # per cell, seconds
    cell_timeouts: dict = field(default_factory=dict)  # assignment -> per-cell seconds
    memory_mb: int = 4096  # address space of the grader process and of the kernel
    disk_mb: int = MAX_WORKDIR_MB  # what the grader may write in a submission's private folder
    executor: str = "local"  # local | dask (flowgrade.executors)
    scheduler: str = ""  # the Dask scheduler's address (executor dask)

    def cell_timeout_for(self, assignment: str) -> int:
        return int(self.cell_timeouts.get(assignment, self.cell_timeout))

    def resolved_workers(self) -> int:
        if self.workers > 0:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            return max(1, os.cpu_count() or 1)


@dataclass
class Submission:
    student: str
    assignment: str
    path: Path
    digest: str = ""
    skipped: str = ""   # what the safe copy left out, for the instructor
    problem: str = ""   # why it cannot be graded at all
    submitted_at: str = ""  # ISO UTC, from nbgrader's timestamp.txt (flowgrade.late)
    timestamp_note: str = ""

    @property
    def key(self) -> str:
        return f"{self.student}/{self.assignment}"


@dataclass
class Outcome:
    student: str
    assignment: str
    hash: str
    status: str = "failed"  # graded | failed
    score: float = 0.0  # what counts (the autograde score unless a review zeroed it)
    max_score: float | None = None
    autograde_score: float | None = None  # what nbgrader gave
    cells: dict = field(default_factory=dict)  # notebook -> {grade_id: [score, max]}
    zeroed: list = field(default_factory=list)  # grade_ids a review zeroed
    flags: list = field(default_factory=list)  # the scan's notes for the instructor
    notes: list = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    sandbox: str = ""
    graded_at: str = ""
    log: str = ""
    review: dict | None = None
    submitted_at: str = ""  # ISO UTC from timestamp.txt ('' if none); flowgrade.late

    @property
    def key(self) -> str:
        return f"{self.student}/{self.assignment}"

    @classmethod
    def from_dict(cls, data: dict) -> "Outcome":
        """An outcome from status.json (fields this version does not know are dropped)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("hash", "")
        known.setdefault("student", "?")
        known.setdefault("assignment", "?")
        return cls(**known)

    def note_text(self) -> str:
        parts = ([self.reason] if self.reason else []) + self.flags + self.notes
        if self.review:
            parts.insert(0, f"reviewed: {self.review['decision']}"
                            + (f" ({self.review['note']})" if self.review.get("note") else ""))
        text = "; ".join(parts)
        return text if len(text) <= 600 else text[:597] + "..."


def find_submissions(course: Course, assignments: list[str] | None = None,
                     students: list[str] | None = None) -> tuple[list[Submission], list]:
    """Every grading/submitted/<student>/<assignment>/ real folder (links and odd names are
    rejected, never followed), sorted by assignment, student; and the rejected entries."""
    from .submissions import list_submissions

    if not course.submitted.is_dir():
        return [], []
    found, rejected = list_submissions(course.submitted)
    subs = [Submission(f.student, f.assignment, f.path) for f in found
            if (not students or f.student in students)
            and (not assignments or f.assignment in assignments)]
    return sorted(subs, key=lambda s: (s.assignment, s.student)), rejected


def take_snapshot(course: Course, sub: Submission) -> str:
    """Copy the submission into the grader's own folder (flowgrade.submissions.snapshot); from
    here on only the copy is read. Returns the copy's report of what it skipped ('' if none)."""
    from .submissions import remove_tree, snapshot

    dest = course.work / "snapshots" / f"{sub.assignment}__{sub.student}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_tree(dest)
    snap = snapshot(sub.path, dest, trusted_root=course.submitted)
    sub.path = dest
    return snap.report() if snap.skipped or snap.truncated else ""


def _files(folder: Path) -> list[Path]:
    """Regular files of a submission (symbolic links are ignored, never followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_symlink() and p.is_file() and not name.startswith("."):
                out.append(p)
    return out


def source_digest(course: Course, assignment: str) -> str:
    h = hashlib.sha256(GRADER_VERSION.encode())
    for p in _files(course.source / assignment):
        h.update(str(p.relative_to(course.source)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def submission_digest(sub: Submission, source: str) -> str:
    """Content hash of a submission (its files, names and bytes) and of the assignment."""
    h = hashlib.sha256(source.encode())
    for p in _files(sub.path):
        h.update(str(p.relative_to(sub.path)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:32]


class AssignmentCache:
    """Per assignment: notebook names, scan info (flowgrade.scan) and source digest."""

    def __init__(self, course: Course):
        self.course = course
        self._infos: dict[str, dict] = {}
        self._digests: dict[str, str] = {}

    def digest(self, ps: str) -> str:
        if ps not in self._digests:
            self._digests[ps] = source_digest(self.course, ps)
        return self._digests[ps]

    def infos(self, ps: str) -> dict:
        if ps not in self._infos:
            import nbformat
            from .scan import AssignmentInfo

            out = {}
            for src in sorted((self.course.source / ps).glob("*.ipynb")):
                release = self.course.release / ps / src.name
                if not release.exists():
                    raise GradingError(f"{release} missing: run `python -m flowgrade generate`")
                out[src.stem] = AssignmentInfo.build(
                    ps, nbformat.read(src, as_version=4), nbformat.read(release, as_version=4))
            self._infos[ps] = out
        return self._infos[ps]


def read_notebook(path: Path):
    """(notebook, None) or (None, why it cannot be graded)."""
    import nbformat

    size = path.stat().st_size
    if size > MAX_NOTEBOOK_MB * 2**20:
        return None, f"{path.name} is larger than {MAX_NOTEBOOK_MB} MB ({size / 2**20:.0f} MB)"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"{path.name} is not UTF-8 text (byte {exc.start})"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})"
    try:
        with warnings.catch_warnings():  # duplicate cell ids: nbformat fixes them and warns
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except Exception as exc:  # nbformat's reader and validator errors
        return None, f"{path.name} is not a readable notebook: {type(exc).__name__}: " \
                     f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return nb, None


# ----------------------------------------------------------------------------- sandbox set-up

def sandbox_text() -> str:
    from .sandbox import capabilities

    return capabilities()["summary"]


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))


def make_template(course: Course) -> Path:
    """A copy of the gradebook holding the assignments only (no student, no submission): the
    starting gradebook of every private course directory."""
    course.work.mkdir(parents=True, exist_ok=True)
    template = course.work / "template.db"
    tmp = template.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(course.db_path)
    dst = sqlite3.connect(tmp)
    with dst:
        src.backup(dst)
    src.close()
    for table in ("grade", "comment", "submitted_notebook", "submitted_assignment", "student"):
        dst.execute(f"DELETE FROM {table}")
    dst.commit()
    dst.execute("VACUUM")
    dst.close()
    tmp.replace(template)
    return template


def prepare_workdir(course: Course, sub: Submission, notebooks: dict, limits: Limits,
                    template: Path) -> tuple[Path, dict, dict]:
    """Private course directory of one submission: its own gradebook (the assignments only) and
    the repaired notebooks; nothing else the student submitted. Returns (workdir, job, env)."""
    import nbformat

    course.work.mkdir(parents=True, exist_ok=True)
    work = Path(os.path.realpath(course.work)) / f"{sub.assignment}__{sub.student}"
    from .submissions import remove_tree

    remove_tree(work)
    tc = work / "course"
    sub_dir = tc / "submitted" / sub.student / sub.assignment
    home = work / "home"
    for d in [sub_dir, tc / "source" / sub.assignment, home]:
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, tc / "gradebook.db")
    for name, nb in notebooks.items():
        nbformat.write(nb, sub_dir / f"{name}.ipynb")
    job = {"course": str(tc), "student": sub.student, "assignment": sub.assignment,
           "main_config": str(course.root / "nbgrader_config.py"),
           "cell_timeout": limits.cell_timeout_for(sub.assignment),
           "memory_mb": limits.memory_mb, "cpu_seconds": int(limits.timeout) + 30,
           "result": str(work / "result.json"), "log": str(work / "grader.log")}
    _write_json(work / "job.json", job)
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin",
                                 "/bin"]),
        "LANG": os.environ.get("LANG", "C.UTF-8"), "LC_ALL": os.environ.get("LC_ALL", "C.UTF-8"),
        "HOME": str(home), "MPLBACKEND": "Agg", "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1", "FLOWLIB_PROGRESS": "0", "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
    }
    return work, job, env


def server_env(course: Course) -> dict:
    """The fork server's environment: as little of the instructor's as possible (each child
    gets its submission's own environment before it runs anything)."""
    home = course.work / "server-home"
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin",
                                     "/usr/bin", "/bin"]),
            "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1", "JUPYTER_PLATFORM_DIRS": "1",
            "MPLBACKEND": "Agg"}


def _limit_reached(t0: float, limits, work, cap: int) -> str:
    """Why a running submission must be stopped ('' while it is within its limits)."""
    if time.monotonic() - t0 > limits.timeout:
        return f"ran past the time limit of {limits.timeout:g} s"
    if _tree_size(work, cap) > cap:
        return f"wrote more than {limits.disk_mb} MB"
    return ""

def _tree_size(folder: Path, cap: int) -> int:
    from .submissions import tree_size

    return tree_size(folder, cap)


def run_sandboxed(work: Path, job: dict, env: dict, limits: Limits) -> tuple[int | None, str]:
    """Run flowgrade.grade_one (the trusted grader: nbgrader and the harness) in a process of
    its own. (exit status or None, why it was stopped)."""
    cmd = [sys.executable, "-m", "flowgrade.grade_one", str(work / "job.json")]
    with open(work / "sandbox.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        t0 = time.monotonic()
        stopped = ""
        cap = limits.disk_mb * 2**20
        while True:
            try:
                code = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            stopped = _limit_reached(t0, limits, work, cap)
            if stopped:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                return None, stopped
    return code, ""


class ForkServer:
    """One warm `grade_one.py --server` process per run; it forks a confined child per
    submission (see flowgrade.grade_one). Thread-safe: worker threads call `run`."""

    def __init__(self, course: Course, env: dict):
        course.work.mkdir(parents=True, exist_ok=True)
        self.log = open(course.work / "forkserver.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowgrade.grade_one", "--server"], cwd=course.work, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            start_new_session=True)
        self.cond = threading.Condition()
        self.pids: dict[str, int] = {}
        self.exits: dict[str, int] = {}
        self.ready = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        with self.cond:
            self.cond.wait_for(lambda: self.ready or self.proc.poll() is not None, timeout=300)
        if not self.ready:
            self.close()
            raise GradingError("the grading fork server did not start (see "
                               f"{course.work / 'forkserver.log'})")

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.cond:
                if msg.get("ready"):
                    self.ready = True
                elif "pid" in msg:
                    self.pids[msg["job"]] = msg["pid"]
                elif "exit" in msg:
                    self.exits[msg["job"]] = msg["exit"]
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, work: Path, job: dict, env: dict, limits: Limits) -> tuple[int | None, str]:
        key = str(work / "job.json")
        request = {"job": key, "env": env, "cwd": str(work), "log": str(work / "sandbox.log")}
        with self.cond:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            self.cond.wait_for(lambda: key in self.pids or not self.alive(), timeout=60)
            pid = self.pids.pop(key, None)
        if pid is None:
            return None, "the grading fork server failed"
        t0 = time.monotonic()
        cap = limits.disk_mb * 2**20
        stopped = ""
        while True:
            with self.cond:
                self.cond.wait_for(lambda: key in self.exits or not self.alive(), timeout=1.0)
                if key in self.exits:
                    return (None, stopped) if stopped else (self.exits.pop(key), "")
                if not self.alive():
                    return None, "the grading fork server died"
            if stopped:
                continue
            stopped = _limit_reached(t0, limits, work, cap)
            if stopped:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - going away anyway
            self.proc.kill()
        self.log.close()


class ZygotePool:
    """One warm kernel factory per grading slot (flowgrade.sandbox.Zygote), restarted when a
    submission killed its own; thread-safe per slot (a slot grades one submission at a time).
    The sockets live in a short private folder of the host's /tmp (a unix socket's path is
    limited to 107 bytes; the sandbox has a /tmp of its own and never sees this one)."""

    def __init__(self, folder: Path, limits: Limits):
        import tempfile

        from .sandbox import SandboxLimits

        self.folder = Path(tempfile.mkdtemp(prefix="fgz-"))
        self.limits = SandboxLimits(memory_mb=limits.memory_mb,
                                    cpu_seconds=int(limits.timeout) + 30)
        self.zygotes: dict[int, object] = {}

    def ensure(self, slot: int) -> None:
        from .sandbox import Zygote

        z = self.zygotes.get(slot)
        if z is None or not z.sweep():
            if z is not None:
                z.close()
            self.zygotes[slot] = Zygote(self.folder, slot, self.limits)

    def close(self) -> None:
        for z in self.zygotes.values():
            z.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def read_scores(db_path: Path, student: str, assignment: str) -> dict | None:
    """{notebook: {grade_id: [score, max_score]}} from a private gradebook (None if absent)."""
    if not db_path.exists():
        return None
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            """SELECT notebook.name, base_cell.name, grade.auto_score, grade.manual_score,
                      grade_cells.max_score
               FROM grade
               JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
               JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
               JOIN assignment ON submitted_assignment.assignment_id = assignment.id
               JOIN notebook ON submitted_notebook.notebook_id = notebook.id
               JOIN base_cell ON grade.cell_id = base_cell.id
               JOIN grade_cells ON grade_cells.id = base_cell.id
               WHERE submitted_assignment.student_id = ? AND assignment.name = ?""",
            (student, assignment)).fetchall()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    if not rows:
        return None
    out: dict = {}
    for nb, gid, auto, manual, max_score in rows:
        score = manual if manual is not None else (auto or 0.0)
        out.setdefault(nb, {})[gid] = [float(score), float(max_score or 0.0)]
    return out


def grade_submission(course: Course, sub: Submission, limits: Limits, cache: AssignmentCache,
                     template: Path | None, server: ForkServer | None = None, slot: int = 0
                     ) -> tuple[Outcome, Path | None]:
    """Grade one submission (in a worker thread; ``sub.path`` is the grader's own copy).
    Returns the outcome and the private folder holding its results (None when nothing ran);
    the main thread merges both."""
    from .scan import repair, resemblance, scan
    from .submissions import UnsafeTreeError, read_notebook_bytes

    t0 = time.perf_counter()
    out = Outcome(sub.student, sub.assignment, sub.digest)
    out.sandbox = sandbox_text()
    out.graded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def done(reason: str = "") -> tuple[Outcome, Path | None]:
        out.reason = reason or out.reason
        out.seconds = round(time.perf_counter() - t0, 2)
        return out, None

    if sub.problem:
        return done(sub.problem)
    if sub.skipped:
        out.notes.append(sub.skipped.replace("\n", "; ")[:600])
    if not ID_RE.match(sub.student):
        return done(f"invalid student id {sub.student!r} (letters, digits, _ . @ - only)")
    if sub.assignment not in course.assignments():
        return done(f"unknown assignment {sub.assignment!r} (not in {course.source.name}/)")
    infos = cache.infos(sub.assignment)
    expected = sorted(f"{n}.ipynb" for n in infos)
    found = sorted(p.name for p in sub.path.glob("*.ipynb") if p.is_file()
                   and not p.is_symlink())
    if not found:
        return done(f"no notebook in the submission (expected {', '.join(expected)})")
    missing = sorted(set(expected) - set(found))
    if missing:
        return done(f"missing notebook(s): {', '.join(missing)} (found {', '.join(found)})")
    repaired = {}
    for name, info in infos.items():
        try:
            read_notebook_bytes(sub.path / f"{name}.ipynb", MAX_NOTEBOOK_MB * 2**20)
        except (UnsafeTreeError, OSError) as exc:
            return done(f"{name}.ipynb cannot be read: {exc}"[:300])
        nb, problem = read_notebook(sub.path / f"{name}.ipynb")
        if problem:
            return done(problem)
        likeness = {}
        for other in course.assignments():
            try:
                likeness[other] = max(resemblance(nb, i) for i in cache.infos(other).values())
            except GradingError:  # its student version is not generated: cannot compare
                pass
        best = max(likeness, key=lambda k: (likeness[k], k == sub.assignment))
        nb, notes, flags = repair(nb, info)
        if best != sub.assignment and likeness[best] > likeness[sub.assignment] and not flags:
            flags.append(f"looks like a notebook of {best} ({likeness[best]} of its read-only "
                         f"cells, {likeness[sub.assignment]} of {sub.assignment}'s): not a "
                         f"notebook of {sub.assignment}")
        if flags:  # another assignment's notebook: what the repair did to it is noise
            notes = []
        out.notes += notes
        out.flags += flags
        findings = scan(nb, info)
        out.flags += [f"scan: {f}" for f in findings[:6]]
        if len(findings) > 6:
            out.flags.append(f"... and {len(findings) - 6} more findings")
        repaired[name] = nb
    if template is None:
        return done("no gradebook template (internal error)")

    work, job, env = prepare_workdir(course, sub, repaired, limits, template)
    env["FLOWGRADE_SLOT"] = str(slot)
    from .sandbox import slot_uid

    env["FLOWGRADE_UID_BASE"] = str(slot_uid(0))
    zygotes = os.environ.get("FLOWGRADE_ZYGOTES_DIR")
    if zygotes and (Path(zygotes) / f"slot-{slot}.sock").exists():
        env["FLOWGRADE_ZYGOTES"] = zygotes
    if server is not None:
        code, stopped = server.run(work, job, env, limits)
    else:
        code, stopped = run_sandboxed(work, job, env, limits)
    log = course.logs / f"autograde__{sub.assignment}__{sub.student}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    text = ""
    for part in ("grader.log", "sandbox.log"):
        p = work / part
        if p.exists():
            text += f"===== {part}\n" + p.read_bytes()[-200_000:].decode("utf-8", "replace")
    log.write_text(text)
    out.log = str(log.relative_to(course.root))
    try:
        result = json.loads((work / "result.json").read_text())
    except (OSError, ValueError):
        result = {}
    if stopped:
        return done(f"{stopped}; nothing graded" + (" (see the log)" if text else ""))[0], work
    if result.get("autograde") != "ok":
        why = result.get("autograde") or f"the grader process exited {code}"
        return done(f"nbgrader could not grade it: {error_lines(text) if text else why}")[0], \
            work
    cells = read_scores(work / "course" / "gradebook.db", sub.student, sub.assignment)
    if cells is None:
        return done("nbgrader produced no scores")[0], work
    out.cells = cells
    out.max_score = sum(m for nb in cells.values() for _, m in nb.values())
    out.autograde_score = sum(s for nb in cells.values() for s, _ in nb.values())
    if result.get("feedback") != "ok":
        out.notes.append(f"no feedback: {result.get('feedback')}")
    # the scan's findings are notes for the instructor: they never change a score
    out.status = "graded"
    out.score = out.autograde_score
    out.seconds = round(time.perf_counter() - t0, 2)
    return out, work


# ----------------------------------------------------------------------------- merging


def load_status(course: Course) -> dict[str, dict]:
    try:
        return json.loads(course.status_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_status(course: Course, status: dict[str, dict]) -> None:
    tmp = course.status_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
    tmp.replace(course.status_file)


def _remove(dest: Path) -> None:
    """Remove a <student>/<assignment> folder, and the student's folder if left empty."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        dest.parent.rmdir()
    except OSError:  # not empty, or not there
        pass


def _replace_files(src: Path | None, dest: Path, pattern: str) -> None:
    _remove(dest)
    if src is None or not src.is_dir():
        return
    files = [p for p in src.glob(pattern) if p.is_file() and not p.is_symlink()]
    if files:
        dest.mkdir(parents=True, exist_ok=True)
        for p in files:
            shutil.copy(p, dest / p.name)


def write_gradebook(gb, out: Outcome) -> None:
    """Put one outcome into the main gradebook (the main thread is its only writer)."""
    from nbgrader.api import MissingEntry

    gb.update_or_create_student(out.student)
    try:
        gb.remove_submission(out.assignment, out.student)
    except MissingEntry:
        pass
    if out.status == "failed":
        return
    from .late import gradebook_time

    gb.add_submission(out.assignment, out.student, timestamp=gradebook_time(out.submitted_at))
    zeroed = set(out.zeroed)
    for nb_name, cells in out.cells.items():
        for gid, (score, _) in cells.items():
            grade = gb.find_grade(gid, nb_name, out.assignment, out.student)
            grade.auto_score = 0.0 if gid in zeroed else score
            grade.manual_score = None
            grade.needs_manual_grade = False
        snb = gb.find_submission_notebook(nb_name, out.assignment, out.student)
        snb.flagged = bool(out.flags) and not out.review
    gb.db.commit()


def merge(course: Course, gb, out: Outcome, work: Path | None, status: dict) -> None:
    """Record one outcome: gradebook, autograded notebook, feedback, status, ledger."""
    previous = status.get(out.key)
    if previous and previous.get("review") and previous.get("hash") == out.hash \
            and out.status == "graded":
        apply_review(out, previous["review"])
    write_gradebook(gb, out)
    rel = Path(out.student) / out.assignment
    tc = work / "course" if work else None
    names = "*.ipynb"
    _replace_files(tc / "autograded" / rel if tc and out.status != "failed" else None,
                   course.autograded / rel, names)
    fb = tc / "feedback" / rel if tc and out.status != "failed" else None
    _replace_files(fb, course.feedback / rel, "*.html")
    status[out.key] = asdict(out)
    save_status(course, status)
    with open(course.ledger, "a") as fh:
        fh.write(json.dumps({"key": out.key, "hash": out.hash, "status": out.status,
                             "score": out.score, "at": out.graded_at}) + "\n")
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def apply_review(out: Outcome, review: dict) -> None:
    """The instructor's decision after reading a submission: accept (the full autograde score,
    which the scan never changed) or zero (every part 0)."""
    out.review = review
    if review["decision"] == "accept":
        out.score = out.autograde_score or 0.0
        out.zeroed = []
    else:
        out.score = 0.0
        out.zeroed = [g for cells in out.cells.values() for g in cells]
        for cells in out.cells.values():
            for g in cells:
                cells[g] = [0.0, cells[g][1]]
    out.status = "graded"


# ----------------------------------------------------------------------------- autograde


@dataclass
class RunSummary:
    results: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1

    def count(self, what: str) -> list:
        if what == "zero":
            return [o for o in self.results if o.status == "graded" and o.score == 0]
        if what == "graded":
            return [o for o in self.results if o.status == "graded" and o.score > 0]
        if what == "noted":
            return [o for o in self.results if o.status == "graded" and o.flags]
        return [o for o in self.results if o.status == what]


def autograde(course: Course, assignments: list[str] | None = None,
              students: list[str] | None = None, limits: Limits | None = None,
              force: bool = False, retry_failed: bool = False, quiet: bool = False
              ) -> RunSummary:
    """Grade every (changed) submission, `limits.workers` at a time; merge serially. One run
    at a time per course (a lock file in grading/)."""
    limits = limits or Limits()
    course.prepare()
    lock = open(course.grading / ".lock", "w")
    try:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise GradingError(f"another autograde is running on {course.grading} (one at a time)")
    try:
        return _autograde(course, assignments, students, limits, force, retry_failed, quiet)
    finally:
        lock.close()


def _autograde(course: Course, assignments, students, limits: Limits, force: bool,
               retry_failed: bool, quiet: bool) -> RunSummary:
    from tqdm import tqdm

    t0 = time.perf_counter()
    summary = RunSummary(workers=limits.resolved_workers())
    subs, rejected = find_submissions(course, assignments, students)
    for r in rejected:
        print(f"autograde: not graded: {r.path}: {r.reason}", flush=True)
    if not subs:
        where = f"{course.submitted.relative_to(course.root)}/"
        only = " ".join(f"{flag} {v}" for flag, vs in (("-a", assignments), ("-s", students))
                        for v in vs or [])
        print(f"autograde: no submission under {where}" + (f" matching {only}" if only else ""),
              flush=True)
        return summary
    cache = AssignmentCache(course)
    status = load_status(course)
    todo = []
    for sub in subs:
        known = sub.assignment in course.assignments()
        try:
            sub.skipped = take_snapshot(course, sub)
        except Exception as exc:  # noqa: BLE001 - an unreadable tree fails itself only
            sub.problem = f"the submitted folder cannot be read safely: {exc}"[:300]
            sub.digest = "unreadable"
            todo.append(sub)
            continue
        sub.digest = submission_digest(sub, cache.digest(sub.assignment) if known else "")
        from .late import course_timezone, read_timestamp

        sub.submitted_at, sub.timestamp_note = read_timestamp(sub.path,
                                                              course_timezone(course.root))
        last = status.get(sub.key)
        same = last and last.get("hash") == sub.digest and not force and \
            not (retry_failed and last.get("status") == "failed")
        (summary.unchanged if same else todo).append(sub)
    with course.gradebook() as gb:
        names = {a.name for a in gb.assignments}
    needed = {s.assignment for s in todo if s.assignment in course.assignments()}
    if needed - names:
        raise GradingError(f"assignment(s) {', '.join(sorted(needed - names))} not in the "
                           "gradebook: run `python -m flowgrade generate` first")
    template = make_template(course) if todo else None
    server = None
    if todo and limits.executor == "dask":  # the jobs run on a Dask cluster (flowgrade.executors)
        from .executors import DaskRunner

        try:
            server = DaskRunner(course, limits.scheduler)
        except (OSError, ValueError) as exc:
            raise GradingError(f"cannot reach the Dask scheduler {limits.scheduler!r}: {exc}")
        summary.workers = limits.workers if limits.workers > 0 else server.threads()
    if not quiet:
        print(f"autograde: {len(todo)} submission(s) to grade, {len(summary.unchanged)} "
              f"unchanged (skipped); {summary.workers} worker(s); limits: "
              f"{limits.timeout:g} s per submission, {limits.cell_timeout} s per cell"
              + "".join(f" ({v} s for {k})" for k, v in sorted(limits.cell_timeouts.items()))
              + ", "
              f"{limits.memory_mb} MB per process; sandbox: {sandbox_text()}", flush=True)
    width = len(str(len(todo)))
    stop = threading.Event()

    import queue

    slots: queue.Queue = queue.Queue()
    for k in range(summary.workers):  # one sandbox uid per concurrent grader (process limits)
        slots.put(k)

    def work(sub: Submission):
        if stop.is_set():
            return Outcome(sub.student, sub.assignment, sub.digest,
                           reason="interrupted before grading"), None
        slot = slots.get()
        try:
            if zygotes is not None:
                zygotes.ensure(slot)
            return grade_submission(course, sub, limits, cache, template, server, slot)
        except Exception as exc:  # a bug or a setup problem: that submission fails, not the run
            out = Outcome(sub.student, sub.assignment, sub.digest,
                          reason=f"grader error: {type(exc).__name__}: {exc}"[:500])
            return out, None
        finally:
            slots.put(slot)

    if server is None and todo and os.environ.get("FLOWS_FORKSERVER", "1") != "0":
        server = ForkServer(course, server_env(course))
    zygotes = None
    if todo and os.environ.get("FLOWS_ZYGOTES", "1") != "0" and shutil.which("bwrap") \
            and limits.executor != "dask":
        zygotes = ZygotePool(course.work / "zygotes", limits)
        os.environ["FLOWGRADE_ZYGOTES_DIR"] = str(zygotes.folder)
    bar = tqdm(total=len(todo), desc="autograde", unit="sub", file=sys.stderr,
               disable=quiet or not todo, dynamic_ncols=True)
    done = 0
    try:
        with course.gradebook() as gb, cf.ThreadPoolExecutor(summary.workers) as pool:
            futures = {pool.submit(work, sub): sub for sub in todo}
            try:
                for fut in cf.as_completed(futures):
                    out, wdir = fut.result()
                    sub = futures[fut]
                    out.submitted_at = sub.submitted_at
                    if sub.timestamp_note:
                        out.notes.append(sub.timestamp_note)
                    merge(course, gb, out, wdir, status)
                    summary.results.append(out)
                    done += 1
                    bar.update(1)
                    if not quiet:
                        score = (f"{out.score:g} / {out.max_score:g}" if out.max_score is not None
                                 else "-")
                        extra = f": {out.note_text()}" if out.status != "graded" else ""
                        bar.write(f"[{done:>{width}}/{len(todo)}] {out.assignment} "
                                  f"{out.student:<16} {score:>9}  {out.status}"
                                  f" ({out.seconds:.1f} s){extra}", file=sys.stdout)
            except KeyboardInterrupt:
                stop.set()
                raise
    finally:
        bar.close()
        if server is not None:
            server.close()
        if zygotes is not None:
            zygotes.close()
    summary.seconds = round(time.perf_counter() - t0, 2)
    shutil.rmtree(course.work, ignore_errors=True)
    return summary


def print_summary(summary: RunSummary) -> None:
    n = len(summary.results)
    print(f"autograde: {n} submission(s) graded in {summary.seconds:.1f} s with "
          f"{summary.workers} worker(s); {len(summary.unchanged)} unchanged, skipped "
          "(--force to grade them again)")
    for what, text in (("graded", "graded (score > 0)"), ("zero", "graded, score 0"),
                       ("noted", "with notes of the scan (scores unchanged)"),
                       ("failed", "failed to run")):
        print(f"  {len(summary.count(what)):>4}  {text}")
    for what in ("noted", "failed"):
        rows = summary.count(what)
        if rows:
            print(f"{what}:")
            for o in sorted(rows, key=lambda o: o.key):
                print(f"  {o.key}: {o.note_text()}")
    if summary.count("noted"):
        print("after reading a noted submission: python -m flowgrade review STUDENT "
              "ASSIGNMENT accept|zero [--note TEXT]")


# ----------------------------------------------------------------------------- feedback


def feedback(course: Course, assignments: list[str] | None = None,
             students: list[str] | None = None) -> list[str]:
    """Re-make HTML feedback from the main gradebook (after manual grading): nbgrader's
    generate_feedback (sanitised pages of notebooks that hold no hidden test).
    Returns the problems found (empty when all went well)."""
    course.prepare()
    status = load_status(course)
    problems = []
    for ps in assignments or course.assignments():
        graded = sorted(p.parent.name for p in course.autograded.glob(f"*/{ps}")
                        if p.is_dir() and (not students or p.parent.name in students))
        for s in graded:
            log = course.logs / f"feedback__{ps}__{s}.log"
            proc = run_nbgrader(course, ["generate_feedback", ps, "--student", s, "--force"],
                                log=log)
            made = list((course.feedback / s / ps).glob("*.html"))
            if proc.returncode != 0 or not made:
                problems.append(f"feedback {s}/{ps}: {error_lines(proc.stdout)} (log: {log})")
            for extra in (course.feedback / s / ps).glob("*"):
                if extra.suffix != ".html":  # only the HTML goes to the student
                    shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        print(f"feedback {ps}: {len(graded)} student(s)", flush=True)
    return problems


# ----------------------------------------------------------------------------- export


CSV_FIELDS = ["student", "assignment", "score", "max_score", "status", "note",
              "autograde_score"]


def export(course: Course) -> list[dict]:
    """grading/grades.csv: one row per student x assignment. status: graded, failed (0, the
    reason in note), missing (nothing submitted) or ungraded (submitted, not graded yet).
    Text fields are escaped against spreadsheet formulas (flowgrade.sanitize.csv_field)."""
    from . import late, lms
    from .sanitize import csv_field

    course.prepare()
    try:  # the late policy (grading_policy.json) and the LMS roster: the instructor's files
        policy = late.load_policy(course.root)
        lms.read_roster(course.grading / lms.ROSTER_FILE)
    except (late.PolicyError, lms.RosterError) as exc:
        raise GradingError(str(exc)) from None
    status = load_status(course)
    subs = {s.key: s for s in find_submissions(course)[0]}
    assignments = course.assignments()
    max_scores = {}
    with course.gradebook() as gb:
        late.sync_gradebook(gb, policy)  # nbgrader's duedate and extension fields
        for a in gb.assignments:
            max_scores[a.name] = float(a.max_score)
        gb_students = {s.id for s in gb.students}
    students = sorted(gb_students | {s.student for s in subs.values()}
                      | {v["student"] for v in status.values()})
    rows = []
    for ps in assignments:
        for student in students:
            key = f"{student}/{ps}"
            row = {"student": student, "assignment": ps, "score": 0.0,
                   "max_score": max_scores.get(ps), "status": "missing", "note": "",
                   "autograde_score": None}
            last = status.get(key)
            sub = subs.get(key)
            if sub is not None and not last:
                row["status"] = "ungraded"
                row["note"] = "not graded yet"
            elif last and sub is not None:
                out = Outcome.from_dict(last)
                row.update(score=out.score, status=out.status, note=out.note_text(),
                           autograde_score=out.autograde_score)
                if out.max_score is not None:
                    row["max_score"] = out.max_score
            rows.append(row)
    late.apply(policy, rows, status)  # submitted_at, days_late, late_penalty; score after it
    tmp = course.grades_csv.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS + late.FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "student": csv_field(row["student"]),
                             "assignment": csv_field(row["assignment"]),
                             "status": csv_field(row["status"]), "note": csv_field(row["note"]),
                             "score": f"{row['score']:g}",
                             "max_score": "" if row["max_score"] is None
                             else f"{row['max_score']:g}",
                             "autograde_score": "" if row["autograde_score"] is None
                             else f"{row['autograde_score']:g}",
                             "submitted_at": csv_field(row["submitted_at"]),
                             "late_penalty": "" if row["late_penalty"] == ""
                             else f"{row['late_penalty']:g}"})
    tmp.replace(course.grades_csv)
    for warning in lms.write(course.grading, rows)[1]:  # canvas.csv, moodle.csv
        print(f"export: {warning}", file=sys.stderr)
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
        note = r["note"]
        note = f"  ({note[:120]}{'...' if len(note) > 120 else ''})" if note else ""
        print(f"{r['student']:<{ws}}  {r['assignment']:<{wa}}  {score:>13}  {r['status']}{note}")


# ----------------------------------------------------------------------------- review


def review(course: Course, student: str, assignment: str, decision: str, note: str = "") -> int:
    """Settle a submission the scan noted: accept its autograde score, or zero every part."""
    status = load_status(course)
    key = f"{student}/{assignment}"
    if key not in status:
        raise GradingError(f"{key} has not been graded")
    out = Outcome.from_dict(status[key])
    if out.status != "graded":
        raise GradingError(f"{key} is {out.status}: nothing to review")
    if out.review:
        raise GradingError(f"{key} was already reviewed ({out.review['decision']}); "
                           "`autograde --force -s` grades it again")
    apply_review(out, {"decision": decision, "note": note,
                       "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    with course.gradebook() as gb:
        write_gradebook(gb, out)
    status[key] = asdict(out)
    save_status(course, status)
    # the feedback is made again from the gradebook, so that it shows the settled scores
    problems = feedback(course, [assignment], [student])
    export(course)
    print(f"{key}: {decision} -> {out.score:g} / {out.max_score:g}")
    for p in problems:
        print(f"PROBLEM {p}")
    return 1 if problems else 0


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


def run_all(course: Course, assignments=None, students=None, demo: bool = True,
            limits: Limits | None = None, force: bool = False, retry_failed: bool = False
            ) -> int:
    from . import report as grading_report

    t0 = time.perf_counter()
    generate(course)
    if demo:
        n = copy_demo_class(course)
        if n:
            print(f"{course.submitted.relative_to(course.root)}/ was empty: copied the demo "
                  f"class ({n} students) from {DEMO_CLASS.relative_to(REPO)}/", flush=True)
    summary = autograde(course, assignments, students, limits, force, retry_failed)
    rows = export(course)
    written = grading_report.write_reports(course, rows, load_status(course), summary)
    print()
    print_table(rows)
    print()
    print_summary(summary)
    print(f"grades:   {course.grades_csv}")
    print(f"feedback: {course.feedback}/<student>/<assignment>/")
    print(f"reports:  {', '.join(str(p) for p in written)}")
    print(f"{time.perf_counter() - t0:.1f} s in all")
    return 1 if summary.count("failed") else 0


# ----------------------------------------------------------------------------- CLI


def _limits(args) -> Limits:
    default, per = Limits().cell_timeout, {}
    for item in args.cell_timeout or []:
        ps, _, value = item.rpartition("=")
        try:
            seconds = int(value)
        except ValueError:
            raise GradingError(f"--cell-timeout {item!r}: expected SECONDS or ASSIGNMENT=SECONDS")
        if ps:
            per[ps] = seconds
        else:
            default = seconds
    if args.executor == "dask" and not args.scheduler:
        raise GradingError("--executor dask needs --scheduler ADDRESS (tcp://host:8786)")
    return Limits(workers=args.workers, timeout=args.timeout, cell_timeout=default,
                  cell_timeouts=per,
                  memory_mb=args.memory, executor=args.executor, scheduler=args.scheduler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO,
                        help="course root holding nbgrader_config.py (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="solutions/ -> exercises/ (always --force: idempotent)")
    for name, text in [("autograde", "grade grading/submitted/<student>/<ps>/"),
                       ("feedback", "HTML feedback again, from the gradebook"),
                       ("all", "generate, demo class if nothing submitted, autograde, "
                               "export, report")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("-a", "--assignment", action="append", help="only this assignment")
        p.add_argument("-s", "--student", action="append", help="only this student")
        if name in ("autograde", "all"):
            d = Limits()
            p.add_argument("--workers", "-j", type=int, default=0,
                           help="submissions graded at once (default: number of CPUs)")
            p.add_argument("--timeout", type=float, default=d.timeout,
                           help="wall clock seconds per submission (default: %(default)s)")
            p.add_argument("--cell-timeout", action="append", metavar="[PS=]SECONDS",
                           help=f"seconds per notebook cell (default: {d.cell_timeout}); "
                                "PS=SECONDS for one assignment (repeatable)")
            p.add_argument("--memory", type=int, default=d.memory_mb,
                           help="MB of address space per process (default: %(default)s)")
            p.add_argument("--force", action="store_true",
                           help="grade unchanged submissions again")
            p.add_argument("--retry-failed", action="store_true",
                           help="grade unchanged submissions that failed again")
            p.add_argument("--executor", choices=["local", "dask"], default="local",
                           help="where grading jobs run: this machine, or a Dask cluster")
            p.add_argument("--scheduler", default="", metavar="ADDRESS",
                           help="the Dask scheduler (--executor dask), e.g. tcp://host:8786")
        if name == "all":
            p.add_argument("--no-demo", action="store_true",
                           help="do not copy the demo class into an empty grading/submitted/")
    sub.add_parser("export", help="write grading/grades.csv")
    sub.add_parser("report", help="write grading/reports/")
    sub.add_parser("sandbox", help="print what confinement this machine allows")
    p = sub.add_parser("review", help="settle a flagged submission")
    p.add_argument("student")
    p.add_argument("assignment")
    p.add_argument("decision", choices=["accept", "zero"])
    p.add_argument("--note", default="")
    args = parser.parse_args(argv)

    os.environ.update(tool_env(args.root.resolve()))  # for in-process Gradebook (alembic)
    try:
        course = Course(args.root)
        if args.command == "generate":
            generate(course)
            return 0
        if args.command == "sandbox":
            print(f"sandbox: {sandbox_text()}")
            return 0
        if args.command == "autograde":
            summary = autograde(course, args.assignment, args.student, _limits(args),
                                args.force, args.retry_failed)
            print_summary(summary)
            return 1 if summary.count("failed") else 0
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
        if args.command == "report":
            from . import report as grading_report

            rows = export(course)
            for p in grading_report.write_reports(course, rows, load_status(course)):
                print(f"wrote {p}")
            return 0
        if args.command == "review":
            return review(course, args.student, args.assignment, args.decision, args.note)
        return run_all(course, args.assignment, args.student, demo=not args.no_demo,
                       limits=_limits(args), force=args.force, retry_failed=args.retry_failed)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
