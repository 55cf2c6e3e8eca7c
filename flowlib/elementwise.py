r"""Elementwise bijections: each coordinate is transformed on its own, :math:`x_i = h(z_i)`.

Their Jacobian is diagonal, so :math:`\log|\det J| = \sum_i \log|h'(z_i)|`: cheap, but such a map
can never mix coordinates (chapter 1 shows what that costs). They work on any shape ``[B, ...]``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijection import Bijection, check_input, sum_except_batch

__all__ = ["ElementwiseAffine", "Exp", "Sigmoid", "Tanh", "LeakyReLU", "SinhArcsinh"]


def _log_cosh(u: Tensor) -> Tensor:
    # log cosh u = |u| + log(1 + e^{-2|u|}) - log 2, which never overflows.
    a = u.abs()
    return a + F.softplus(-2 * a) - math.log(2.0)


def _check_domain(ok: Tensor, name: str, what: str) -> None:
    if not bool(ok.all()):
        raise ValueError(f"{name}.inverse: input must lie in {what}; "
                         f"{int((~ok).sum())} value(s) do not")


class ElementwiseAffine(Bijection):
    r"""Learned per-coordinate scale and shift.

    * forward: :math:`x = e^{s} \odot z + b`
    * inverse: :math:`z = e^{-s} \odot (x - b)`
    * log-det (forward): :math:`\sum_i s_i`

    The scale is stored as its logarithm :math:`s`, so it is positive for any parameter value.
    """

    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(self.shape))
        self.shift = nn.Parameter(torch.zeros(self.shape))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, dims=self.shape, name="ElementwiseAffine", finite=False)
        x = z * torch.exp(self.log_scale) + self.shift
        return x, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, dims=self.shape, name="ElementwiseAffine", finite=False)
        z = (x - self.shift) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])


class Exp(Bijection):
    r"""The exponential, :math:`\mathbb R \to (0, \infty)` (a normal base gives a log-normal).

    * forward: :math:`x = e^{z}`, inverse: :math:`z = \log x` (requires :math:`x > 0`)
    * log-det (forward): :math:`\sum_i z_i`
    """

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.exp(z), sum_except_batch(z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_domain(x > 0, "Exp", "(0, inf)")
        z = torch.log(x)
        return z, -sum_except_batch(z)


class Sigmoid(Bijection):
    r"""The logistic sigmoid, :math:`\mathbb R \to (0, 1)`; its inverse is the logit used in
    RealNVP's pre-processing (``Sigmoid().inv``).

    * forward: :math:`x = \sigma(z) = 1/(1+e^{-z})`, inverse: :math:`z = \log x - \log(1-x)`
    * log-det (forward): :math:`\sum_i \log\sigma(z_i) + \log\sigma(-z_i)
      = -\sum_i \operatorname{softplus}(z_i) + \operatorname{softplus}(-z_i)`
    """

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(z), -sum_except_batch(F.softplus(z) + F.softplus(-z))

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_domain((x > 0) & (x < 1), "Sigmoid", "(0, 1)")
        z = torch.log(x) - torch.log1p(-x)
        return z, sum_except_batch(F.softplus(z) + F.softplus(-z))


class Tanh(Bijection):
    r"""The hyperbolic tangent, :math:`\mathbb R \to (-1, 1)`.

    * forward: :math:`x = \tanh z`, inverse: :math:`z = \operatorname{artanh} x`
    * log-det (forward): :math:`\sum_i \log(1 - \tanh^2 z_i) = \sum_i 2(\log 2 - z_i -
      \operatorname{softplus}(-2 z_i))` (the stable form)
    """

    @staticmethod
    def _ladj(z: Tensor) -> Tensor:
        return sum_except_batch(2 * (math.log(2.0) - z - F.softplus(-2 * z)))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.tanh(z), self._ladj(z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_domain(x.abs() < 1, "Tanh", "(-1, 1)")
        z = torch.atanh(x)
        return z, -self._ladj(z)


class LeakyReLU(Bijection):
    r"""The leaky ReLU with slope :math:`a \in (0, 1]` below zero, a piecewise-linear bijection.

    * forward: :math:`x = z` if :math:`z \ge 0`, else :math:`a z`
    * inverse: :math:`z = x` if :math:`x \ge 0`, else :math:`x / a`
    * log-det (forward): :math:`\log a \cdot \#\{i : z_i < 0\}`
    """

    def __init__(self, negative_slope: float = 0.1):
        super().__init__()
        if not 0 < negative_slope <= 1:
            raise ValueError(f"LeakyReLU: negative_slope must lie in (0, 1], got {negative_slope}")
        self.negative_slope = float(negative_slope)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        neg = z < 0
        x = torch.where(neg, z * self.negative_slope, z)
        return x, sum_except_batch(neg.to(z.dtype)) * math.log(self.negative_slope)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        neg = x < 0
        z = torch.where(neg, x / self.negative_slope, x)
        return z, -sum_except_batch(neg.to(x.dtype)) * math.log(self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class SinhArcsinh(Bijection):
    r"""A learned monotone elementwise map with heavier or lighter tails and skew
    (the sinh-arcsinh transformation of Jones & Pewsey, 2009).

    With :math:`b = e^{\beta} > 0` and shift :math:`a` per coordinate:

    * forward: :math:`x = \sinh(b \operatorname{asinh}(z) + a)`
    * inverse: :math:`z = \sinh\big((\operatorname{asinh}(x) - a)/b\big)`
    * log-det (forward): :math:`\sum_i \log\cosh(u_i) + \log b_i - \tfrac12\log(1 + z_i^2)`,
      :math:`u_i = b_i \operatorname{asinh}(z_i) + a_i`

    :math:`\beta = a = 0` is the identity.
    """

    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_tail = nn.Parameter(torch.zeros(self.shape))
        self.skew = nn.Parameter(torch.zeros(self.shape))

    def _ladj(self, z: Tensor, u: Tensor) -> Tensor:
        return sum_except_batch(_log_cosh(u) + self.log_tail - 0.5 * torch.log1p(z * z))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, dims=self.shape, name="SinhArcsinh", finite=False)
        u = torch.exp(self.log_tail) * torch.asinh(z) + self.skew
        return torch.sinh(u), self._ladj(z, u)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, dims=self.shape, name="SinhArcsinh", finite=False)
        u = torch.asinh(x)
        z = torch.sinh((u - self.skew) * torch.exp(-self.log_tail))
        return z, -self._ladj(z, u)
