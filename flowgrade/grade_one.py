#!/usr/bin/env python3
"""Autograde one submission and write its feedback, in a private course directory.

Started by flowgrade.driver, one process per submission: `python -m flowgrade.grade_one
JOB.json`. The job names the private course directory (its own gradebook, holding only the
assignments, and the submission), the student, the assignment and the limits. This process is
the trusted side: nbgrader and the harness that runs the tests (flowgrade.preprocessor); the
student's code runs only in the bubblewrap-sandboxed kernel the harness starts.

Writes JOB["result"]: {"autograde": "ok" | error, "feedback": "ok" | error, "seconds": ...};
nbgrader's log goes to JOB["log"]. Exit status 0 when both steps succeeded.

`python -m flowgrade.grade_one --server` is a fork server: it imports nbgrader, nbconvert and
torch once, then reads one request per line on stdin ({"job", "env", "cwd", "log"}) and forks a
child per request that grades that job; it answers {"job", "pid"} when the child started and
{"job", "exit"} when it ended. Forking a warm process saves each submission the seconds of CPU
those imports cost.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path


def configure(job: dict):
    """The course's nbgrader configuration (HarnessExecute and the sanitised feedback
    exporter come from it) pointed at the private course directory of one submission."""
    from traitlets.config.loader import PyFileConfigLoader

    main = Path(job["main_config"])
    cfg = PyFileConfigLoader(main.name, path=str(main.parent)).load_config()
    course = job["course"]
    cd = cfg.CourseDirectory
    cd.root = course
    cd.source_directory = "source"
    cd.release_directory = "release"
    cd.submitted_directory = "submitted"
    cd.autograded_directory = "autograded"
    cd.feedback_directory = "feedback"
    cd.db_url = "sqlite:///" + os.path.join(course, "gradebook.db")
    cfg.HarnessExecute.timeout = int(job["cell_timeout"])
    cfg.HarnessExecute.memory_mb = int(job["memory_mb"])
    cfg.HarnessExecute.cpu_seconds = int(job["cpu_seconds"])
    return cfg


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    # the grader holds copies of what the student's code returns: bounded, so that one
    # submission cannot take the machine's memory from the others
    import resource

    cap = max(8192, 2 * int(job.get("memory_mb", 4096))) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    t0 = time.perf_counter()
    logging.basicConfig(filename=job["log"], level=logging.INFO,
                        format="%(asctime)s [%(levelname)s] %(message)s")
    result: dict = {"autograde": "not run", "feedback": "not run"}
    try:
        cfg = configure(job)
        from nbgrader.converters import Autograde, GenerateFeedback
        from nbgrader.coursedir import CourseDirectory

        log = logging.getLogger("nbgrader")
        coursedir = CourseDirectory(config=cfg)
        coursedir.assignment_id = job["assignment"]
        coursedir.student_id = job["student"]
        autograde = Autograde(coursedir=coursedir, config=cfg, log=log)
        autograde.force = True
        autograde.create_student = True
        autograde.start()
        result["autograde"] = "ok"
        feedback = GenerateFeedback(coursedir=coursedir, config=cfg, log=log)
        feedback.force = True
        feedback.start()
        result["feedback"] = "ok"
    except BaseException as exc:  # noqa: BLE001 - report every failure to the driver
        step = "autograde" if result["autograde"] == "not run" else "feedback"
        result[step] = f"{type(exc).__name__}: {exc}"[:2000]
        with open(job["log"], "a") as fh:
            fh.write(traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - t0, 2)
    Path(job["result"]).write_text(json.dumps(result, indent=1))
    return 0 if result["autograde"] == result["feedback"] == "ok" else 1


def serve() -> int:
    """The fork server (see the module docstring)."""
    import select
    import signal

    import nbconvert.exporters  # noqa: F401 - imported once here, inherited by every child
    import nbconvert.preprocessors  # noqa: F401
    import nbgrader.converters  # noqa: F401
    import torch  # noqa: F401 - the harness runs the tests with it
    from traitlets.config.loader import PyFileConfigLoader  # noqa: F401

    from . import feedback, harness, preprocessor  # noqa: F401

    jobs: dict[int, str] = {}

    def send(obj: dict) -> None:
        os.write(1, (json.dumps(obj) + "\n").encode())

    def reap() -> None:
        while jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            send({"job": jobs.pop(pid, "?"), "exit": os.waitstatus_to_exitcode(status)})

    send({"ready": True})
    buf = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.2)
        reap()
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the driver is gone: take every running job with it
            for pid in list(jobs):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:  # the child: a session of its own, its log, its env, confined
                try:
                    os.setsid()
                    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.close(fd)
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                    os.close(null)
                    os.chdir(req["cwd"])
                    os.environ.clear()
                    os.environ.update(req["env"])
                    code = main(["grade_one", req["job"]])
                except BaseException:  # noqa: BLE001
                    traceback.print_exc()
                    code = 1
                os._exit(code)
            jobs[pid] = req["job"]
            send({"job": req["job"], "pid": pid})


if __name__ == "__main__":
    if sys.argv[1:] == ["--server"]:
        sys.exit(serve())
    sys.exit(main(sys.argv))
