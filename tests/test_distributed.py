"""fit under DistributedDataParallel (gloo, 2 CPU processes) follows the one-process path."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flowlib
from flowlib import Compose, Flow, StandardNormal

STEPS, BATCH = 6, 64


def _make_flow() -> Flow:
    flowlib.seed(3)
    return Flow(Compose(flowlib.ElementwiseAffine(2), flowlib.SinhArcsinh(2), flowlib.Linear(2)),
                StandardNormal(2))


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return flowlib.data.toy("two_moons").sample(512, generator=g)


def _train(world: int) -> dict:
    flow = _make_flow()
    sizes = []
    flow.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    flowlib.seed(11)  # the same batch order on every rank and in the single run
    flowlib.fit(flow, _data(), steps=STEPS, batch_size=BATCH, lr=1e-2, dev="cpu", progress=False)
    state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
    if world > 1:  # each rank saw only its share of every global batch
        assert sizes == [BATCH // world] * STEPS, sizes
    return state


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        assert flowlib.train.init_distributed() == (rank, world)
        state = _train(world)
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.start_processes(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    ddp = torch.load(out)
    single = _train(1)
    assert single.keys() == ddp.keys()
    start = _make_flow().state_dict()
    for k in single:
        assert not torch.allclose(single[k], start[k]), f"{k} did not train"
        assert torch.allclose(single[k], ddp[k], atol=1e-5), f"{k}: DDP and single run differ"


def test_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(flowlib.train, "_distributed", lambda: (0, 3))
    with pytest.raises(ValueError, match="divisible"):
        flowlib.fit(_make_flow(), _data(), steps=1, batch_size=64, dev="cpu")
