"""`python -m flowgrade autograde --executor dask --scheduler ADDRESS`: the same grades as the
local executor, nothing lost or graded twice, on a Dask LocalCluster of 2 worker processes (one
thread each, loopback only), for the demo class and for the synthetic class of 50 of
bench/grading_class.py (correct, wrong, untouched, non-JSON and hostile submissions): each
class is graded by both executors and the outcomes (status, score, every cell's score) compared.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from flowgrade_cli import flowgrade

REPO = Path(__file__).resolve().parents[1]
PS = "ps1_change_of_variables"
DEMO = REPO / "tests" / "grading" / "demo_class"
LIMITS = ["--cell-timeout", "10", "--timeout", "150"]  # as bench/grading_class.py

pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap is not installed (apt-get install bubblewrap)")


def _bench():
    spec = importlib.util.spec_from_file_location("grading_class_bench",
                                                  REPO / "bench" / "grading_class.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def base_course(tmp_path_factory):
    """A course of problem set 1 only, generated once (copied for each run)."""
    course = tmp_path_factory.mktemp("dask") / "base"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions" / PS, course / "solutions" / PS)
    gen = flowgrade(course, "generate")
    assert gen.returncode == 0, gen.stdout + gen.stderr
    return course


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c:
        yield c


def copy_course(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    return dest


def outcomes(course: Path) -> dict:
    status = json.loads((course / "grading" / "status.json").read_text())
    return {k: (v["status"], v["score"], v["max_score"], v["cells"]) for k, v in status.items()}


def ledger_keys(course: Path) -> list[str]:
    return [json.loads(line)["key"] for line in
            (course / "grading" / "ledger.jsonl").read_text().splitlines()]


def check_complete(course: Path, keys: set[str]) -> None:
    """Every submission merged exactly once, with its feedback and autograded notebook."""
    ledger = ledger_keys(course)
    assert set(ledger) == keys, sorted(set(ledger) ^ keys)
    assert [k for k, n in Counter(ledger).items() if n > 1] == []
    status = json.loads((course / "grading" / "status.json").read_text())
    assert set(status) == keys
    for key, out in status.items():
        if out["status"] == "graded":
            assert list((course / "grading" / "autograded" / key).glob("*.ipynb")), key
            assert list((course / "grading" / "feedback" / key).glob("*.html")), key


def test_demo_class_same_grades_as_local(base_course, cluster, tmp_path):
    local = copy_course(base_course, tmp_path / "local")
    remote = copy_course(base_course, tmp_path / "dask")
    for course in (local, remote):
        for sdir in sorted(p for p in DEMO.iterdir() if p.is_dir()):
            shutil.copytree(sdir, course / "grading" / "submitted" / sdir.name)
    a = flowgrade(local, "autograde", "--workers", "2", *LIMITS)
    b = flowgrade(remote, "autograde", "--executor", "dask", "--scheduler",
                  cluster.scheduler_address, *LIMITS)
    print(f"timing: demo class local {a.seconds:.1f} s, dask {b.seconds:.1f} s")
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    assert "2 worker(s)" in b.stdout  # the cluster's threads
    keys = {f"{s}/{PS}" for s in ("alice", "bob", "carol", "dave")}
    check_complete(local, keys)
    check_complete(remote, keys)
    assert outcomes(remote) == outcomes(local)
    assert {k: v[1] for k, v in outcomes(remote).items()} == {
        f"alice/{PS}": 12.0, f"bob/{PS}": 0.0, f"carol/{PS}": 4.0, f"dave/{PS}": 5.0}
    # the grades the export gives are the same, byte for byte
    for course in (local, remote):
        assert flowgrade(course, "export").returncode == 0
    assert (remote / "grading" / "grades.csv").read_text() == \
        (local / "grading" / "grades.csv").read_text()
    # an unchanged class is not sent to the cluster again
    again = flowgrade(remote, "autograde", "--executor", "dask", "--scheduler",
                      cluster.scheduler_address, *LIMITS)
    assert again.returncode == 0 and "4 unchanged" in again.stdout
    assert len(ledger_keys(remote)) == 4


def test_synthetic_class_of_50(base_course, cluster, tmp_path):
    bench = _bench()
    students = bench.synthetic_class(50)
    keys = {f"{s}/{PS}" for s, *_ in students}
    runs = {}
    for name, args in (("local", ["--workers", "2"]),
                       ("dask", ["--executor", "dask", "--scheduler",
                                 cluster.scheduler_address])):
        course = copy_course(base_course, tmp_path / name)
        bench.write_class(course, students)
        proc = flowgrade(course, "autograde", *args, *LIMITS)
        print(f"timing: 50 submissions, {name}: {proc.seconds:.1f} s "
              f"({proc.seconds / 50:.2f} s per submission, 2 workers)")
        assert proc.returncode == 1, proc.stdout[-3000:]  # the non-JSON notebooks fail
        check_complete(course, keys)
        runs[name] = outcomes(course)
    assert runs["dask"] == runs["local"]
    statuses = Counter(v[0] for v in runs["dask"].values())
    assert statuses == Counter({"graded": 48, "failed": 2})


def test_scheduler_required_and_unreachable(base_course, tmp_path):
    course = copy_course(base_course, tmp_path / "c")
    shutil.copytree(DEMO / "alice", course / "grading" / "submitted" / "alice")
    p = flowgrade(course, "autograde", "--executor", "dask")
    assert p.returncode == 2 and "--scheduler" in p.stderr
    p = flowgrade(course, "autograde", "--executor", "dask", "--scheduler",
                  "tcp://127.0.0.1:9")  # nothing listens on the discard port
    assert p.returncode == 2 and "cannot reach the Dask scheduler" in p.stderr
    assert not (course / "grading" / "ledger.jsonl").exists()


def _clean_stale_in(base: str) -> None:
    from flowgrade.executors import _clean_stale

    for _ in range(5):
        _clean_stale(Path(base))


def test_workers_starting_together_clean_the_same_stale_folders(tmp_path):
    """Regression: two worker processes starting at once both found a dead worker's folder and
    removed it together; one failed with FileNotFoundError on a file the other had just removed,
    and its first job failed. Each now claims a folder by an atomic rename before removing it."""
    import multiprocessing

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for k in range(40):
        d = tmp_path / (f"server-{dead.pid}" if k == 0 else f"job-{dead.pid}-{k}")
        (d / "a" / "b").mkdir(parents=True)
        for i in range(30):
            (d / "a" / "b" / f"f{i}.log").write_bytes(b"x" * 100)
        (d / "forkserver.log").write_bytes(b"log")
    (tmp_path / f"stale-{dead.pid}-job-{dead.pid}-99").mkdir()   # an unfinished clean-up
    (tmp_path / f"server-{os.getpid()}").mkdir()                 # a live worker's folder
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_clean_stale_in, args=(str(tmp_path),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert sorted(x.name for x in tmp_path.iterdir()) == [f"server-{os.getpid()}"]
