"""Benchmarks of flowlib against zuko, nflows and normflows, run side by side on one machine.

    python bench/run.py                 # every benchmark at its full budget (make bench)
    python bench/run.py --only maf --steps 500 --seeds1 1   # a quick look

1. ``maf``: MAF (5 layers, MADE 2x64) on eight Gaussians and rings: KL to the truth, ms/step.
2. ``realnvp``: 8 affine couplings (MLP 2x64) on the 8x8 digits: test bits/dim, ms/step.
3. ``sampling``: MAF and IAF density evaluation vs sampling time as D grows, every library and
   flowlib's naive D-pass loop (a plot), and the MAF training step at D = 2 and 64.
4. ``distill``: an IAF student distilled from one MAF teacher per seed, in every library.
5. ``best``: the course's best 2-D model trained for the fastest peer's wall time of benchmark 1.
6. ``recipe``: flowlib's distillation recipe built up one part at a time, on benchmark 4's teachers.

Libraries run in alternation (A B C D, then the next round in rotated order), so that a machine
that slows down for a while does not decide the comparison; we report medians over seeds and the
median of the per-round ratios flowlib time / peer time. Every library gets the same data stream,
seed and training loop. Results go to bench/results/<benchmark>_<cpu|gpu>.json, a Markdown table
table_<cpu|gpu>.md and a plot sampling_<cpu|gpu>.png, which the book's appendix includes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers  # noqa: E402
import report  # noqa: E402

import flowlib  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    dev = flowlib.device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    return {"device": str(dev), "name": name, "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            # other jobs on the machine inflate every millisecond (not the alternated ratios)
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def train(model: peers.Model, batches, steps: int, lr: float, dev: torch.device,
          loss_fn=None) -> list[float]:
    """One training loop for every library: Adam, constant lr, batch from ``batches()``, loss
    ``-log_prob(batch).mean()`` unless ``loss_fn(model)`` is given. Returns each step's wall
    time in ms (the batch is drawn outside the timed part)."""
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times = []
    for _ in range(steps):
        x = batches() if batches is not None else None
        t0 = time.perf_counter()
        loss = -model.log_prob(x).mean() if loss_fn is None else loss_fn(model)
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
    """``libs`` rotated by ``k``: round ``k`` of the alternation starts with library ``k mod n``."""
    k %= len(libs)
    return libs[k:] + libs[:k]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _mean_se(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
    return statistics.mean(vals), se


def summarise(runs: list[dict], key: str, libs: tuple[str, ...], group: str) -> dict:
    """Per group and library: mean and standard error over seeds of ``key`` (diverged runs are
    counted, not averaged), median ms/step, and the median over rounds of flowlib's ms/step
    divided by each peer's."""
    out: dict = {}
    for g in sorted({r[group] for r in runs}):
        rows = [r for r in runs if r[group] == g]
        out[g] = {}
        for lib in libs:
            mine = [r for r in rows if r["lib"] == lib]
            if not mine:
                continue
            mean, se = _mean_se([r[key] for r in mine])
            entry = {key: mean, f"{key}_se": se, "n": len(mine),
                     "diverged": sum(bool(r.get("diverged")) for r in mine),
                     "ms_per_step": statistics.median(r["ms_per_step"] for r in mine)}
            if lib != "flowlib":
                ratios = []
                for seed in sorted({r["seed"] for r in rows}):
                    a = [r["ms_per_step"] for r in rows if r["lib"] == "flowlib" and r["seed"] == seed]
                    b = [r["ms_per_step"] for r in rows if r["lib"] == lib and r["seed"] == seed]
                    if a and b:
                        ratios.append(a[0] / b[0])
                entry["flowlib_time_ratio"] = statistics.median(ratios) if ratios else float("nan")
            out[g][lib] = entry
    return out


def _train_or_diverge(model, batches, steps, lr, dev, loss_fn=None) -> tuple[list[float], bool]:
    """Train; a library whose loss turns non-finite is recorded as diverged, not fatal."""
    try:
        return train(model, batches, steps, lr, dev, loss_fn), False
    except FloatingPointError:
        return [float("nan")], True


# ---------------------------------------------------------------------------- 1. MAF on 2-D toys

def bench_maf(args, dev) -> dict:
    """Benchmark 1: MAF (5 layers, MADE 2x64) on 2-D toys, KL to the truth and ms per step."""
    runs = []
    rnd = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds1):
        for name in ("eight_gaussians", "rings"):
            density = flowlib.data.toy(name)
            for lib in rotate(peers.LIBS, rnd):
                flowlib.seed(seed)
                model = peers.maf(lib, 2, layers=5, hidden=(64, 64))
                g = torch.Generator().manual_seed(1000 + seed)  # the same data for every library
                times, diverged = _train_or_diverge(
                    model, lambda: density.sample(256, generator=g).to(dev), args.steps, 1e-3, dev)
                model.eval()
                kl = (flowlib.metrics.kl_to_truth(model, density, n=args.test_samples, seed=seed)
                      if not diverged else flowlib.data.Estimate(float("nan"), float("nan")))
                ms = statistics.median(times)
                runs.append({"lib": lib, "density": name, "seed": seed, "kl": kl.value,
                             "kl_mc_se": kl.stderr, "ms_per_step": ms, "diverged": diverged})
                print(f"  maf {name:16s} seed {seed} {lib:9s} KL {kl.value:.3f} nats  "
                      f"{ms:.2f} ms/step", flush=True)
            rnd += 1
    return {"setup": {"layers": 5, "hidden": [64, 64], "batch": 256, "lr": 1e-3, "steps": args.steps,
                      "seeds": args.seeds1, "test_samples": args.test_samples},
            "runs": runs, "summary": summarise(runs, "kl", peers.LIBS, "density")}


