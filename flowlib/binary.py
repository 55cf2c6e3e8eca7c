r"""Autoregressive models of binary vectors: FVSBN, NADE and a Bernoulli MADE (chapter 5).

These are *not* flows: they model :math:`x \in \{0, 1\}^D` directly with the chain rule,

.. math:: \log p(x) = \sum_{i=1}^{D} \log p(x_i \mid x_{<i}), \qquad
          p(x_i = 1 \mid x_{<i}) = \sigma(\ell_i(x_{<i})),

so each model only says how it computes the logits :math:`\ell_i` from the preceding bits
(natural order: for images, raster order). ``log_prob`` is exact and needs one parallel pass
(teacher forcing); ``sample`` is ancestral: bit after bit, D steps. All three have
``log_prob`` so that :func:`flowlib.train.fit` trains them by maximum likelihood.

* :class:`FVSBN` (fully visible sigmoid belief network; Neal, 1992; Frey, 1998): logistic
  regression on the preceding bits, :math:`\ell_i = b_i + \sum_{j<i} W_{ij} x_j`,
  :math:`O(D^2)` parameters.
* :class:`NADE` (Larochelle & Murray, 2011): one hidden layer per conditional, with the input
  weights *tied* across conditionals, :math:`h_i = \sigma(c + W_{:,<i} x_{<i})`,
  :math:`\ell_i = b_i + V_i \cdot h_i`; :math:`O(DH)` parameters and :math:`O(DH)` time for all
  D conditionals, because :math:`a_{i+1} = a_i + W_{:,i} x_i`.
* :class:`BernoulliMADE` (Germain et al., 2015): the logits are the output of a :class:`MADE`.
* :class:`BernoulliLSTM`: a recurrent network reads the bits one after another; its state
  summarises :math:`x_{<i}` with weights shared across positions, but even ``log_prob`` is a
  sequential loop over the D positions.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import MADE

__all__ = ["BinaryAutoregressive", "FVSBN", "NADE", "BernoulliMADE", "BernoulliLSTM", "binarize"]


def binarize(v: Tensor, threshold: float = 8.0) -> Tensor:
    """Bits ``1.0`` where ``v >= threshold`` (e.g. the digits' levels 0..16 at 8), else ``0.0``."""
    return (v >= threshold).to(torch.get_default_dtype() if not v.is_floating_point() else v.dtype)


class BinaryAutoregressive(nn.Module):
    r"""Base class: a subclass provides ``logits(x) -> [B, D]``, where logit :math:`i` may depend
    only on :math:`x_{<i}` (natural order). This class adds the exact log-likelihood

    .. math:: \log p(x) = \sum_i x_i \log\sigma(\ell_i) + (1 - x_i)\log\sigma(-\ell_i)
                       = -\sum_i \operatorname{BCE}(\ell_i, x_i),

    ancestral ``sample(n)`` (D calls of ``logits``; a subclass may do better) and
    ``conditionals(x)`` = :math:`p(x_i = 1 \mid x_{<i})`.
    """

    def __init__(self, features: int):
        super().__init__()
        if int(features) < 1:
            raise ValueError(f"{type(self).__name__}: features must be positive, got {features}")
        self.features = int(features)

    def _check(self, x: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected binary data [B, {self.features}], got {got}")
        if not ((x == 0) | (x == 1)).all():
            raise ValueError(f"{name}: data must be 0/1 bits (binarize first), got values in "
                             f"[{float(x.min())}, {float(x.max())}]")

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        self._check(x)
        x = x.to(self._dtype())
        return -F.binary_cross_entropy_with_logits(self.logits(x), x, reduction="none").sum(1)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x)

    def conditionals(self, x: Tensor) -> Tensor:
        r""":math:`p(x_i = 1 \mid x_{<i})` for every :math:`i` at once, ``[B, D]``."""
        self._check(x)
        return torch.sigmoid(self.logits(x.to(self._dtype())))

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling, ``[n, D]`` bits: bit ``i`` is drawn once bits ``< i`` are known."""
        if int(n) < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n}")
        x = torch.zeros(int(n), self.features, dtype=self._dtype(), device=self._device())
        for i in range(self.features):
            p = torch.sigmoid(self.logits(x)[:, i])
            x[:, i] = _bernoulli(p, generator)
        return x


def _bernoulli(p: Tensor, generator: torch.Generator | None) -> Tensor:
    # Draw on the CPU generator when one is given, so that samples are reproducible anywhere.
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device)
    return (u < p).to(p.dtype)


class FVSBN(BinaryAutoregressive):
    r"""Fully visible sigmoid belief network: each bit is a logistic regression on the bits
    before it,

    .. math:: p(x_i = 1 \mid x_{<i}) = \sigma\Big(b_i + \sum_{j<i} W_{ij} x_j\Big),

    with :math:`W` strictly lower triangular (a fixed mask): :math:`D(D+1)/2` parameters used.
    """

    def __init__(self, features: int):
        super().__init__(features)
        d = self.features
        self.weight = nn.Parameter(torch.zeros(d, d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("mask", torch.ones(d, d).tril(-1))

    def logits(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if int(n) < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n}")
        w = self.weight * self.mask
        x = torch.zeros(int(n), self.features, dtype=self._dtype(), device=self._device())
        for i in range(self.features):
            x[:, i] = _bernoulli(torch.sigmoid(self.bias[i] + x @ w[i]), generator)
        return x

    def extra_repr(self) -> str:
        return f"features={self.features}"


class NADE(BinaryAutoregressive):
    r"""Neural autoregressive distribution estimator with tied input weights
    :math:`W \in \mathbb R^{H \times D}`:

    .. math:: a_i = c + \sum_{j<i} W_{:,j}\, x_j, \quad h_i = \sigma(a_i), \quad
              p(x_i = 1 \mid x_{<i}) = \sigma(b_i + V_i \cdot h_i).

    Because every conditional uses the *same* :math:`W` and :math:`c`, :math:`a_{i+1} = a_i +
    W_{:,i} x_i`: all D hidden layers cost :math:`O(DH)` (an exclusive cumulative sum), the cost
    of *one* ordinary hidden layer, both for ``log_prob`` and for ancestral ``sample``.
    """

    def __init__(self, features: int, hidden: int = 64, generator: torch.Generator | None = None):
        super().__init__(features)
        d, h = self.features, int(hidden)
        if h < 1:
            raise ValueError(f"NADE: hidden must be positive, got {hidden}")
        self.hidden = h
        self.W = nn.Parameter(torch.randn(h, d, generator=generator) / d ** 0.5)
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, h, generator=generator) / h ** 0.5)
        self.b = nn.Parameter(torch.zeros(d))

    def logits(self, x: Tensor) -> Tensor:
        contrib = x[:, :, None] * self.W.T[None]          # [B, D, H]: W_{:,j} x_j
        a = self.c + contrib.cumsum(1) - contrib          # exclusive sum: j < i only
        return (torch.sigmoid(a) * self.V).sum(-1) + self.b

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if int(n) < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n}")
        x = torch.zeros(int(n), self.features, dtype=self._dtype(), device=self._device())
        a = self.c.expand(int(n), self.hidden).clone()
        for i in range(self.features):
            p = torch.sigmoid(self.b[i] + torch.sigmoid(a) @ self.V[i])
            x[:, i] = _bernoulli(p, generator)
            a += x[:, i:i + 1] * self.W[:, i]              # the weight-tying update
        return x

    def extra_repr(self) -> str:
        return f"features={self.features}, hidden={self.hidden}"


class BernoulliMADE(BinaryAutoregressive):
    r"""A :class:`MADE` whose D outputs are the logits of the conditionals (natural order
    unless ``order`` says otherwise; sampling then follows that order)."""

    def __init__(self, features: int, hidden: Sequence[int] = (256,),
                 order: str | Sequence[int] | Tensor = "natural", activation: str = "relu",
                 generator: torch.Generator | None = None):
        super().__init__(features)
        self.made = MADE(features, hidden, outputs=1, order=order, activation=activation,
                         generator=generator)

    def logits(self, x: Tensor) -> Tensor:
        return self.made(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if int(n) < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n}")
        x = torch.zeros(int(n), self.features, dtype=self._dtype(), device=self._device())
        for i in torch.argsort(self.made.order).tolist():  # inputs in their autoregressive order
            p = torch.sigmoid(self.made(x)[:, i])
            x[:, i] = _bernoulli(p, generator)
        return x


class BernoulliLSTM(BinaryAutoregressive):
    r"""An LSTM read over the bits in order (an RNN language model on a vocabulary of two):

    .. math:: h_i = \operatorname{LSTM}\big(h_{i-1}, [x_{i-1}, e_i]\big), \qquad
              p(x_i = 1 \mid x_{<i}) = \sigma(w \cdot h_i + b),

    with :math:`x_0 = 0` and :math:`e_i` the one-hot code of position :math:`i` (so the network
    need not count pixels to know where it is in the image). Weights are tied across positions,
    as in NADE, but :math:`h_i` needs :math:`h_{i-1}`: the likelihood, not only sampling, is a
    loop of D steps.
    """

    def __init__(self, features: int, hidden: int = 32):
        super().__init__(features)
        if int(hidden) < 1:
            raise ValueError(f"BernoulliLSTM: hidden must be positive, got {hidden}")
        self.hidden = int(hidden)
        self.lstm = nn.LSTM(1 + self.features, self.hidden, batch_first=True)
        self.out = nn.Linear(self.hidden, 1)

    def _positions(self, n: int, x: Tensor) -> Tensor:
        return torch.eye(self.features, dtype=x.dtype, device=x.device).expand(n, -1, -1)

    def logits(self, x: Tensor) -> Tensor:
        prev = F.pad(x[:, :-1], (1, 0))                   # [0, x_1, ..., x_{D-1}]
        h, _ = self.lstm(torch.cat([prev[..., None], self._positions(len(x), x)], -1))
        return self.out(h).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if int(n) < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n}")
        x = torch.zeros(int(n), self.features, dtype=self._dtype(), device=self._device())
        pos = self._positions(int(n), x)
        prev = torch.zeros(int(n), 1, dtype=x.dtype, device=x.device)
        state = None
        for i in range(self.features):   # one LSTM step per bit, carrying the state
            h, state = self.lstm(torch.cat([prev, pos[:, i]], -1)[:, None], state)
            x[:, i] = _bernoulli(torch.sigmoid(self.out(h[:, 0]).squeeze(-1)), generator)
            prev = x[:, i:i + 1]
        return x

    def extra_repr(self) -> str:
        return f"features={self.features}, hidden={self.hidden}"
