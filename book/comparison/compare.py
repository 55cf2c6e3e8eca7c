"""Which flow for which job: the course's flows trained the same way on the same data.

    .venv/bin/python book/comparison/compare.py

(about an hour on two heavily shared CPU cores, 2026-12-01; most of it the IAF's
maximum-likelihood training on the digits, which inverts the IAF sequentially at every step)

trains NICE, RealNVP, Glow, MAF, IAF and a spline flow (NSF) with one recipe (Adam, cosine
schedule, the same steps, batch and learning rate for every model) on two 2-D densities with
exact log-densities (the KL to the truth, in nats) and on the dequantized 8x8 digits (test bits
per dimension), and times density evaluation and sampling of the trained models. It writes
``comparison_<device>.json`` next to this file; chapter 8 builds its table from that file, never
from typed numbers. On a machine with CUDA the same command writes ``comparison_cuda.json`` with
the larger budget of ``flowlib.budget``.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import flowlib
from flowlib import Compose, Flow, LogitPreprocess
from flowlib.coupling import checkerboard_mask
from flowlib.models import glow, iaf, maf, nice, nsf, realnvp

HERE = Path(__file__).resolve().parent
TOYS = ["eight_gaussians", "two_moons"]


def _with_logit(flow: Flow, alpha: float = 0.05) -> Flow:
    """Put the logit pre-processing on the data side of a vector flow (the last generative layer)."""
    return Flow(Compose(flow.bijection, LogitPreprocess(alpha)), flow.base)


def builders(dim: int, digits: bool) -> dict[str, callable]:
    """Each model as the chapters build it (default widths), for vectors of ``dim``."""
    logit = 0.05 if digits else None
    mask = checkerboard_mask((1, 8, 8)).flatten() if digits else "alternating"
    hidden = (64, 64)
    return {
        "NICE": lambda: nice(dim, hidden=hidden, logit=logit),
        "RealNVP": lambda: realnvp(dim, mask=mask, logit=logit) if digits else realnvp(dim),
        "Glow": lambda: glow(dim, logit=logit, permutation="lu"),
        "MAF": lambda: _with_logit(maf(dim, layers=5, hidden=hidden)) if digits else maf(dim, 5, hidden),
        "IAF": lambda: _with_logit(iaf(dim, layers=5, hidden=hidden)) if digits else iaf(dim, 5, hidden),
        "spline (NSF)": (lambda: _with_logit(nsf(dim, layers=5, hidden=hidden)) if digits
                         else nsf(dim, layers=5, hidden=hidden)),
    }


def _best_ms(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def timings(flow: Flow, x: torch.Tensor, n: int = 1000) -> tuple[float, float]:
    """(ms for log_prob of n points, ms for n samples), no gradients, best of three."""
    flow.eval()
    with torch.no_grad():
        density = _best_ms(lambda: flow.log_prob(x[:n]))
        sampling = _best_ms(lambda: flow.sample(n))
    return density, sampling


def main() -> None:
    dev = flowlib.device()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    steps_2d = flowlib.budget(cpu=1500, gpu=10000)
    steps_digits = flowlib.budget(cpu=1000, gpu=6000)
    lr = 2e-3
    rows = []
    for toy in TOYS:
        density = flowlib.data.toy(toy)
        for name, build in builders(2, digits=False).items():
            flowlib.seed(0)
            flow = build()
            hist = flowlib.fit(flow, density, steps=steps_2d, batch_size=256, lr=lr, progress=False)
            kl = flowlib.metrics.kl_to_truth(flow, density)
            x = density.sample(1000, generator=torch.Generator().manual_seed(1)).to(dev)
            dens_ms, samp_ms = timings(flow, x)
            rows.append({"data": toy, "model": name, "metric": "KL (nats)", "value": kl.value,
                         "stderr": kl.stderr, "parameters": sum(p.numel() for p in flow.parameters()),
                         "train_s": hist.seconds, "density_ms": dens_ms, "sample_ms": samp_ms,
                         "steps": steps_2d})
            print(f"{toy:16s} {name:13s} KL {kl}  {hist.seconds:6.1f} s  "
                  f"density {dens_ms:7.1f} ms  sampling {samp_ms:7.1f} ms", flush=True)
    v_train, _ = flowlib.data.digits("train")
    v_test, _ = flowlib.data.digits("test")
    x_test = flowlib.data.dequantize(v_test, 17, generator=torch.Generator().manual_seed(0))
    for name, build in builders(64, digits=True).items():
        flowlib.seed(0)
        flow = build()
        hist = flowlib.fit(flow, v_train, steps=steps_digits, batch_size=256, lr=1e-3, progress=False,
                           transform=lambda v: flowlib.data.dequantize(v, 17))
        nll = flowlib.metrics.nll(flow, x_test)
        per = flowlib.metrics.bits_per_dim(nll, 64, levels=17)
        dens_ms, samp_ms = timings(flow, x_test.to(dev), n=len(x_test))
        rows.append({"data": "digits", "model": name, "metric": "bits/dim", "value": per, "stderr": None,
                     "parameters": sum(p.numel() for p in flow.parameters()), "train_s": hist.seconds,
                     "density_ms": dens_ms, "sample_ms": samp_ms, "steps": steps_digits})
        print(f"{'digits':16s} {name:13s} {per:.3f} bits/dim  {hist.seconds:6.1f} s  "
              f"density {dens_ms:7.1f} ms  sampling {samp_ms:7.1f} ms", flush=True)
    out = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "lr_2d": lr, "lr_digits": 1e-3, "batch_size": 256,
        "timing_points": {"2-D": 1000, "digits": len(x_test)},
        "rows": rows,
    }
    path = HERE / f"comparison_{dev.type}.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf8")
    print("wrote", path)


if __name__ == "__main__":
    main()
