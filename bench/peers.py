"""The same model built with flowlib and with each peer library (imported from the installed
packages only), behind one interface: ``log_prob(x)``, ``sample(n)``, ``parameters()``.

Architectures are matched layer for layer: a MAF is ``layers`` masked affine autoregressive
transforms, each a MADE with the given hidden sizes and ReLU, with order reversals between them and
a standard normal base; the coupling flow is ``layers`` affine couplings with alternating halves
and an MLP conditioner of the given hidden sizes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

LIBS = ("flowlib", "zuko", "nflows", "normflows")


class Model(nn.Module):
    """A flow from any library with the two calls the benchmarks need."""

    def __init__(self, module: nn.Module, log_prob: Callable[[Tensor], Tensor],
                 sample: Callable[[int], Tensor]):
        super().__init__()
        self.module = module
        self._log_prob, self._sample = log_prob, sample

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self._sample(n)


# ---------------------------------------------------------------------------- MAF

def maf(lib: str, dim: int, layers: int = 5, hidden: Sequence[int] = (64, 64)) -> Model:
    hidden = tuple(hidden)
    if lib == "flowlib":
        import flowlib

        flow = flowlib.models.maf(dim, layers=layers, hidden=hidden)
        return Model(flow, flow.log_prob, flow.sample)
    if lib == "zuko":
        import zuko

        flow = zuko.flows.MAF(features=dim, transforms=layers, hidden_features=hidden)
        return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))
    if lib in ("nflows", "normflows"):
        # normflows' MAF layer is nflows' transform under another name; both MADEs have
        # len(hidden) hidden layers with use_residual_blocks=False and num_blocks = len - 1.
        from nflows.distributions.normal import StandardNormal
        from nflows.flows.base import Flow
        from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
        from nflows.transforms.base import CompositeTransform
        from nflows.transforms.permutations import ReversePermutation

        if len(set(hidden)) != 1:
            raise ValueError("nflows' MADE has equal hidden layers")
        if lib == "nflows":
            ts: list[nn.Module] = []
            for k in range(layers):
                ts.append(MaskedAffineAutoregressiveTransform(
                    features=dim, hidden_features=hidden[0], num_blocks=len(hidden) - 1,
                    use_residual_blocks=False))
                if k < layers - 1:
                    ts.append(ReversePermutation(features=dim))
            flow = Flow(CompositeTransform(ts), StandardNormal([dim]))
            return Model(flow, flow.log_prob, flow.sample)
        import normflows as nf

        flows: list[nn.Module] = []
        for k in range(layers):
            flows.append(nf.flows.MaskedAffineAutoregressive(
                dim, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False))
            if k < layers - 1:
                flows.append(nf.flows.Permute(dim, mode="swap" if dim == 2 else "shuffle"))
        model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
        return Model(model, model.log_prob, lambda n: model.sample(n)[0])
    raise ValueError(f"unknown library {lib!r}")


def iaf_sampler(lib: str, dim: int, layers: int = 5, hidden: Sequence[int] = (64, 64)) -> Model:
    """The IAF counterpart (parallel sampling, sequential density) where the library has one."""
    if lib == "flowlib":
        import flowlib

        flow = flowlib.models.iaf(dim, layers=layers, hidden=tuple(hidden))
        return Model(flow, flow.log_prob, flow.sample)
    raise ValueError(f"{lib}: no IAF in the benchmark")
