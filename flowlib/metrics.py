r"""Evaluation: negative log-likelihood, bits per dimension and KL to a known density."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .data import Estimate

__all__ = ["nll", "bits_per_dim", "kl_to_truth"]


@torch.no_grad()
def _log_prob_batched(flow: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    was_training = flow.training
    flow.eval()  # batch norm uses its running statistics, as at test time
    try:
        dev = next(flow.parameters(), torch.empty(0)).device
        out = [flow.log_prob(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        flow.train(was_training)
    return torch.cat(out)


def nll(flow: nn.Module, x: Tensor, batch_size: int = 4096) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1N \sum_n \log q(x_n)` in nats."""
    return float(-_log_prob_batched(flow, x, batch_size).double().mean())


def bits_per_dim(nll_nats: float, features: int, levels: int | None = None) -> float:
    r"""Convert a per-sample NLL in nats to bits per dimension.

    For data dequantized to :math:`x = (v + u)/L \in [0,1)^D` (``levels`` :math:`= L`), the
    density of :math:`y = v + u` is :math:`q(x)/L^D`, so

    .. math:: \text{bits/dim} = \frac{\text{NLL}_x + D \log L}{D \log 2}.
    """
    extra = features * math.log(levels) if levels is not None else 0.0
    return (nll_nats + extra) / (features * math.log(2))


def kl_to_truth(flow: nn.Module, density, n: int = 50_000, seed: int = 123,
                batch_size: int = 8192) -> Estimate:
    r""":math:`\mathrm{KL}(p\,\|\,q) = \mathbb E_{x\sim p}[\log p(x) - \log q(x)]` in nats, by Monte
    Carlo on ``n`` fresh samples of the true density, with its standard error. It equals the
    model's test NLL minus the true entropy."""
    g = torch.Generator().manual_seed(seed)
    x = density.sample(n, generator=g)
    diff = density.log_prob(x.double()) - _log_prob_batched(flow, x, batch_size).double()
    return Estimate(float(diff.mean()), float(diff.std() / math.sqrt(n)))
