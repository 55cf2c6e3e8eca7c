"""Training: the device, a device-dependent budget, one seed for everything, and ``fit``."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["device", "budget", "seed", "fit", "History", "init_distributed", "make_optimizer",
           "optimizer_step", "batches", "progress_enabled", "train_loop"]

T = TypeVar("T")


def device() -> torch.device:
    """CUDA when present, else the CPU. ``FLOWLIB_DEVICE=cpu`` (or ``cuda:1``...) overrides."""
    forced = os.environ.get("FLOWLIB_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def budget(cpu: T, gpu: T) -> T:
    """Pick a budget (steps, sizes, ...) by device: ``gpu`` on CUDA, else ``cpu``.

    The book calls e.g. ``steps = budget(cpu=2000, gpu=20000)`` so that the same cell runs in CI on
    two CPU cores and gives better figures on a GPU.
    """
    return gpu if device().type == "cuda" else cpu


def seed(s: int = 0) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) at once."""
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)


@dataclass
class History:
    """What ``fit`` returns: the training loss per step (it behaves as that list), the validation
    loss at each evaluation, the device and the wall time."""

    loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.loss)

    def __getitem__(self, i):
        return self.loss[i]

    def __iter__(self) -> Iterator[float]:
        return iter(self.loss)

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / max(len(self.loss), 1)

    def __repr__(self) -> str:
        last = f"{self.loss[-1]:.4f}" if self.loss else "n/a"
        return (f"History(steps={len(self.loss)}, last_loss={last}, device={self.device!r}, "
                f"seconds={self.seconds:.1f})")


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size)``; ``(0, 1)`` when not launched by ``torchrun``. NCCL is used when
    every process has a GPU, gloo otherwise (CPUs). Each rank uses GPU ``LOCAL_RANK``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def progress_enabled(progress: bool | None) -> bool:
    """Whether a training loop shows its progress bar: ``progress`` if given, else unless
    ``FLOWLIB_PROGRESS`` is ``0``, ``false`` or ``no``."""
    if progress is not None:
        return progress
    return os.environ.get("FLOWLIB_PROGRESS", "1") not in ("0", "false", "no")


def batches(data: Any, batch_size: int, dev: torch.device,
            generator: torch.Generator | None) -> Callable[[], Tensor]:
    """A function returning the next *global* training batch, on ``dev``."""
    if isinstance(data, Tensor):
        if data.dim() < 2 or len(data) == 0:
            raise ValueError(f"fit: data must be a non-empty batch [N, ...], got {tuple(data.shape)}")
        if not torch.isfinite(data).all():
            raise ValueError("fit: the training data hold NaN or inf values")
        data = data.to(dev)
        n = len(data)
        state = {"perm": None, "pos": n}

        def next_batch() -> Tensor:
            # Epochs of a random permutation: each sample is seen once per pass.
            if state["pos"] + batch_size > n:
                state["perm"] = torch.randperm(n, generator=generator).to(dev)
                state["pos"] = 0
            idx = state["perm"][state["pos"]: state["pos"] + batch_size]
            state["pos"] += batch_size
            return data[idx]

        return next_batch
    if hasattr(data, "sample"):  # a density: fresh samples every step (infinite data)
        return lambda: data.sample(batch_size, generator=generator).to(dev)
    if callable(data):
        return lambda: data(batch_size).to(dev)
    raise TypeError("fit: data must be a tensor of samples, an object with .sample(n), or a "
                    f"callable batch_size -> tensor; got {type(data).__name__}")


def make_optimizer(params: list[nn.Parameter], lr: float, steps: int, schedule: str, who: str,
                   weight_decay: float = 0.0):
    """Adam and its learning-rate schedule, shared by ``fit`` and ``distill``."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if schedule == "constant":
        return opt, None
    raise ValueError(f"{who}: schedule must be 'cosine' or 'constant', got {schedule!r}")


def optimizer_step(loss: Tensor, opt: torch.optim.Optimizer, sched, params: list[nn.Parameter],
                   clip: float | None) -> None:
    """One gradient step: backward, optional norm clipping, Adam, schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    if sched is not None:
        sched.step()


def _global_mean(v: Tensor, world: int) -> float:
    if world > 1:
        import torch.distributed as dist

        v = v.clone()
        dist.all_reduce(v)
        v = v / world
    return v.item()


