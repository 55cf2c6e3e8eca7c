"""Where a submission's grading job runs: this machine (the driver's fork server, the default)
or a Dask distributed cluster (`python -m flowgrade autograde --executor dask --scheduler
tcp://HOST:8786`).

A grading job is self-contained. In: the job description (student, assignment, limits), the
repaired notebooks (the only submitted bytes: nothing else of the submission), the gradebook
template of that one assignment (its cells and tests, no student, no other assignment) and the
course's nbgrader_config.py. Out: the exit status, why it was stopped, the private gradebook
holding this submission's scores, the autograded notebook, the feedback page and the logs. The
driver alone snapshots, scans and repairs before, and merges after (gradebook.db, status.json,
ledger.jsonl, autograded/, feedback/), exactly as for a local job: `DaskRunner.run` has the
signature of `ForkServer.run`, so `grade_submission` does not know where its job ran.

On a worker, `grade_job` writes the job into a private folder, takes a sandbox slot of that
machine (a file lock: the sandbox uid 61000 + slot is unique per machine, whatever the number
of worker processes), and runs it with a warm fork server of its own process
(flowgrade.grade_one --server), so the student's code runs in the same bubblewrap sandbox, with
the same limits, on whatever machine runs the job. A worker must be trusted like the grader:
it sees one assignment's hidden tests and the submissions it grades, and what it returns
becomes grades. Workers need the course's environment (this repository's flowgrade and
flowlib, the venv, bubblewrap and util-linux setpriv).

Dask reruns a task whose worker died; the driver merges each submission once, when its
future's result arrives, so a rerun never counts twice.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

MAX_RESULT_FILE = 64 * 2**20  # an output file larger than this does not come back
LOG_TAIL = 200_000
OUTPUTS = ("result.json", "grader.log", "sandbox.log", "course/gradebook.db")
OUTPUT_DIRS = ("course/autograded", "course/feedback")


# ----------------------------------------------------------------------------- the driver side


def assignment_template(template: Path, assignment: str, course_id: str = "") -> bytes:
    """The gradebook template reduced to one assignment (a job carries no other assignment's
    tests): nbgrader's own remove_assignment on a copy."""
    from nbgrader.api import Gradebook

    with tempfile.TemporaryDirectory(prefix="flowgrade-template-") as tmp:
        path = Path(tmp) / "gradebook.db"
        src = sqlite3.connect(template)
        dst = sqlite3.connect(path)
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
        with Gradebook(f"sqlite:///{path}", course_id or "default_course") as gb:
            for a in list(gb.assignments):
                if a.name != assignment:
                    gb.remove_assignment(a.name)
        con = sqlite3.connect(path)
        con.execute("VACUUM")
        con.close()
        return path.read_bytes()


class DaskRunner:
    """Runs grading jobs on a Dask cluster; thread-safe (the driver's worker threads call
    `run`, one job each)."""

    def __init__(self, course, scheduler: str, timeout: float = 30):
        from distributed import Client

        self.course = course
        self.client = Client(scheduler, timeout=timeout, set_as_default=False)
        self.config = (course.root / "nbgrader_config.py").read_bytes()
        self._templates: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def threads(self) -> int:
        """Jobs the cluster runs at once (its worker threads)."""
        return max(1, sum(self.client.nthreads().values()))

    def _template(self, assignment: str) -> bytes:
        with self._lock:
            if assignment not in self._templates:
                self._templates[assignment] = assignment_template(
                    self.course.work / "template.db", assignment, self.course.course_id)
            return self._templates[assignment]

    def payload(self, work: Path, job: dict, env: dict, limits) -> dict:
        sub_dir = Path(job["course"]) / "submitted" / job["student"] / job["assignment"]
        files = {"nbgrader_config.py": self.config,
                 "course/gradebook.db": self._template(job["assignment"])}
        for nb in sorted(sub_dir.glob("*.ipynb")):
            files[f"course/submitted/{job['student']}/{job['assignment']}/{nb.name}"] = \
                nb.read_bytes()
        keep = {k: job[k] for k in ("student", "assignment", "cell_timeout", "memory_mb",
                                    "cpu_seconds")}
        env = {k: v for k, v in env.items()  # the worker sets its own machine's
               if k not in ("HOME", "PATH", "FLOWGRADE_SLOT", "FLOWGRADE_ZYGOTES",
                            "FLOWGRADE_UID_BASE")}
        return {"job": keep, "files": files, "env": env,
                "limits": {"timeout": float(limits.timeout), "disk_mb": int(limits.disk_mb)}}

    def run(self, work: Path, job: dict, env: dict, limits) -> tuple[int | None, str]:
        payload = self.payload(work, job, env, limits)
        key = f"flowgrade-{job['assignment']}-{job['student']}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(grade_job, payload, key=key, pure=False)
        try:
            # the worker enforces the limits; this only guards against a lost cluster
            result = future.result(timeout=4 * float(limits.timeout) + 600)
        except Exception as exc:  # noqa: BLE001 - KilledWorker, timeouts, lost scheduler
            return None, f"the dask job failed: {type(exc).__name__}: {exc}"[:300]
        finally:
            future.release()
        unpack(work, result.get("files", {}))
        stopped = result.get("stopped") or ""
        return (None, stopped) if stopped else (result.get("code"), "")

    def close(self) -> None:
        self.client.close()


def unpack(work: Path, files: dict) -> None:
    """Write a job's outputs into the driver's private folder of that submission (the paths
    come from grade_job, checked anyway: plain relative paths under OUTPUTS/OUTPUT_DIRS)."""
    for rel, data in files.items():
        parts = rel.split("/")
        if ".." in parts or "" in parts or rel.startswith("/") or not (
                rel in OUTPUTS or any(rel.startswith(d + "/") for d in OUTPUT_DIRS)):
            continue
        dest = Path(work) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


