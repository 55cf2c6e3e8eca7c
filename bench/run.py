"""Benchmarks of flowlib against zuko, nflows and normflows, run side by side on one machine.

    python bench/run.py                 # every benchmark at its full budget (make bench)
    python bench/run.py --only maf --steps 500 --seeds 1    # a quick look

Libraries are run in alternation (A B C D, then the next round in rotated order), so that a
machine that slows down for a while does not decide the comparison; we report medians and
per-round A/B ratios. Results go to bench/results/<benchmark>.json and bench/results/table.md,
which the book includes as its appendix.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers  # noqa: E402

import flowlib  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    dev = flowlib.device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(dev), "name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def train(model: peers.Model, batches, steps: int, lr: float, dev: torch.device) -> list[float]:
    """One training loop for every library: Adam, constant lr, batch from ``batches()``.
    Returns the wall time of each step in ms."""
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times = []
    for _ in range(steps):
        x = batches()
        t0 = time.perf_counter()
        loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(1000 * (time.perf_counter() - t0))
        if not math.isfinite(loss.item()):
            raise FloatingPointError("non-finite loss")
    return times


def rotate(libs: tuple[str, ...], k: int) -> tuple[str, ...]:
    k %= len(libs)
    return libs[k:] + libs[:k]


def summarise(runs: list[dict], key: str, libs: tuple[str, ...], group: str) -> dict:
    """Per group and library: mean and standard error over seeds of ``key``, median ms/step, and
    the median over rounds of flowlib's ms/step divided by each peer's."""
    out: dict = {}
    for g in sorted({r[group] for r in runs}):
        rows = [r for r in runs if r[group] == g]
        out[g] = {}
        for lib in libs:
            vals = [r[key] for r in rows if r["lib"] == lib]
            ms = [r["ms_per_step"] for r in rows if r["lib"] == lib]
            if not vals:
                continue
            se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
            entry = {key: statistics.mean(vals), f"{key}_se": se, "ms_per_step": statistics.median(ms),
                     "n": len(vals)}
            if lib != "flowlib":
                ratios = []
                for seed in {r["seed"] for r in rows}:
                    a = [r["ms_per_step"] for r in rows if r["lib"] == "flowlib" and r["seed"] == seed]
                    b = [r["ms_per_step"] for r in rows if r["lib"] == lib and r["seed"] == seed]
                    if a and b:
                        ratios.append(a[0] / b[0])
                entry["flowlib_time_ratio"] = statistics.median(ratios) if ratios else float("nan")
            out[g][lib] = entry
    return out


def bench_maf(args, dev) -> dict:
    """Benchmark 1: MAF (5 layers, MADE 2x64) on 2-D toys, KL to the truth and ms per step."""
    runs = []
    k = 0
    for seed in range(args.seeds):
        for name in ("eight_gaussians", "rings"):
            density = flowlib.data.toy(name)
            for lib in rotate(peers.LIBS, k):
                k += 1
                flowlib.seed(seed)
                model = peers.maf(lib, 2, layers=5, hidden=(64, 64))
                g = torch.Generator().manual_seed(1000 + seed)  # the same data for every library
                times = train(model, lambda: density.sample(256, generator=g).to(dev),
                              args.steps, 1e-3, dev)
                model.eval()
                kl = flowlib.metrics.kl_to_truth(model, density, n=args.test_samples, seed=seed)
                runs.append({"lib": lib, "density": name, "seed": seed, "kl": kl.value,
                             "kl_mc_se": kl.stderr, "ms_per_step": statistics.median(times)})
                print(f"  maf {name:16s} seed {seed} {lib:9s} KL {kl.value:.3f} nats  "
                      f"{statistics.median(times):.2f} ms/step", flush=True)
    return {"setup": {"layers": 5, "hidden": [64, 64], "batch": 256, "lr": 1e-3, "steps": args.steps,
                      "seeds": args.seeds, "test_samples": args.test_samples},
            "runs": runs, "summary": summarise(runs, "kl", peers.LIBS, "density")}


@torch.no_grad()
def bench_sampling(args, dev) -> dict:
    """Benchmark 3: log_prob vs sample time of MAF and IAF as D grows (batch ``args.batch3``)."""
    rows = []
    for d in args.dims:
        for kind in ("maf", "iaf"):
            flowlib.seed(0)
            flow = (flowlib.models.maf if kind == "maf" else flowlib.models.iaf)(d).to(dev).eval()
            x = torch.randn(args.batch3, d, device=dev)
            t_lp, t_s = [], []
            for _ in range(args.repeats):  # alternate the two operations
                t0 = time.perf_counter()
                flow.log_prob(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t_lp.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                flow.sample(args.batch3)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t_s.append(time.perf_counter() - t0)
            rows.append({"model": kind, "dim": d, "log_prob_ms": 1000 * statistics.median(t_lp),
                         "sample_ms": 1000 * statistics.median(t_s)})
            print(f"  {kind} D={d:4d} log_prob {rows[-1]['log_prob_ms']:8.1f} ms  "
                  f"sample {rows[-1]['sample_ms']:8.1f} ms", flush=True)
    return {"setup": {"batch": args.batch3, "layers": 5, "hidden": [64, 64], "repeats": args.repeats},
            "rows": rows}


def table(results: dict) -> str:
    m = results.get("machine", {})
    lines = [f"Measured on {m.get('device')} ({m.get('name')}, {m.get('threads')} threads), "
             f"torch {m.get('torch')}.", ""]
    if "maf" in results:
        r = results["maf"]
        s = r["setup"]
        lines += [f"### MAF on 2-D toys ({s['layers']} layers, MADE {s['hidden']}, batch {s['batch']}, "
                  f"Adam lr {s['lr']}, {s['steps']} steps, {s['seeds']} seeds)", "",
                  "| density | library | KL (nats) | ms/step | flowlib time / peer time |",
                  "|---|---|---|---|---|"]
        for dens, libs in r["summary"].items():
            for lib, e in libs.items():
                ratio = f"{e['flowlib_time_ratio']:.2f}" if "flowlib_time_ratio" in e else "—"
                lines.append(f"| {dens} | {lib} | {e['kl']:.3f} ± {e['kl_se']:.3f} | "
                             f"{e['ms_per_step']:.2f} | {ratio} |")
        lines.append("")
    if "sampling" in results:
        r = results["sampling"]
        lines += [f"### Density evaluation vs sampling, batch {r['setup']['batch']} (flowlib, ms)", "",
                  "| D | MAF log_prob | MAF sample | IAF log_prob | IAF sample |", "|---|---|---|---|---|"]
        by = {(row["model"], row["dim"]): row for row in r["rows"]}
        for d in sorted({row["dim"] for row in r["rows"]}):
            a, b = by[("maf", d)], by[("iaf", d)]
            lines.append(f"| {d} | {a['log_prob_ms']:.1f} | {a['sample_ms']:.1f} | "
                         f"{b['log_prob_ms']:.1f} | {b['sample_ms']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="maf,sampling", help="comma-separated: maf, sampling")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-samples", type=int, default=50_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--batch3", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    dev = flowlib.device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine()}
    tag = "gpu" if dev.type == "cuda" else "cpu"
    for name in args.only.split(","):
        fn = {"maf": bench_maf, "sampling": bench_sampling}[name]
        print(f"benchmark {name} on {dev}", flush=True)
        t0 = time.perf_counter()
        results[name] = fn(args, dev)
        results[name]["seconds"] = time.perf_counter() - t0
        (out / f"{name}_{tag}.json").write_text(json.dumps({"machine": results["machine"],
                                                            **results[name]}, indent=1))
    (out / f"table_{tag}.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
