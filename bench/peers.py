"""The same model built with flowlib and with each peer library (imported from the installed
packages only), behind one interface: ``log_prob(x)``, ``sample(n)``, ``sample_and_log_prob(n)``,
``parameters()``.

Architectures are matched layer for layer, each library building them the way its documentation
does:

* MAF: ``layers`` masked affine autoregressive transforms, each a MADE with the given hidden sizes
  and ReLU, the ordering reversed between consecutive layers, a standard normal base.
* IAF (distillation student): the same layers, inverted, so that sampling is one pass.
* RealNVP: ``layers`` affine couplings whose conditioning half alternates between the even and the
  odd coordinates, an MLP conditioner with the given hidden sizes and ReLU, a standard normal base.

What the libraries do differently inside a layer (the scale's parametrisation, initialisation) is
theirs and is part of what is compared. One difference changes costs and is noted in the book:
normflows evaluates the density of its ``MaskedAffineAutoregressive`` layer with the *sequential*
pass (its layers are written in the sampling direction), so its MAF is an IAF in cost.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

LIBS = ("flowlib", "zuko", "nflows", "normflows")


class Model(nn.Module):
    """A flow from any library with the two calls the benchmarks need."""

    def __init__(self, module: nn.Module, log_prob: Callable[[Tensor], Tensor],
                 sample: Callable[[int], Tensor],
                 sample_and_log_prob: Callable[[int], tuple[Tensor, Tensor]] | None = None):
        super().__init__()
        self.module = module
        self._log_prob, self._sample = log_prob, sample
        self._sample_and_log_prob = sample_and_log_prob

    def sample_and_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        """Reparametrized samples with their log-density (gradients flow through both)."""
        if self._sample_and_log_prob is None:
            raise NotImplementedError("this model has no joint sample_and_log_prob")
        return self._sample_and_log_prob(n)

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


def iaf(lib: str, dim: int, layers: int = 5, hidden: Sequence[int] = (64, 64)) -> Model:
    """The IAF: MAF layers inverted, so that ``sample_and_log_prob`` is one parallel pass per layer
    (the distillation student)."""
    hidden = tuple(hidden)
    if lib == "flowlib":
        import flowlib

        flow = flowlib.models.iaf(dim, layers=layers, hidden=hidden)
        return Model(flow, flow.log_prob, flow.sample, flow.sample_and_log_prob)
    if lib == "zuko":
        import zuko

        maf_ = zuko.flows.MAF(features=dim, transforms=layers, hidden_features=hidden)
        flow = zuko.lazy.Flow([t.inv for t in maf_.transform.transforms], maf_.base)
        return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)),
                     lambda n: flow().rsample_and_log_prob((n,)))
    if lib == "nflows":
        from nflows.distributions.normal import StandardNormal
        from nflows.flows.base import Flow
        from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
        from nflows.transforms.base import CompositeTransform, InverseTransform
        from nflows.transforms.permutations import ReversePermutation

        ts: list[nn.Module] = []
        for k in range(layers):
            ts.append(InverseTransform(MaskedAffineAutoregressiveTransform(
                features=dim, hidden_features=hidden[0], num_blocks=len(hidden) - 1,
                use_residual_blocks=False)))
            if k < layers - 1:
                ts.append(ReversePermutation(features=dim))
        flow = Flow(CompositeTransform(ts), StandardNormal([dim]))
        return Model(flow, flow.log_prob, flow.sample, flow.sample_and_log_prob)
    if lib == "normflows":
        # normflows' autoregressive layer already samples in one pass (see the module docstring).
        m = maf(lib, dim, layers, hidden)
        model = m.module
        return Model(model, model.log_prob, lambda n: model.sample(n)[0], model.sample)
    raise ValueError(f"unknown library {lib!r}")


# ---------------------------------------------------------------------------- RealNVP

class _NoContext(nn.Module):
    """nflows' couplings call their network as ``net(x, context)``; its MLP takes ``x`` only."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def realnvp(lib: str, dim: int, layers: int = 8, hidden: Sequence[int] = (64, 64)) -> Model:
    hidden = tuple(hidden)
    even = torch.arange(dim) % 2 == 0      # the first layer conditions on the even coordinates
    if lib == "flowlib":
        import flowlib

        flow = flowlib.models.realnvp(features=dim, layers=layers, hidden=hidden, mask=even)
        return Model(flow, flow.log_prob, flow.sample, flow.sample_and_log_prob)
    if lib == "zuko":
        import zuko

        flow = zuko.flows.RealNVP(features=dim, transforms=layers, hidden_features=hidden)
        return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))
    if lib == "nflows":
        from nflows.distributions.normal import StandardNormal
        from nflows.flows.base import Flow
        from nflows.nn.nets import MLP
        from nflows.transforms.base import CompositeTransform
        from nflows.transforms.coupling import AffineCouplingTransform

        ts = []
        for k in range(layers):
            mask = torch.where(even if k % 2 == 0 else ~even, -1, 1)   # -1 = conditioning part
            ts.append(AffineCouplingTransform(
                mask, lambda i, o: _NoContext(MLP((i,), (o,), hidden_sizes=list(hidden)))))
        flow = Flow(CompositeTransform(ts), StandardNormal([dim]))
        return Model(flow, flow.log_prob, flow.sample)
    if lib == "normflows":
        import normflows as nf

        # normflows' affine coupling (its Real NVP example) takes separate scale and shift MLPs.
        b = even.float()
        flows = []
        for k in range(layers):
            s = nf.nets.MLP([dim, *hidden, dim], init_zeros=True)
            t = nf.nets.MLP([dim, *hidden, dim], init_zeros=True)
            flows.append(nf.flows.MaskedAffineFlow(b if k % 2 == 0 else 1 - b, t, s))
        model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
        return Model(model, model.log_prob, lambda n: model.sample(n)[0])
    raise ValueError(f"unknown library {lib!r}")
