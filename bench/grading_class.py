#!/usr/bin/env python3
"""Benchmark of the grading pipeline: a synthetic class of problem set 1, graded with 1 worker
and with N workers (`make bench-grading`, ARGS="--students 40" for a quick run).

The class mixes, in a fixed pattern of 20: correct answers (8), the demo class's wrong answers
(carol and dave: 4), the untouched exercise (3), a notebook that is not JSON (1), and the
unusual and hostile cases of tests/grading/cases.py in turn (4). Each run grades the whole class
in a fresh copy of the course (`python -m flowgrade autograde --workers W`), then checks that no
submission was lost or graded twice (grading/status.json, grading/ledger.jsonl) and that every
submission got its expected outcome (status and score).

Writes bench/results/grading.json (every run) and bench/results/grading.md (one line per run).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
_spec = importlib.util.spec_from_file_location("grading_cases",
                                               REPO / "tests" / "grading" / "cases.py")
cases = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cases  # dataclasses look their module up there
_spec.loader.exec_module(cases)
PS = cases.PS
DEMO = REPO / "tests" / "grading" / "demo_class"


def synthetic_class(n: int) -> list[tuple[str, object, str, float]]:
    """(student, notebook or bytes, expected status, expected score) for n students."""
    import nbformat

    demo = {s: nbformat.read(DEMO / s / PS / cases.NB, as_version=4)
            for s in ("alice", "carol", "dave", "bob")}
    kinds = {"correct": (demo["alice"], "graded", 12.0), "carol": (demo["carol"], "graded", 4.0),
             "dave": (demo["dave"], "graded", 5.0), "untouched": (demo["bob"], "graded", 0.0),
             "json": (b'{"cells": [', "failed", 0.0)}
    special = [(c.student, c.notebook(), "graded", c.expected) for c in cases.cases()]
    pattern = (["correct"] * 8 + ["carol", "carol", "dave", "dave"] + ["untouched"] * 3
               + ["json"] + ["special"] * 4)
    out, k = [], 0
    for i in range(n):
        kind = pattern[i % len(pattern)]
        if kind == "special":
            name, made, status, score = special[k % len(special)]
            k += 1
        else:
            name = kind
            made, status, score = kinds[kind]
        out.append((f"s{i:03d}_{name}", made, status, score))
    return out


def write_class(course: Path, students) -> None:
    import nbformat

    for student, made, _, _ in students:
        folder = course / "grading" / "submitted" / student / PS
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(made, bytes):
            (folder / f"{PS}.ipynb").write_bytes(made)
        else:
            nbformat.write(made, folder / f"{PS}.ipynb")


def fresh_course(root: Path) -> Path:
    course = root / "course"
    shutil.rmtree(course, ignore_errors=True)
    course.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions", course / "solutions")
    return course


def grade_py(course: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowgrade", "--root", str(course), *args],
                          capture_output=True, text=True)


def run(root: Path, students, workers: int, cell_timeout: int, timeout: float) -> dict:
    course = fresh_course(root)
    gen = grade_py(course, "generate")
    if gen.returncode != 0:
        raise SystemExit(f"generate failed:\n{gen.stdout}\n{gen.stderr}")
    write_class(course, students)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = grade_py(course, "autograde", "--workers", str(workers), "--cell-timeout",
                    str(cell_timeout), "--timeout", str(timeout))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    grade_py(course, "export")
    status = json.loads((course / "grading" / "status.json").read_text())
    ledger = [json.loads(line)["key"] for line in
              (course / "grading" / "ledger.jsonl").read_text().splitlines()]
    with open(course / "grading" / "grades.csv", newline="") as fh:
        rows = {r["student"]: r for r in csv.DictReader(fh) if r["assignment"] == PS}
    keys = {f"{s}/{PS}" for s, *_ in students}
    lost = sorted(keys - set(status))
    double = sorted(k for k, n in Counter(ledger).items() if n > 1)
    wrong = []
    for student, _, want_status, want_score in students:
        row = rows.get(student)
        if row is None or row["status"] != want_status or float(row["score"]) != want_score:
            wrong.append(f"{student}: {row and (row['status'], row['score'])} "
                         f"!= {(want_status, want_score)}")
    counts = Counter(v["status"] for v in status.values())
    zero = sum(1 for v in status.values() if v["status"] == "graded" and v["score"] == 0)
    result = {
        "workers": workers, "students": len(students), "wall_s": round(wall, 1),
        "per_submission_s": round(wall / len(students), 2), "cpu_s": round(cpu, 1),
        "graded": counts["graded"] - zero, "zero": zero,
        "failed": counts["failed"], "lost": len(lost), "graded_twice": len(double),
        "wrong_outcomes": wrong, "exit_status": proc.returncode,
    }
    print(f"  {workers} worker(s): {wall:.1f} s wall ({wall / len(students):.2f} s per "
          f"submission), {cpu:.0f} s CPU; lost {len(lost)}, graded twice {len(double)}, "
          f"unexpected outcomes {len(wrong)}", flush=True)
    for line in wrong[:10]:
        print("    " + line)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0,
                        help="the N of the parallel run (default: number of CPUs)")
    parser.add_argument("--cell-timeout", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=150)
    parser.add_argument("--only", choices=["1", "N"], help="run one of the two only")
    args = parser.parse_args(argv)
    n_cpu = len(os.sched_getaffinity(0))
    workers = args.workers or n_cpu
    from flowgrade.sandbox import capabilities

    caps = capabilities()["summary"]
    students = synthetic_class(args.students)
    print(f"grading benchmark: {args.students} submissions of {PS}, {n_cpu} CPU(s), "
          f"sandbox {caps}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="flows-grading-bench-") as tmp:
        for w in ([1] if args.only != "N" else []) + ([workers] if args.only != "1" else []):
            runs.append(run(Path(tmp) / f"w{w}", students, w, args.cell_timeout, args.timeout))
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": n_cpu, "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "students": args.students, "cell_timeout_s": args.cell_timeout,
        "timeout_s": args.timeout, "sandbox": caps, "runs": runs,
    }
    if len(runs) == 2:
        record["speedup"] = round(runs[0]["wall_s"] / runs[1]["wall_s"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "grading.json"
    history = []
    if out.exists():
        try:
            history = json.loads(out.read_text())
            history = history if isinstance(history, list) else [history]
        except ValueError:
            history = []
    out.write_text(json.dumps(history + [record], indent=1) + "\n")
    md = RESULTS / "grading.md"
    lines = md.read_text().splitlines() if md.exists() else [
        "| date | submissions | CPUs | workers | wall (s) | s / submission | CPU (s) | "
        "graded / zero / failed | lost | graded twice | unexpected |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {record['date'][:10]} | {r['students']} | {n_cpu} | {r['workers']} | "
                     f"{r['wall_s']} | {r['per_submission_s']} | {r['cpu_s']} | "
                     f"{r['graded']} / {r['zero']} / {r['failed']} | "
                     f"{r['lost']} | {r['graded_twice']} | {len(r['wrong_outcomes'])} |")
    md.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {md}")
    bad = any(r["lost"] or r["graded_twice"] or r["wrong_outcomes"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