# ----------------------------------------------------------------------------- the worker side

_server = None
_server_lock = threading.Lock()


def _base() -> Path:
    base = Path(os.environ.get("FLOWGRADE_WORKER_DIR") or tempfile.gettempdir()) / \
        f"flowgrade-worker-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _clean_stale(base: Path) -> None:
    """Remove the folders of worker processes that are gone (a worker killed by its nanny
    runs no clean-up): server-PID, zygotes-PID, job-PID-*, and stale-PID-* (a clean-up that its
    own worker did not finish).

    Every worker process of the machine runs this when it starts, so two may find the same
    stale folder at once: each first claims it by renaming it to stale-<its PID>-<name>, which
    only one rename can do, and removes only what it claimed. A clean-up never fails a job."""
    from .submissions import remove_tree

    for d in base.iterdir():
        kind, _, rest = d.name.partition("-")
        pid = rest.split("-")[0]
        if kind not in ("server", "zygotes", "job", "stale") or not pid.isdigit() \
                or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                      # its worker is alive: its folder is in use
        except ProcessLookupError:
            pass
        except OSError:
            continue
        claimed = base / f"stale-{os.getpid()}-{d.name}"
        try:
            os.rename(d, claimed)         # atomic: the other cleaners now miss it
            remove_tree(claimed)
        except OSError:
            continue


def _fork_server():
    """This worker process's warm fork server (started on its first job), or None when
    FLOWS_FORKSERVER=0 (a fresh grader process per job)."""
    global _server
    if os.environ.get("FLOWS_FORKSERVER", "1") == "0":
        return None
    from .driver import ForkServer, server_env

    with _server_lock:
        if _server is None:
            _clean_stale(_base())
        if _server is None or not _server.alive():
            place = SimpleNamespace(work=_base() / f"server-{os.getpid()}")
            _server = ForkServer(place, server_env(place))
        return _server


_thread = threading.local()
_zygotes = None


def _slot(limit: int = 256) -> int:
    """This thread's sandbox slot on this machine: the first k whose lock file it could lock,
    held while the thread lives (the lock goes with the process), so that the uid 61000 + k
    and the slot's warm kernel factory serve one grader at a time, whatever the number of
    worker processes on the machine."""
    if getattr(_thread, "slot", None) is not None:
        return _thread.slot
    folder = _base() / "slots"
    folder.mkdir(exist_ok=True)
    while True:
        for k in range(limit):
            fh = open(folder / f"{k}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            _thread.slot, _thread.lock = k, fh
            return k
        time.sleep(0.5)


def _zygote_env(slot: int, limits) -> dict:
    """{"FLOWGRADE_ZYGOTES": folder} when this process keeps a warm kernel factory for the
    slot (flowgrade.sandbox.Zygote, as the local executor does), else {}."""
    global _zygotes
    if os.environ.get("FLOWS_ZYGOTES", "1") == "0" or not shutil.which("bwrap"):
        return {}
    try:
        from .driver import ZygotePool

        with _server_lock:
            if _zygotes is None:
                _zygotes = ZygotePool(_base() / f"zygotes-{os.getpid()}", limits)
        _zygotes.ensure(slot)
    except Exception:  # noqa: BLE001 - no factory: the kernel starts cold, still sandboxed
        return {}
    folder = _zygotes.folder
    return {"FLOWGRADE_ZYGOTES": str(folder)} if (folder / f"slot-{slot}.sock").exists() else {}


def _outputs(work: Path) -> dict:
    files = {}
    for rel in OUTPUTS:
        p = work / rel
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            files[rel] = data[-LOG_TAIL:] if rel.endswith(".log") else data
    for d in OUTPUT_DIRS:
        root = work / d
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file() or p.stat().st_size > MAX_RESULT_FILE:
                    continue
                files[str(p.relative_to(work))] = p.read_bytes()
    return files


def grade_job(payload: dict) -> dict:
    """Grade one job on this machine (a Dask task; see the module docstring)."""
    from .driver import Limits, run_sandboxed
    from .sandbox import capabilities, slot_uid
    from .submissions import remove_tree

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"job-{os.getpid()}-", dir=_base()))
    try:
        for rel, data in payload["files"].items():
            parts = rel.split("/")
            if ".." in parts or "" in parts or rel.startswith("/"):
                raise ValueError(f"bad path in a grading job: {rel!r}")
            dest = work / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        job = dict(payload["job"])
        for d in (work / "course" / "source" / job["assignment"], work / "home"):
            d.mkdir(parents=True, exist_ok=True)
        job.update(course=str(work / "course"), main_config=str(work / "nbgrader_config.py"),
                   result=str(work / "result.json"), log=str(work / "grader.log"))
        (work / "job.json").write_text(json.dumps(job, indent=1))
        env = dict(payload["env"])
        env["HOME"] = str(work / "home")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin",
                                       "/usr/bin", "/bin"])
        limits = Limits(timeout=payload["limits"]["timeout"],
                        disk_mb=payload["limits"]["disk_mb"], memory_mb=int(job["memory_mb"]))
        slot = _slot()
        env["FLOWGRADE_SLOT"] = str(slot)
        env["FLOWGRADE_UID_BASE"] = str(slot_uid(0))  # this worker's own uids
        env.update(_zygote_env(slot, limits))
        server = _fork_server()
        if server is not None:
            code, stopped = server.run(work, job, env, limits)
        else:
            code, stopped = run_sandboxed(work, job, env, limits)
        return {"code": code, "stopped": stopped, "files": _outputs(work),
                "host": socket.gethostname(), "pid": os.getpid(),
                "sandbox": capabilities()["summary"],
                "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        remove_tree(work)
