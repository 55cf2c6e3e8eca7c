r"""Base distributions and the :class:`Flow` that pushes one through a bijection.

A flow defines :math:`x = f(z)` with :math:`z \sim p_Z`; by the change of variables

.. math::

    \log p_X(x) = \log p_Z\big(f^{-1}(x)\big) + \log\left|\det \frac{\partial f^{-1}}{\partial x}\right|
                = \log p_Z(z) - \log\left|\det \frac{\partial f}{\partial z}\right| .

Base distributions are modules so that ``flow.to(device)`` moves them with the layers.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .bijection import Bijection, Compose, check_input, sum_except_batch

__all__ = ["BaseDistribution", "StandardNormal", "DiagonalGaussian", "StandardLogistic", "Flow"]

_LOG_2PI = math.log(2 * math.pi)


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


class BaseDistribution(nn.Module):
    """A density on ``event_shape`` with ``log_prob`` (summed over the event) and ``sample``.

    ``sample(n, temperature=T)`` draws from the distribution with its scale multiplied by ``T``
    (Glow's reduced-temperature sampling; ``T=0`` gives the mode).
    """

    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = _shape(shape)
        # A buffer so that the distribution knows the device and dtype it was moved to.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def features(self) -> int:
        return math.prod(self.event_shape)

    def _check(self, z: Tensor) -> None:
        # Shapes only. Data are checked for NaN/inf once, where they enter (Flow.log_prob, fit);
        # checking again here would cost a second device synchronisation on every step.
        check_input(z, dims=self.event_shape, name=type(self).__name__, finite=False)

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        raise NotImplementedError

    def sample_and_log_prob(self, n: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        z = self.sample(n, temperature)
        return z, self.log_prob(z)

    def _noise_shape(self, n: int) -> tuple[int, ...]:
        if int(n) < 1:
            raise ValueError(f"sample: n must be a positive integer, got {n}")
        return (int(n), *self.event_shape)


class StandardNormal(BaseDistribution):
    r""":math:`\mathcal N(0, I)`: :math:`\log p(z) = -\tfrac12 \|z\|^2 - \tfrac D2 \log 2\pi`."""

    def log_prob(self, z: Tensor) -> Tensor:
        self._check(z)
        return -0.5 * sum_except_batch(z * z) - 0.5 * self.features * _LOG_2PI

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor
        return temperature * torch.randn(self._noise_shape(n), device=a.device, dtype=a.dtype)


class DiagonalGaussian(BaseDistribution):
    r""":math:`\mathcal N(\mu, \mathrm{diag}(\sigma^2))` with learnable :math:`\mu, \log\sigma`.

    :math:`\log p(z) = \sum_i -\tfrac12 ((z_i-\mu_i)/\sigma_i)^2 - \log\sigma_i - \tfrac12\log 2\pi`.
    """

    def __init__(self, shape: int | Sequence[int], learnable: bool = True):
        super().__init__(shape)
        loc = torch.zeros(self.event_shape)
        log_scale = torch.zeros(self.event_shape)
        if learnable:
            self.loc, self.log_scale = nn.Parameter(loc), nn.Parameter(log_scale)
        else:
            self.register_buffer("loc", loc)
            self.register_buffer("log_scale", log_scale)

    def log_prob(self, z: Tensor) -> Tensor:
        self._check(z)
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return sum_except_batch(-0.5 * u * u - self.log_scale) - 0.5 * self.features * _LOG_2PI

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        eps = torch.randn(self._noise_shape(n), device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + temperature * torch.exp(self.log_scale) * eps


class StandardLogistic(BaseDistribution):
    r"""Standard logistic per coordinate (NICE's prior): :math:`\log p(z) = -\sum_i \big(
    \operatorname{softplus}(z_i) + \operatorname{softplus}(-z_i)\big)`; sampled as
    :math:`\log u - \log(1-u)`, :math:`u \sim U(0,1)`."""

    def log_prob(self, z: Tensor) -> Tensor:
        self._check(z)
        return -sum_except_batch(nn.functional.softplus(z) + nn.functional.softplus(-z))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor
        u = torch.rand(self._noise_shape(n), device=a.device, dtype=a.dtype)
        u = u.clamp(torch.finfo(a.dtype).tiny, 1 - torch.finfo(a.dtype).eps)
        return temperature * (torch.log(u) - torch.log1p(-u))


class Flow(nn.Module):
    r"""A normalizing flow: a base distribution pushed through a bijection, :math:`x = f(z)`.

    * ``log_prob(x)`` runs the normalizing direction: :math:`\log p_Z(f^{-1}(x)) + \ell_{f^{-1}}(x)`.
    * ``sample(n, temperature)`` runs the generative direction on base samples (no gradient).
    * ``sample_and_log_prob(n)`` gives samples *and* their log-density from the generative pass
      alone, :math:`\log p_X(x) = \log p_Z(z) - \ell_f(z)`, with no inversion (what makes the IAF a
      cheap student in density distillation).
    * ``trace(x)`` / ``trace_samples(n)`` return the value after every layer, for plots.

    Example:
        >>> flow = Flow(Compose(ElementwiseAffine(2)), StandardNormal(2))
        >>> flow.log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(self, bijection: Bijection, base: BaseDistribution):
        super().__init__()
        if not isinstance(bijection, Bijection):
            raise TypeError(f"Flow: bijection must be a Bijection, got {type(bijection).__name__}")
        if not isinstance(base, BaseDistribution):
            raise TypeError(f"Flow: base must be a BaseDistribution, got {type(base).__name__}")
        self.bijection = bijection
        self.base = base

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`, so ``flow(x)`` is the log-likelihood."""
        return self.log_prob(x, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        check_input(x, dims=self.event_shape, name="Flow.log_prob")
        z, ladj = self.bijection.inverse(x, context)
        return self.base.log_prob(z) + ladj

    def sample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` samples, **without gradient** (as ``torch.distributions``' ``sample``): the
        sequential direction of an autoregressive layer then takes its incremental form
        (:mod:`flowlib.sequential`). :meth:`sample_and_log_prob` gives reparametrized samples."""
        with torch.no_grad():
            z = self.base.sample(n, temperature)
            return self.bijection(z, context)[0]

    def sample_and_log_prob(self, n: int, temperature: float = 1.0,
                            context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_pz = self.base.sample_and_log_prob(n, temperature)
        x, ladj = self.bijection(z, context)
        return x, log_pz - ladj

    def _layers(self) -> Compose:
        return self.bijection if isinstance(self.bijection, Compose) else Compose(self.bijection)

    def trace(self, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """The data after each layer of the normalizing direction: ``[x, ..., z]``."""
        check_input(x, dims=self.event_shape, name="Flow.trace")
        return self._layers().trace_inverse(x, context)

    def trace_samples(self, n: int, temperature: float = 1.0,
                      context: Tensor | None = None) -> list[Tensor]:
        """Base samples after each layer of the generative direction: ``[z, ..., x]``."""
        return self._layers().trace_forward(self.base.sample(n, temperature), context)