# ---------------------------------------------------------------------------- 2. RealNVP on digits

ALPHA = 0.05   # logit pre-processing, as in the book's chapters


@torch.no_grad()
def _digits_logit(v: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantize ``v`` (levels 0..16) to [0, 1) and map to logit space; returns ``y`` and the
    log-det of the pre-processing, ``log |dy/dx|`` per image, which every library shares."""
    x = flowlib.data.dequantize(v, flowlib.data.DIGIT_LEVELS, generator=g)
    return flowlib.LogitPreprocess(ALPHA).inverse(x)


def bench_realnvp(args, dev) -> dict:
    """Benchmark 2: affine coupling flow on the 8x8 digits (dequantized, logit), test bits/dim."""
    v_train, _ = flowlib.data.digits("train")
    v_test, _ = flowlib.data.digits("test")
    levels, dim = flowlib.data.DIGIT_LEVELS, v_train.shape[1]
    y_test, ladj_test = _digits_logit(v_test, torch.Generator().manual_seed(0))

    def bpd(log_prob_y: torch.Tensor) -> float:
        nll = -(log_prob_y.double() + ladj_test.double()).mean().item()
        return flowlib.metrics.bits_per_dim(nll, dim, levels=levels)

    # Reference: a full-covariance Gaussian fitted to the logit-space training data.
    y_tr, _ = _digits_logit(v_train.repeat(10, 1), torch.Generator().manual_seed(1))
    gauss = torch.distributions.MultivariateNormal(
        y_tr.double().mean(0), torch.cov(y_tr.double().T) + 1e-6 * torch.eye(dim, dtype=torch.float64))
    reference = bpd(gauss.log_prob(y_test.double()))

    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for lib in rotate(peers.LIBS, seed):
            flowlib.seed(seed)
            model = peers.realnvp(lib, dim, layers=8, hidden=(64, 64))
            g = torch.Generator().manual_seed(2000 + seed)

            def batch() -> torch.Tensor:
                idx = torch.randint(len(v_train), (256,), generator=g)
                return _digits_logit(v_train[idx], g)[0].to(dev)

            times, diverged = _train_or_diverge(model, batch, args.steps2, 1e-3, dev)
            model.eval()
            value = float("nan")
            if not diverged:
                with torch.no_grad():
                    value = bpd(model.log_prob(y_test.to(dev)).cpu())
            ms = statistics.median(times)
            runs.append({"lib": lib, "data": "digits", "seed": seed, "bits_per_dim": value,
                         "ms_per_step": ms, "diverged": diverged or not math.isfinite(value)})
            print(f"  realnvp digits seed {seed} {lib:9s} {value:.3f} bits/dim  {ms:.2f} ms/step",
                  flush=True)
    return {"setup": {"couplings": 8, "hidden": [64, 64], "batch": 256, "lr": 1e-3,
                      "steps": args.steps2, "seeds": args.seeds, "logit_alpha": ALPHA,
                      "train": len(v_train), "test": len(v_test)},
            "gaussian_bits_per_dim": reference,
            "runs": runs, "summary": summarise(runs, "bits_per_dim", peers.LIBS, "data")}


# ---------------------------------------------------------------------------- 3. sampling cost

def _flowlib_naive(flow, n_or_x, kind: str):
    """flowlib's sequential direction with the naive loop (D full MADE passes per layer) instead
    of the incremental one: MAF ``sample(n)`` or IAF ``log_prob(x)``."""
    from flowlib.sequential import sequential_naive

    layers = list(flow.bijection.layers)
    if kind == "maf":
        z = flow.base.sample(n_or_x)
        for layer in layers:
            z, _ = sequential_naive(layer.made, layer.elementwise, z)
        return z
    x, ladj = n_or_x, 0.0
    for layer in reversed(layers):          # Inverse(MaskedAutoregressive): its forward
        x, l = sequential_naive(layer.base.made, layer.base.elementwise, x)
        ladj = ladj + l
    return flow.base.log_prob(x) + ladj


def _ms(fn, dev) -> float:
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return 1000 * (time.perf_counter() - t0)


@torch.no_grad()
def _sampling_rows(args, dev) -> list[dict]:
    rows = []
    for d in args.dims:
        libs = tuple(lib for lib in peers.LIBS if lib == "flowlib" or d <= args.peer_max_dim
                     or (lib == "zuko" and d <= args.zuko_max_dim))
        models, naive = {}, {}
        for lib in libs:
            for kind in ("maf", "iaf"):
                flowlib.seed(0)
                models[lib, kind] = getattr(peers, kind)(lib, d).to(dev).eval()
        x = torch.randn(args.batch3, d, device=dev)
        times: dict = {}
        for rnd in range(args.repeats):          # alternate libraries and operations
            for lib in rotate(libs, rnd):
                for kind in ("maf", "iaf"):
                    m = models[lib, kind]
                    times.setdefault((lib, kind, "log_prob"), []).append(_ms(lambda: m.log_prob(x), dev))
                    times.setdefault((lib, kind, "sample"), []).append(_ms(lambda: m.sample(args.batch3), dev))
                    if lib == "flowlib":
                        op = "sample_naive" if kind == "maf" else "log_prob_naive"
                        arg = args.batch3 if kind == "maf" else x
                        times.setdefault((lib, kind, op), []).append(
                            _ms(lambda: _flowlib_naive(m.module, arg, kind), dev))
        # exactness at this size: a perturbed flowlib MAF, the same base samples both ways
        flowlib.seed(1)
        maf = flowlib.testing.perturb(flowlib.models.maf(d).to(dev), 0.05)
        z = torch.randn(min(args.batch3, 1000), d, device=dev)
        fast = maf.bijection(z)[0]
        slow = z
        for layer in maf.bijection.layers:
            slow, _ = flowlib.sequential.sequential_naive(layer.made, layer.elementwise, slow)
        diff = (fast - slow).abs().max().item()
        for lib in libs:
            for kind in ("maf", "iaf"):
                row = {"lib": lib, "model": kind, "dim": d}
                for (l2, k2, op), ts in times.items():
                    if (l2, k2) == (lib, kind):
                        row[f"{op}_ms"] = statistics.median(ts)
                if lib == "flowlib" and kind == "maf":
                    row["max_abs_diff_naive"] = diff
                rows.append(row)
                print(f"  {lib:9s} {kind} D={d:4d} " + "  ".join(
                    f"{k[:-3]} {v:8.1f} ms" for k, v in row.items() if k.endswith("_ms")), flush=True)
    return rows


def _train_rows(args, dev) -> list[dict]:
    """MAF training step (batch 256) of every library at the given dimensions, alternating."""
    rows = []
    for d in args.train_dims:
        g = torch.Generator().manual_seed(d)
        data = torch.randn(4096, d, generator=g).to(dev)
        times: dict = {}
        for rnd in range(args.repeats):
            for lib in rotate(peers.LIBS, rnd):
                flowlib.seed(rnd)
                model = peers.maf(lib, d)
                gb = torch.Generator().manual_seed(rnd)
                ts = train(model, lambda: data[torch.randint(len(data), (256,), generator=gb)],
                           args.train_steps, 1e-3, dev)
                times.setdefault(lib, []).append(statistics.median(ts[5:] or ts))
        for lib in peers.LIBS:
            row = {"lib": lib, "dim": d, "ms_per_step": statistics.median(times[lib])}
            if lib != "flowlib":
                row["flowlib_time_ratio"] = statistics.median(
                    a / b for a, b in zip(times["flowlib"], times[lib]))
            rows.append(row)
            print(f"  train MAF D={d:3d} {lib:9s} {row['ms_per_step']:.2f} ms/step", flush=True)
    return rows


def bench_sampling(args, dev) -> dict:
    """Benchmark 3: log_prob vs sample time of MAF and IAF as D grows (batch ``args.batch3``),
    every library (peers up to ``args.peer_max_dim``, zuko up to ``args.zuko_max_dim``), plus flowlib's naive D-pass loop; and the
    MAF training step at ``args.train_dims``. Libraries and operations alternate."""
    return {"setup": {"batch": args.batch3, "layers": 5, "hidden": [64, 64],
                      "repeats": args.repeats, "peer_max_dim": args.peer_max_dim,
                      "zuko_max_dim": args.zuko_max_dim,
                      "train_steps": args.train_steps, "train_batch": 256,
                      "threads": torch.get_num_threads()},
            "rows": _sampling_rows(args, dev), "train": _train_rows(args, dev)}


def plot_sampling(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {"flowlib": "C0", "zuko": "C1", "nflows": "C2", "normflows": "C3"}
    panels = [("MAF sample (sequential)", "maf", "sample_ms", "sample_naive_ms"),
              ("IAF log_prob of outside points (sequential)", "iaf", "log_prob_ms",
               "log_prob_naive_ms")]
    for ax, (title, kind, key, naive) in zip(axes, panels):
        for lib, color in colors.items():
            pts = sorted((r["dim"], r[key]) for r in rows if r["lib"] == lib and r["model"] == kind)
            if pts:
                label = f"{lib} (incremental)" if lib == "flowlib" else lib
                ax.plot(*zip(*pts), "-", color=color, marker="o", label=label)
        pts = sorted((r["dim"], r[naive]) for r in rows if r["lib"] == "flowlib" and r["model"] == kind)
        ax.plot(*zip(*pts), "--", color="C0", marker="x", label="flowlib, naive D-pass loop")
        par = "log_prob_ms" if kind == "maf" else "sample_ms"
        pts = sorted((r["dim"], r[par]) for r in rows if r["lib"] == "flowlib" and r["model"] == kind)
        ax.plot(*zip(*pts), ":", color="k", marker=".",
                label=f"flowlib {'MAF log_prob' if kind == 'maf' else 'IAF sample'} (parallel)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("dimension D")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"ms per call (batch {result['setup']['batch']})")
    fig.suptitle("Sequential directions, 5 layers, MADE 2x64, one thread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- 4. distillation

# flowlib's recipe for benchmark 4: distill's defaults (Adam lr 3e-3, cosine decay, clip 10) and
# the first fifth of the steps on the forward KL to teacher samples (cheap at D = 2).
DISTILL_WARMUP = 0.2


def _distill_flowlib(student: peers.Model, teacher: peers.Model, steps: int,
                     dev) -> tuple[list[float], bool]:
    """flowlib's student trained by ``flowlib.distill``, its defaults and a forward-KL warm-up
    (``DISTILL_WARMUP``), batch 256;
    the mean step time in ms (the loop's wall time over its steps)."""
    try:
        hist = flowlib.distill.distill(student.module, teacher.module, steps=steps,
                                       batch_size=256, warmup=DISTILL_WARMUP, dev=dev,
                                       progress=False)
    except FloatingPointError:
        return [float("nan")], True
    return [hist.ms_per_step], False


def distill_teacher(seed: int, density, args, dev) -> tuple[peers.Model, float]:
    """Benchmark 4's teacher for ``seed``: a flowlib MAF fitted to ``density`` with the shared
    loop (benchmark 1's budget), frozen; and its KL(p || t)."""
    flowlib.seed(seed)
    teacher = peers.maf("flowlib", 2)
    g = torch.Generator().manual_seed(1000 + seed)
    train(teacher, lambda: density.sample(256, generator=g).to(dev), args.steps, 1e-3, dev)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_kl = flowlib.metrics.kl_to_truth(teacher, density, n=args.test_samples, seed=seed).value
    print(f"  distill seed {seed} teacher KL(p||t) {t_kl:.3f}", flush=True)
    return teacher, t_kl


def student_kls(student: peers.Model, teacher: peers.Model, density, seed: int, n: int) -> dict:
    """KL(s || t) and KL(s || p) on the student's own samples, KL(p || s) on the data's, with
    Monte Carlo standard errors."""
    with torch.no_grad():
        torch.manual_seed(10_000 + seed)
        x, log_s = student.sample_and_log_prob(n)
        d_st = (log_s - teacher.log_prob(x)).double()
        d_sp = (log_s.cpu().double() - density.log_prob(x.cpu().double()))
    kl_ps = flowlib.metrics.kl_to_truth(student, density, n=n, seed=seed)
    root = math.sqrt(n)
    return {"kl_student_teacher": d_st.mean().item(), "kl_st_mc_se": d_st.std().item() / root,
            "kl_student_data": d_sp.mean().item(), "kl_sp_mc_se": d_sp.std().item() / root,
            "kl_data_student": kl_ps.value, "kl_ps_mc_se": kl_ps.stderr}


def bench_distill(args, dev) -> dict:
    """Benchmark 4: per seed one flowlib MAF teacher fitted to eight Gaussians (benchmark 1's
    budget), then an IAF student in every library trained for the same number of steps to
    minimise KL(student || teacher): the peers with the shared loop (Adam, constant lr 1e-3),
    flowlib with ``flowlib.distill``'s default recipe."""
    density = flowlib.data.toy("eight_gaussians")
    runs, teachers = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        teacher, t_kl = distill_teacher(seed, density, args, dev)
        teachers.append({"seed": seed, "kl_data_to_teacher": t_kl})

        def loss_fn(student):
            x, log_s = student.sample_and_log_prob(256)
            return (log_s - teacher.log_prob(x)).mean()

        for lib in rotate(peers.LIBS, seed):
            flowlib.seed(seed)
            student = peers.iaf(lib, 2)
            if lib == "flowlib":   # flowlib's own recipe, flowlib.distill with its defaults
                times, diverged = _distill_flowlib(student, teacher, args.steps, dev)
            else:
                times, diverged = _train_or_diverge(student, None, args.steps, 1e-3, dev, loss_fn)
            student.eval()
            row = {"lib": lib, "seed": seed, "ms_per_step": statistics.median(times),
                   "diverged": diverged}
            if not diverged:
                row |= student_kls(student, teacher, density, seed, args.test_samples)
            else:
                row |= {k: float("nan") for k in ("kl_student_teacher", "kl_student_data",
                                                  "kl_data_student")}
            runs.append(row | {"density": "eight_gaussians"})
            print(f"  distill seed {seed} {lib:9s} KL(s||t) {row['kl_student_teacher']:.3f}  "
                  f"KL(s||p) {row['kl_student_data']:.3f}  KL(p||s) {row['kl_data_student']:.3f}  "
                  f"{row['ms_per_step']:.2f} ms/step", flush=True)
    return {"setup": {"layers": 5, "hidden": [64, 64], "batch": 256, "lr": 1e-3,
                      "flowlib_recipe": f"flowlib.distill (Adam lr 3e-3, cosine decay, clip 10, "
                                        f"forward-KL warm-up {DISTILL_WARMUP:.0%} of the steps)",
                      "teacher_steps": args.steps, "student_steps": args.steps, "seeds": args.seeds,
                      "test_samples": args.test_samples},
            "teachers": teachers, "runs": runs, "summary": distill_summary(runs)}


def distill_summary(runs: list[dict]) -> dict:
    """Benchmark 4's summary: per library the mean and standard error over seeds of KL(s||t)
    and KL(s||p), the median KL(p||s), ms/step and the time ratio."""
    libs = tuple(lib for lib in peers.LIBS if any(r["lib"] == lib for r in runs))
    summary = summarise(runs, "kl_student_teacher", libs, "density")["eight_gaussians"]
    for lib, e in summary.items():
        mine = [r for r in runs if r["lib"] == lib]
        e["kl_student_data"], e["kl_student_data_se"] = _mean_se([r["kl_student_data"] for r in mine])
        # KL(p || s) is kept per run and as a median only: a mode-seeking student puts almost no
        # mass on parts of the data, and there log s(x) (from the sequential inverse) can be
        # astronomically negative, so a mean over seeds says nothing.
        e["kl_data_student_median"] = statistics.median(r["kl_data_student"] for r in mine)
    return summary


def merge_distill(new: dict, old: dict) -> dict:
    """Benchmark 4 rerun for some libraries only (``--libs``): keep the other libraries' runs
    of ``old`` for the same seeds, record where each run came from, and re-summarise."""
    libs_new = {r["lib"] for r in new["runs"]}
    seeds = {r["seed"] for r in new["runs"]}
    kept = [dict(r, rerun=False) for r in old.get("runs", [])
            if r["lib"] not in libs_new and r["seed"] in seeds]
    runs = [dict(r, rerun=True) for r in new["runs"]] + kept
    out = dict(new, runs=runs, summary=distill_summary(runs))
    out["merged_from_earlier_run"] = sorted({r["lib"] for r in kept})
    out["earlier_teachers"] = old.get("teachers", [])
    return out


# ---------------------------------------------------------------------------- 6. the recipe, apart

# flowlib's distillation recipe built up one part at a time, every variant through flowlib.distill
# (so only the recipe differs): the peers' shared loop, then distill's defaults, then the warm-up.
RECIPE = {
    "shared loop: Adam 1e-3 constant, no clipping": dict(lr=1e-3, schedule="constant", clip=None),
    "distill's defaults: Adam 3e-3, cosine decay, clipping at 10": dict(),
    "defaults + forward-KL warm-up (a fifth of the steps)": dict(warmup=DISTILL_WARMUP),
}


def bench_recipe(args, dev) -> dict:
    """Benchmark 6: what each part of ``flowlib.distill``'s recipe buys, on benchmark 4's
    teachers and seeds: the same flowlib IAF student trained with each variant of ``RECIPE``."""
    density = flowlib.data.toy("eight_gaussians")
    runs, teachers = [], []
    names = tuple(RECIPE)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        teacher, t_kl = distill_teacher(seed, density, args, dev)
        teachers.append({"seed": seed, "kl_data_to_teacher": t_kl})
        for name in rotate(names, seed):
            flowlib.seed(seed)
            student = peers.iaf("flowlib", 2)
            try:
                hist = flowlib.distill.distill(student.module, teacher.module, steps=args.steps,
                                               batch_size=256, dev=dev, progress=False,
                                               **RECIPE[name])
                row = {"variant": name, "seed": seed, "diverged": False,
                       "ms_per_step": hist.ms_per_step}
                student.eval()
                row |= student_kls(student, teacher, density, seed, args.test_samples)
            except FloatingPointError:
                row = {"variant": name, "seed": seed, "diverged": True, "ms_per_step": float("nan"),
                       "kl_student_teacher": float("nan"), "kl_student_data": float("nan"),
                       "kl_data_student": float("nan")}
            runs.append(row)
            print(f"  recipe seed {seed} {name[:40]:40s} KL(s||t) {row['kl_student_teacher']:.3f}  "
                  f"KL(s||p) {row['kl_student_data']:.3f}", flush=True)
    summary = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {"per_seed": [r["kl_student_teacher"] for r in mine],
                         "diverged": sum(r["diverged"] for r in mine)}
        for key in ("kl_student_teacher", "kl_student_data"):
            summary[name][key], summary[name][f"{key}_se"] = _mean_se([r[key] for r in mine])
        summary[name]["ms_per_step"] = statistics.median(r["ms_per_step"] for r in mine)
        summary[name]["kl_data_student_median"] = statistics.median(r["kl_data_student"] for r in mine)
    return {"setup": {"steps": args.steps, "seeds": args.seeds, "batch": 256,
                      "test_samples": args.test_samples, "variants": RECIPE},
            "teachers": teachers, "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------- 5. best model

# The course's strongest 2-D model, a rational-quadratic spline flow, and its training recipe
# (fit's cosine decay from lr), chosen by a sweep on the 2-core CPU of the appendix: 16 bins mattered
# more on rings than more layers or wider networks.
BEST = {name: {"arch": {"layers": 4, "hidden": (64, 64), "bins": 16, "kind": "coupling"},
               "lr": 5e-3, "batch": 256}
        for name in ("eight_gaussians", "rings")}


def _peer_budget_ms(maf_result: dict, name: str) -> tuple[float, str]:
    """The fastest peer's median wall time for benchmark 1's training on ``name`` (ms)."""
    steps = maf_result["setup"]["steps"]
    peers_ = {lib: e for lib, e in maf_result["summary"][name].items() if lib != "flowlib"}
    lib = min(peers_, key=lambda k: peers_[k]["ms_per_step"])
    return peers_[lib]["ms_per_step"] * steps, lib


def bench_best(args, dev, maf_result: dict) -> dict:
    """Benchmark 5: flowlib's best model per density, trained by ``flowlib.fit`` for as many steps
    as fit in the fastest peer's benchmark-1 wall time (timed by a short probe first)."""
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name, cfg in BEST.items():
            density = flowlib.data.toy(name)
            budget_ms, peer = _peer_budget_ms(maf_result, name)
            flowlib.seed(seed)
            model = flowlib.models.nsf(2, **cfg["arch"], seed=seed)
            probe = copy.deepcopy(model)
            h = flowlib.fit(probe, density, steps=args.probe_steps, batch_size=cfg["batch"],
                            lr=cfg["lr"], dev=dev, progress=False)
            steps = max(1, int(0.97 * budget_ms / h.ms_per_step))
            hist = flowlib.fit(model, density, steps=steps, batch_size=cfg["batch"], lr=cfg["lr"],
                               dev=dev, progress=False,
                               generator=torch.Generator().manual_seed(3000 + seed))
            kl = flowlib.metrics.kl_to_truth(model, density, n=args.test_samples, seed=seed)
            runs.append({"lib": "flowlib", "density": name, "seed": seed, "kl": kl.value,
                         "kl_mc_se": kl.stderr, "steps": steps, "seconds": hist.seconds,
                         "budget_seconds": budget_ms / 1000, "budget_of": peer,
                         "ms_per_step": hist.ms_per_step})
            print(f"  best {name:16s} seed {seed} KL {kl.value:.3f} nats in {steps} steps, "
                  f"{hist.seconds:.1f} s (budget {budget_ms / 1000:.1f} s = {peer})", flush=True)
    summary = {}
    for name in BEST:
        rows = [r for r in runs if r["density"] == name]
        kl, se = _mean_se([r["kl"] for r in rows])
        summary[name] = {"kl": kl, "kl_se": se, "seconds": statistics.median(r["seconds"] for r in rows),
                         "budget_seconds": statistics.median(r["budget_seconds"] for r in rows),
                         "steps": statistics.median(r["steps"] for r in rows),
                         "budget_of": rows[0]["budget_of"], "model": BEST[name]}
    return {"setup": {"seeds": args.seeds, "test_samples": args.test_samples,
                      "probe_steps": args.probe_steps, "config": BEST},
            "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------- the table

def _fmt(v: float, se: float | None = None, digits: int = 3) -> str:
    if not math.isfinite(v):
        return "diverged"
    if se is None or not math.isfinite(se):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} ± {se:.{digits}f}"


def _ratio_cell(e: dict) -> str:
    return f"{e['flowlib_time_ratio']:.2f}" if "flowlib_time_ratio" in e else "—"


def peers_order(rows: list[dict]) -> list[str]:
    """The libraries present in ``rows``, flowlib first, then in ``peers.LIBS`` order."""
    present = {row["lib"] for row in rows}
    return [lib for lib in peers.LIBS if lib in present] + sorted(present - set(peers.LIBS))


def table(results: dict) -> str:
    m = results.get("machine", {})
    lines = [f"Measured on {m.get('device')} ({m.get('name')}, {m.get('threads')} thread(s)), "
             f"torch {m.get('torch')}, Python {m.get('python')}. Values are means ± standard "
             "errors over seeds; ms/step are medians; the ratio column is the median over rounds of "
             "flowlib's time divided by that library's (below 1: flowlib is faster).", ""]
    if "maf" in results:
        r = results["maf"]
        s = r["setup"]
        lines += [f"### 1. MAF on 2-D densities ({s['layers']} layers, MADE {s['hidden']}, batch "
                  f"{s['batch']}, Adam lr {s['lr']}, {s['steps']} steps, {s['seeds']} seeds)", "",
                  "| density | library | KL to the truth (nats) | ms/step | flowlib time / its time |",
                  "|---|---|---|---|---|"]
        for dens, libs in r["summary"].items():
            for lib, e in libs.items():
                lines.append(f"| {dens} | {lib} | {_fmt(e['kl'], e['kl_se'])} | "
                             f"{e['ms_per_step']:.2f} | {_ratio_cell(e)} |")
        lines.append("")
    if "realnvp" in results:
        r = results["realnvp"]
        s = r["setup"]
        lines += [f"### 2. Affine coupling flow on the 8x8 digits ({s['couplings']} couplings, MLP "
                  f"{s['hidden']}, batch {s['batch']}, Adam lr {s['lr']}, {s['steps']} steps, "
                  f"{s['seeds']} seeds; uniform dequantization, logit with alpha {s['logit_alpha']}; "
                  f"{s['train']} training and {s['test']} test images)", "",
                  "| library | test bits/dim | ms/step | flowlib time / its time |", "|---|---|---|---|"]
        for lib, e in r["summary"]["digits"].items():
            lines.append(f"| {lib} | {_fmt(e['bits_per_dim'], e['bits_per_dim_se'])} | "
                         f"{e['ms_per_step']:.2f} | {_ratio_cell(e)} |")
        lines += [f"| (full-covariance Gaussian) | {r['gaussian_bits_per_dim']:.3f} | — | — |", ""]
    if "sampling" in results:
        r = results["sampling"]
        rows = r["rows"]
        libs = [lib for lib in peers_order(rows)]
        lines += [f"### 3. Density evaluation vs sampling, batch {r['setup']['batch']} (ms per call, "
                  f"medians of {r['setup']['repeats']} alternating runs)", "",
                  "The sequential directions: MAF `sample` and IAF `log_prob` of outside points "
                  "(flowlib incremental, flowlib's naive D-pass loop, each peer); the parallel ones "
                  "(MAF `log_prob`, IAF `sample`) for flowlib.", "",
                  "| D | " + " | ".join(f"MAF sample {lib}" for lib in libs) +
                  " | MAF sample flowlib naive | " + " | ".join(f"IAF log_prob {lib}" for lib in libs) +
                  " | IAF log_prob flowlib naive | MAF log_prob flowlib | IAF sample flowlib |",
                  "|---" * (2 * len(libs) + 5) + "|"]
        by = {(row["lib"], row["model"], row["dim"]): row for row in rows}

        def cell(lib, kind, d, key):
            row = by.get((lib, kind, d))
            return f"{row[key]:.1f}" if row and key in row else "—"

        for d in sorted({row["dim"] for row in rows}):
            lines.append(f"| {d} | " + " | ".join(cell(lib, "maf", d, "sample_ms") for lib in libs)
                         + f" | {cell('flowlib', 'maf', d, 'sample_naive_ms')} | "
                         + " | ".join(cell(lib, "iaf", d, "log_prob_ms") for lib in libs)
                         + f" | {cell('flowlib', 'iaf', d, 'log_prob_naive_ms')} | "
                         f"{cell('flowlib', 'maf', d, 'log_prob_ms')} | "
                         f"{cell('flowlib', 'iaf', d, 'sample_ms')} |")
        lines.append("")
        if r.get("train"):
            lines += [f"MAF training step (batch {r['setup']['train_batch']}, median ms over "
                      f"{r['setup']['train_steps']} steps, median of {r['setup']['repeats']} "
                      "alternating runs):", "",
                      "| D | library | ms/step | flowlib time / its time |", "|---|---|---|---|"]
            for row in r["train"]:
                ratio = f"{row['flowlib_time_ratio']:.2f}" if "flowlib_time_ratio" in row else "—"
                lines.append(f"| {row['dim']} | {row['lib']} | {row['ms_per_step']:.2f} | {ratio} |")
            lines.append("")
    if "distill" in results:
        r = results["distill"]
        s = r["setup"]
        t_kl = statistics.mean(t["kl_data_to_teacher"] for t in r["teachers"])
        recipe = s.get("flowlib_recipe")
        how = (f"peers: the shared loop, Adam lr {s['lr']} constant; flowlib: {recipe}" if recipe
               else f"Adam lr {s['lr']}")
        lines += [f"### 4. Distillation on eight Gaussians (IAF students, {s['layers']} layers, MADE "
                  f"{s['hidden']}, {s['student_steps']} steps, batch {s['batch']}, {how}, "
                  f"{s['seeds']} seeds; one flowlib MAF teacher per seed, KL(p‖t) = {t_kl:.3f})", "",
                  "| library | KL(s‖t), the objective | KL(s‖p), to the true density | ms/step | "
                  "flowlib time / its time |",
                  "|---|---|---|---|---|"]
        for lib, e in r["summary"].items():
            lines.append(f"| {lib} | {_fmt(e['kl_student_teacher'], e['kl_student_teacher_se'])} | "
                         f"{_fmt(e['kl_student_data'], e['kl_student_data_se'])} | "
                         f"{e['ms_per_step']:.2f} | {_ratio_cell(e)} |")
        if r.get("note"):
            lines += ["", r["note"][0].upper() + r["note"][1:] + "."]
        if r.get("merged_from_earlier_run"):
            lines += ["", f"Rerun for {', '.join(sorted({x['lib'] for x in r['runs'] if x.get('rerun')}))} "
                      f"only; the runs of {', '.join(r['merged_from_earlier_run'])} (same seeds, "
                      "same teachers) are kept from the earlier run, so the time ratios compare "
                      "two runs, not alternating ones."]
        lines.append("")
    if "best" in results:
        r = results["best"]
        lines += [f"### 5. The course's best model at the fastest peer's wall time ({r['setup']['seeds']} seeds)", "",
                  "| density | model | KL to the truth (nats) | steps | training time (s) | budget (s) |",
                  "|---|---|---|---|---|---|"]
        for dens, e in r["summary"].items():
            a = e["model"]["arch"]
            desc = (f"spline flow ({a['kind']}, {a['layers']} layers, {a['bins']} bins, "
                    f"MLP {list(a['hidden'])}), lr {e['model']['lr']} cosine")
            lines.append(f"| {dens} | {desc} | {_fmt(e['kl'], e['kl_se'])} | {e['steps']:.0f} | "
                         f"{e['seconds']:.1f} | {e['budget_seconds']:.1f} ({e['budget_of']}) |")
        lines.append("")
    if "recipe" in results:
        r = results["recipe"]
        s = r["setup"]
        lines += [f"### 6. The distillation recipe, one part at a time (flowlib IAF students, "
                  f"benchmark 4's teachers, {s['steps']} steps, batch {s['batch']}, {s['seeds']} seeds)",
                  "", "| recipe | KL(s‖t) per seed | KL(s‖t), mean | KL(s‖p) | median KL(p‖s) |",
                  "|---|---|---|---|---|"]
        for name, e in r["summary"].items():
            seeds = ", ".join(_fmt(v) for v in e["per_seed"])
            lines.append(f"| {name} | {seeds} | {_fmt(e['kl_student_teacher'], e['kl_student_teacher_se'])} | "
                         f"{_fmt(e['kl_student_data'], e['kl_student_data_se'])} | "
                         f"{e['kl_data_student_median']:.3g} |")
        lines.append("")
    return "\n".join(_short_headings(lines))


def _short_headings(lines: list[str]) -> list[str]:
    """A heading "### N. Title (setup details)" becomes "### N. Title" followed by the details
    as an italic paragraph: a reader scans short headings, not a paragraph set in bold."""
    out: list[str] = []
    for line in lines:
        if line.startswith("### ") and line.endswith(")") and " (" in line:
            title, details = line[:-1].split(" (", 1)
            out += [title, "", f"*{details}.*"]
        else:
            out.append(line)
    return out


BENCHMARKS = ("maf", "realnvp", "sampling", "distill", "best", "recipe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(BENCHMARKS),
                    help=f"comma-separated subset of {', '.join(BENCHMARKS)}; the others are read "
                         "back from earlier results for the table")
    ap.add_argument("--steps", type=int, default=5000, help="benchmarks 1, 4 and 6")
    ap.add_argument("--steps2", type=int, default=2000, help="benchmark 2")
    ap.add_argument("--seeds", type=int, default=3, help="benchmarks 2, 4, 5 and 6")
    ap.add_argument("--seeds1", type=int, default=10,
                    help="benchmark 1: its KL varies by about 0.05 nats from seed to seed, so three "
                         "seeds cannot rank libraries that differ by less")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first_seed .. first_seed + seeds - 1 (more seeds without redoing the first)")
    ap.add_argument("--test-samples", type=int, default=50_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--batch3", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-max-dim", type=int, default=32,
                    help="benchmark 3: the peers' sequential passes take D full passes, so they are "
                         "timed up to this dimension only ...")
    ap.add_argument("--zuko-max-dim", type=int, default=64,
                    help="... but zuko, the reference of the done-criterion, up to this one")
    ap.add_argument("--train-dims", type=int, nargs="+", default=[2, 64],
                    help="benchmark 3: dimensions of the MAF training-step timing")
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--probe-steps", type=int, default=100, help="benchmark 5's timing probe")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--libs", default=",".join(peers.LIBS),
                    help="benchmark 4 only: rerun these libraries and keep the others' runs from "
                         "the earlier results (same seeds)")
    args = ap.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    dev = flowlib.device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if dev.type == "cuda" else "cpu"
    results: dict = {"machine": machine()}
    for name in BENCHMARKS:          # earlier results, so that the table stays complete
        f = out / f"{name}_{tag}.json"
        if name not in chosen and f.exists():
            results[name] = json.loads(f.read_text())
    for name in chosen:
        print(f"benchmark {name} on {dev}", flush=True)
        t0 = time.perf_counter()
        if name == "best":
            if "maf" not in results:
                ap.error("benchmark 'best' needs benchmark 1's timings: run --only maf,best")
            results[name] = bench_best(args, dev, results["maf"])
        elif name == "distill" and set(args.libs.split(",")) != set(peers.LIBS):
            earlier = out / f"{name}_{tag}.json"
            all_libs = peers.LIBS
            peers.LIBS = tuple(lib for lib in all_libs if lib in args.libs.split(","))
            try:
                fresh = bench_distill(args, dev)
            finally:
                peers.LIBS = all_libs
            results[name] = merge_distill(fresh, json.loads(earlier.read_text())
                                          if earlier.exists() else {})
        else:
            fn = {"maf": bench_maf, "realnvp": bench_realnvp, "sampling": bench_sampling,
                  "distill": bench_distill, "recipe": bench_recipe}[name]
            results[name] = fn(args, dev)
        results[name]["seconds"] = time.perf_counter() - t0
        results[name]["machine"] = results["machine"]
        (out / f"{name}_{tag}.json").write_text(json.dumps(results[name], indent=1))
    if "sampling" in results:
        plot_sampling(results["sampling"], out / f"sampling_{tag}.png")
    text = table(results)
    (out / f"table_{tag}.md").write_text(text)
    (out / f"reading_{tag}.md").write_text(report.reading(results))  # the appendix's prose
    print(text)


if __name__ == "__main__":
    main()
