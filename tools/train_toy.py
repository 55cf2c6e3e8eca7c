"""Train a flow on a 2-D toy density; runs as one process or under torchrun (DDP).

    python tools/train_toy.py --density rings --model maf --steps 2000
    torchrun --nproc_per_node=2 tools/train_toy.py --density rings --steps 2000

Under torchrun every process trains on its share of each global batch; rank 0 prints the result.
"""

from __future__ import annotations

import argparse

import flowlib
from flowlib import models


def main() -> None:
    factories = [name for name in models.__all__ if name in ("maf", "realnvp", "nice", "glow")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--density", default="eight_gaussians", choices=sorted(flowlib.data.TOYS))
    ap.add_argument("--model", default=factories[0] if factories else None, choices=factories)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256, help="global batch over all processes")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.model is None:
        ap.error("no model factory is available in flowlib.models")

    rank, world = flowlib.train.init_distributed()
    dev = flowlib.device()
    if dev.type == "cuda" and world > 1:
        import os

        import torch

        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    flowlib.seed(args.seed)  # the same initial parameters and batches on every rank
    density = flowlib.data.toy(args.density)
    flow = getattr(models, args.model)(dim=2)
    hist = flowlib.fit(flow, density, steps=args.steps, batch_size=args.batch_size, lr=args.lr, dev=dev)
    if rank == 0:
        kl = flowlib.metrics.kl_to_truth(flow, density)
        print(f"{args.model} on {args.density}: {world} process(es) on {dev}, "
              f"{hist.ms_per_step:.2f} ms/step, KL(p||q) = {kl} nats")


if __name__ == "__main__":
    main()
