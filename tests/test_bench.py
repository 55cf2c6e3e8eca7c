"""The benchmark harness (bench/run.py) on flowlib alone, at a tiny budget: every benchmark runs,
writes its JSON, and the table and plot the book's appendix includes come out. The peer libraries
live in bench/.venv only, so here ``peers.LIBS`` is cut down to flowlib plus a fake peer in the
pure-bookkeeping tests."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.fixture
def flowlib_only(bench, monkeypatch, one_thread):
    monkeypatch.setattr(bench.peers, "LIBS", ("flowlib",))
    return bench


def _args(**kw) -> Namespace:
    base = dict(steps=20, steps2=10, seeds=1, seeds1=1, first_seed=0, test_samples=500, dims=[2, 4], batch3=64, repeats=1,
                probe_steps=5, peer_max_dim=64, zuko_max_dim=64, train_dims=[2], train_steps=6)
    return Namespace(**(base | kw))


def test_rotation_gives_every_library_the_first_slot(bench):
    libs = ("a", "b", "c", "d")
    firsts = [bench.rotate(libs, k)[0] for k in range(4)]
    assert sorted(firsts) == sorted(libs)
    assert all(sorted(bench.rotate(libs, k)) == sorted(libs) for k in range(7))


def test_summary_means_ratios_and_divergence(bench):
    runs = [{"lib": "flowlib", "g": "x", "seed": s, "kl": v, "ms_per_step": 2.0}
            for s, v in enumerate([0.1, 0.3])]
    runs += [{"lib": "peer", "g": "x", "seed": 0, "kl": 0.5, "ms_per_step": 4.0},
             {"lib": "peer", "g": "x", "seed": 1, "kl": float("nan"), "ms_per_step": 1.0,
              "diverged": True}]
    s = bench.summarise(runs, "kl", ("flowlib", "peer"), "g")["x"]
    assert s["flowlib"]["kl"] == pytest.approx(0.2)
    assert s["flowlib"]["kl_se"] == pytest.approx(0.1)        # stdev 0.1414 / sqrt 2
    assert s["peer"]["kl"] == 0.5 and s["peer"]["diverged"] == 1
    assert s["peer"]["flowlib_time_ratio"] == pytest.approx(statistics.median([0.5, 2.0]))
    assert "flowlib_time_ratio" not in s["flowlib"]


def test_budget_is_the_fastest_peer(bench):
    maf = {"setup": {"steps": 100},
           "summary": {"rings": {"flowlib": {"ms_per_step": 1.0}, "zuko": {"ms_per_step": 3.0},
                                 "nflows": {"ms_per_step": 2.0}}}}
    assert bench._peer_budget_ms(maf, "rings") == (200.0, "nflows")


def test_every_benchmark_runs_and_the_table_is_written(flowlib_only, tmp_path):
    bench = flowlib_only
    dev = torch.device("cpu")
    args = _args()
    results = {"machine": bench.machine()}
    results["maf"] = bench.bench_maf(args, dev)
    results["realnvp"] = bench.bench_realnvp(args, dev)
    results["sampling"] = bench.bench_sampling(args, dev)
    results["distill"] = bench.bench_distill(args, dev)
    # a fake peer 10x slower than flowlib gives benchmark 5 a budget of ~10x flowlib's run
    maf = json.loads(json.dumps(results["maf"]))
    for dens in maf["summary"].values():
        dens["fake"] = {"ms_per_step": 2.0}
    results["best"] = bench.bench_best(_args(steps=20), dev, maf)
    results["recipe"] = bench.bench_recipe(_args(), dev)

    for dens in ("eight_gaussians", "rings"):
        e = results["maf"]["summary"][dens]["flowlib"]
        assert math.isfinite(e["kl"]) and e["ms_per_step"] > 0 and e["n"] == 1
    assert 1.0 < results["realnvp"]["summary"]["digits"]["flowlib"]["bits_per_dim"] < 8.0
    assert 1.5 < results["realnvp"]["gaussian_bits_per_dim"] < 3.5
    assert len(results["sampling"]["rows"]) == 4
    assert all(r["max_abs_diff_naive"] < 1e-4 for r in results["sampling"]["rows"]
               if r["model"] == "maf")
    assert results["sampling"]["train"][0]["ms_per_step"] > 0
    d = results["distill"]["summary"]["flowlib"]
    assert d["kl_student_teacher"] > -0.05 and math.isfinite(d["kl_student_data"])
    assert math.isfinite(d["kl_data_student_median"])
    for dens, e in results["best"]["summary"].items():
        assert e["budget_seconds"] == pytest.approx(2.0 * 20 / 1000)
        assert e["steps"] >= 1 and math.isfinite(e["kl"])

    text = bench.table(results)
    for title in ("### 1. MAF", "### 2. Affine coupling", "### 3. Density evaluation",
                  "### 4. Distillation", "### 5. The course's best model", "### 6. The distillation"):
        assert title in text
    assert len(results["recipe"]["summary"]) == 3
    assert all(math.isfinite(e["kl_student_teacher"]) for e in results["recipe"]["summary"].values())
    assert "| eight_gaussians | flowlib |" in text and "full-covariance Gaussian" in text
    bench.plot_sampling(results["sampling"], tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 5000


def test_main_rejects_unknown_benchmarks(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "maf,nope"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "nope" in capsys.readouterr().err


def test_distill_rerun_of_one_library_keeps_the_others(bench):
    row = dict(density="eight_gaussians", ms_per_step=2.0, diverged=False, kl_student_data=1.0,
               kl_data_student=0.5)
    old = {"runs": [dict(row, lib=lib, seed=s, kl_student_teacher=0.4)
                    for lib in ("flowlib", "zuko") for s in (0, 1, 7)], "teachers": []}
    new = {"runs": [dict(row, lib="flowlib", seed=s, kl_student_teacher=0.2) for s in (0, 1)],
           "teachers": [], "setup": {}}
    merged = bench.merge_distill(new, old)
    assert merged["merged_from_earlier_run"] == ["zuko"]
    assert {(r["lib"], r["seed"]) for r in merged["runs"]} == {("flowlib", 0), ("flowlib", 1),
                                                             ("zuko", 0), ("zuko", 1)}
    assert merged["summary"]["flowlib"]["kl_student_teacher"] == pytest.approx(0.2)
    assert merged["summary"]["zuko"]["kl_student_teacher"] == pytest.approx(0.4)


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_reading_is_written_from_the_committed_results():
    """The appendix's prose is generated: every section appears, its figures are those of the
    JSON files, and the committed reading_cpu.md is what report.py writes from them now."""
    report = _report()
    results = report.load()
    text = report.reading(results)
    for head in ("**Speed.**", "**Quality, MAF**", "**Quality, coupling flow", "**Sampling cost.**",
                 "**Distillation.**", "*What each part of the recipe bought*",
                 "**The course's best model.**"):
        assert head in text, head
    maf = results["maf"]["summary"]["eight_gaussians"]["flowlib"]["kl"]
    assert f"{maf:.3f}" in text
    assert (ROOT / "bench" / "results" / "reading_cpu.md").read_text() == text, (
        "bench/results/reading_cpu.md is stale: run bench/.venv/bin/python bench/report.py")


def test_the_reading_words_a_ranking_from_the_numbers():
    report = _report()
    summary = {"flowlib": {"kl": 0.30, "kl_se": 0.01}, "zuko": {"kl": 0.20, "kl_se": 0.01},
               "nflows": {"kl": 0.50, "kl_se": 0.01}}
    assert report._versus(summary, "kl", "KL").startswith("zuko has the lowest mean KL")
    assert "combined standard errors" in report._versus(summary, "kl", "KL")
    summary["flowlib"]["kl"] = 0.205
    assert "a tie" in report._versus(summary, "kl", "KL")


def test_the_appendix_names_the_pinned_peer_versions():
    pins = dict(line.split("==") for line in
                (ROOT / "bench" / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    page = (ROOT / "book" / "appendix_benchmarks.md").read_text()
    for lib in ("zuko", "nflows", "normflows"):
        assert f"{lib} {pins[lib]}" in page, f"the appendix does not name {lib} {pins[lib]}"
    assert f"torch=={pins['torch']}" in page