def train_loop(loss_at: Callable[[int], Tensor], params: list[nn.Parameter], steps: int,
               lr: float, *, who: str, dev: torch.device, schedule: str = "cosine",
               clip: float | None = 10.0, weight_decay: float = 0.0, quantity: str = "loss",
               progress: bool | None = None, world: int = 1,
               after_step: Callable[[int, History], None] | None = None) -> History:
    r"""The one optimisation loop of :mod:`flowlib` (``fit``, ``distill``, ``fit_flow_matching``):
    ``steps`` times, :math:`	heta \leftarrow 	ext{Adam}(	heta, 
abla_	heta L_k)` with
    :math:`L_k` = ``loss_at(k)``, the gradient norm clipped at ``clip``, the learning rate on
    ``schedule`` (``"cosine"``: decayed to 0 over ``steps``; ``"constant"``).

    A step whose loss (averaged over the ``world`` processes of a distributed run) is not finite
    raises ``FloatingPointError`` *before* the update, so the parameters stay those of the last
    good step. ``after_step(k, history)`` runs after each update (e.g. a validation pass). A
    progress bar shows ``quantity`` unless ``progress`` (or ``FLOWLIB_PROGRESS=0``) turns it off.
    Returns the :class:`History` of the per-step losses and the loop's wall time.
    """
    from tqdm.auto import tqdm

    opt, sched = make_optimizer(params, lr, steps, schedule, who, weight_decay)
    hist = History(device=str(dev))
    bar = tqdm(range(steps), disable=not progress_enabled(progress), file=sys.stderr,
               desc=f"{who} on {dev.type}", mininterval=0.5, leave=False)
    start = time.perf_counter()
    try:
        for step in bar:
            loss = loss_at(step)
            value = _global_mean(loss.detach(), world)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{who}: the {quantity} is {value} at step {step} (last finite value "
                    f"{hist.loss[-1] if hist.loss else 'none'}); parameters kept from step "
                    f"{step - 1}. Try a lower learning rate or gradient clipping.")
            optimizer_step(loss, opt, sched, params, clip)
            hist.loss.append(value)
            if after_step is not None:
                after_step(step, hist)
            if step % 50 == 0:
                bar.set_postfix({quantity: f"{value:.3f}"})
    finally:
        bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    hist.seconds = time.perf_counter() - start
    return hist


def fit(flow: nn.Module, data: Any, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
        *, val_data: Tensor | None = None, eval_every: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None, weight_decay: float = 0.0,
        clip: float | None = 10.0, schedule: str = "cosine", dev: torch.device | None = None,
        generator: torch.Generator | None = None, progress: bool | None = None) -> History:
    r"""Fit ``flow`` by maximum likelihood: minimise :math:`-\frac1B\sum_b \log q(x_b)` with Adam.

    Args:
        flow: a module whose ``log_prob(x)`` returns ``[batch]`` log-densities.
        data: a tensor of samples ``[N, ...]``, a density with ``.sample(n)`` (fresh samples each
            step), or a callable ``batch_size -> tensor``.
        steps, batch_size, lr: the budget and Adam's learning rate.
        val_data: optional held-out samples; their mean NLL is recorded every ``eval_every`` steps.
        transform: applied to each batch (e.g. fresh dequantization noise).
        clip: gradient-norm clipping (``None`` for none).
        schedule: ``"cosine"`` (decay to 0 over ``steps``) or ``"constant"``.
        dev: where to train; ``flowlib.device()`` by default. The flow is moved there.
        progress: show a progress bar (default: unless ``FLOWLIB_PROGRESS=0``).

    Under ``torchrun`` (after :func:`init_distributed`), ``batch_size`` is the global batch: each of
    the ``W`` processes takes ``batch_size / W`` samples and DistributedDataParallel averages the
    gradients, so the parameters follow the same path as one process with the whole batch.
    Under DDP ``flow(x)`` must return the log-density (as :class:`~flowlib.Flow` does).

    Returns:
        a :class:`History` (a list of per-step losses, plus validation losses and timing).

    A step whose loss is not finite raises ``FloatingPointError`` *before* the update, so the flow
    keeps its last good parameters.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"fit: steps and batch_size must be positive, got {steps}, {batch_size}")
    dev = torch.device(dev) if dev is not None else device()
    flow.to(dev)
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit: the flow has no trainable parameters")
    rank, world = _distributed()
    if batch_size % world:
        raise ValueError(f"fit: batch_size {batch_size} must be divisible by the {world} processes")
    model: nn.Module = flow
    if world > 1:
        # Every rank draws the same global batch (same seed) and keeps its own slice; DDP averages
        # the gradients, so the update equals a one-process step on the whole batch.
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(flow, device_ids=[dev.index] if dev.type == "cuda" else None)
    next_global = batches(data, batch_size, dev, generator)
    local = batch_size // world

    def loss_at(step: int) -> Tensor:
        x = next_global()
        if world > 1:
            x = x[rank * local:(rank + 1) * local]
        if transform is not None:
            x = transform(x)
        # Under DDP the module must be *called* (its hooks sync gradients): Flow.forward is log_prob.
        return -(model(x) if world > 1 else flow.log_prob(x)).mean()

    after_step = None
    if val_data is not None:
        from .metrics import nll

        val = val_data.to(dev)
        every = eval_every or max(steps // 20, 1)

        def after_step(step: int, hist: History) -> None:
            if (step + 1) % every == 0 or step + 1 == steps:
                hist.val_steps.append(step + 1)
                hist.val_loss.append(nll(flow, val if transform is None else transform(val)))
                flow.train()

    flow.train()
    try:
        return train_loop(loss_at, params, steps, lr, who="fit", dev=dev, schedule=schedule,
                          clip=clip, weight_decay=weight_decay, world=world, after_step=after_step,
                          progress=progress if rank == 0 else False)
    finally:
        flow.eval()
