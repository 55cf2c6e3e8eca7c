r"""Continuous-time flows: a flow defined by an ordinary differential equation, and flow matching.

A velocity field :math:`v_\theta(h, t)` defines the ODE :math:`\frac{dh}{dt} = v_\theta(h(t), t)`
on :math:`t \in [0, 1]`, from the base (:math:`t = 0`) to the data (:math:`t = 1`)
(Chen et al., 2018; Grathwohl et al., 2019):

* **forward** (generative, ``forward``): :math:`x = h(1)` with :math:`h(0) = z`;
* **inverse** (normalizing, ``inverse``): :math:`z = h(0)`, integrating backwards from
  :math:`h(1) = x`;
* **log-determinant** by the *instantaneous change of variables*,
  :math:`\frac{d}{dt} \log|\det \partial h(t)/\partial h(0)| = \operatorname{tr}
  \frac{\partial v_\theta}{\partial h}(h(t), t)`, so

  .. math::

      \log\left|\det \frac{\partial x}{\partial z}\right| = \int_0^1
      \operatorname{tr} \frac{\partial v_\theta}{\partial h}(h(t), t)\, dt ,
      \qquad \log q(x) = \log p_Z(z) - \int_0^1 \operatorname{tr} \frac{\partial v_\theta}{\partial h}\, dt .

  Only a *trace* is needed, never a determinant: ``trace="exact"`` takes it from :math:`D`
  autograd passes (small :math:`D`), ``trace="hutchinson"`` estimates it by
  :math:`\epsilon^\top \frac{\partial v}{\partial h} \epsilon` with one Rademacher
  :math:`\epsilon` per sample, fixed along the trajectory (FFJORD's estimator; stochastic, so the
  contract checks use the exact trace).

The ODE and the log-determinant are integrated together with the classical Runge-Kutta method
(RK4) on ``steps`` equal steps. The computed maps are then the RK4 maps: the round trip and the
log-determinant are exact only up to the integration error, :math:`O(h^4)` with
:math:`h = 1/\text{steps}`; ``flowlib.testing.examples`` uses a gentle field and enough steps for
the contract's tolerances. Any :math:`v_\theta` gives an invertible map (no triangular structure, no
Lipschitz constraint beyond the ODE's smoothness), which is what continuous flows buy; every
density evaluation costs ``4 * steps`` network evaluations and a trace, which is what they cost.

**Flow matching** (Lipman et al., 2023) trains :math:`v_\theta` *without* solving the ODE. With
:math:`x_0 \sim \mathcal N(0, I)`, :math:`x_1 \sim p_{\text{data}}` and :math:`t \sim U[0, 1]`, the
conditional path :math:`x_t = (1 - (1 - \sigma_{\min}) t)\, x_0 + t\, x_1` has the velocity
:math:`u_t = x_1 - (1 - \sigma_{\min}) x_0`, and the regression

.. math:: \mathcal L(\theta) = \mathbb E_{t, x_0, x_1} \big\| v_\theta(x_t, t) - u_t \big\|^2

has the same minimiser as the regression on the (intractable) marginal velocity that carries
:math:`\mathcal N(0, I)` to :math:`p_{\text{data}}`. After training, :class:`ContinuousFlow` of the
field gives samples *and* exact (up to the solver) log-densities.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .bijection import Bijection, check_input
from .distributions import Flow, StandardNormal
from .train import History, batches, device as _device, train_loop

__all__ = ["VelocityField", "ContinuousFlow", "flow_matching_loss", "fit_flow_matching",
           "continuous_flow"]


class VelocityField(nn.Module):
    r"""An MLP :math:`v_\theta(h, t)`: the input is :math:`h` concatenated with the time features
    :math:`(t, \sin 2\pi k t, \cos 2\pi k t)_{k=1..K}`; smooth activations (SiLU), because the
    ODE solver and the trace need derivatives. ``forward(h, t)`` with ``t`` a float or a tensor
    ``[B]`` / ``[B, 1]``."""

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), time_frequencies: int = 2):
        super().__init__()
        self.features, self.frequencies = int(features), int(time_frequencies)
        sizes = [self.features + 1 + 2 * self.frequencies, *map(int, hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(sizes[-1], self.features))
        self.net = nn.Sequential(*layers)

    def time_features(self, t: Tensor | float, h: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=h.dtype, device=h.device)
        t = t.reshape(-1, 1).expand(h.shape[0], 1) if t.numel() > 1 else t.reshape(1, 1).expand(h.shape[0], 1)
        k = torch.arange(1, self.frequencies + 1, dtype=h.dtype, device=h.device)
        angle = 2 * math.pi * t * k
        return torch.cat([t, torch.sin(angle), torch.cos(angle)], 1)

    def forward(self, h: Tensor, t: Tensor | float) -> Tensor:
        return self.net(torch.cat([h, self.time_features(t, h)], 1))


def _divergence(field: nn.Module, h: Tensor, t: float, probe: Tensor | None) -> tuple[Tensor, Tensor]:
    r"""``(v, tr dv/dh)`` at ``(h, t)``; the exact trace (``probe=None``, :math:`D` passes) or
    Hutchinson's :math:`\epsilon^\top (\partial v/\partial h)\, \epsilon`. Differentiable when
    gradients are enabled."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        hi = h if h.requires_grad else h.detach().requires_grad_(True)
        v = field(hi, t)
        if probe is None:
            div = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
            for i in range(h.shape[1]):
                div = div + torch.autograd.grad(v[:, i].sum(), hi, create_graph=create_graph,
                                                retain_graph=True)[0][:, i]
        else:
            div = (torch.autograd.grad(v, hi, probe, create_graph=create_graph, retain_graph=True)[0]
                   * probe).sum(1)
    if not create_graph:
        v, div = v.detach(), div.detach()
    return v, div


class ContinuousFlow(Bijection):
    r"""The flow of the ODE :math:`dh/dt = v(h, t)` from :math:`t = 0` (base) to :math:`t = 1`
    (data), integrated with RK4 together with the log-determinant
    :math:`\int_0^1 \operatorname{tr}\, \partial v / \partial h\, dt` (module docstring).

    Args:
        field: a module ``field(h, t) -> v`` with ``h [B, D]``, e.g. :class:`VelocityField`.
        features: :math:`D` (vectors ``[B, D]`` only).
        steps: RK4 steps on :math:`[0, 1]`.
        trace: ``"exact"`` or ``"hutchinson"`` (one Rademacher probe per sample, stochastic).
    """

    def __init__(self, field: nn.Module, features: int, steps: int = 32, trace: str = "exact"):
        super().__init__()
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"ContinuousFlow: trace must be 'exact' or 'hutchinson', got {trace!r}")
        if steps < 1:
            raise ValueError(f"ContinuousFlow: steps must be >= 1, got {steps}")
        self.field, self.features, self.steps, self.trace = field, int(features), int(steps), trace

    def integrate(self, h: Tensor, t0: float = 0.0, t1: float = 1.0) -> tuple[Tensor, Tensor]:
        """RK4 from ``t0`` to ``t1`` (``steps`` steps per unit of time, at least one) of the state
        and the log-determinant, dl/dt = tr dv/dh; returns ``(h(t1), l(t1) - l(t0))``. Sub-intervals
        give the trajectory, e.g. for plots."""
        probe = None
        if self.trace == "hutchinson":
            probe = torch.randint(0, 2, h.shape, device="cpu").to(h) * 2 - 1
        n = max(1, round(self.steps * abs(t1 - t0)))
        dt = (t1 - t0) / n
        ladj = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        for k in range(n):
            t = t0 + k * dt
            v1, d1 = _divergence(self.field, h, t, probe)
            v2, d2 = _divergence(self.field, h + 0.5 * dt * v1, t + 0.5 * dt, probe)
            v3, d3 = _divergence(self.field, h + 0.5 * dt * v2, t + 0.5 * dt, probe)
            v4, d4 = _divergence(self.field, h + dt * v3, t + dt, probe)
            h = h + dt / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
            ladj = ladj + dt / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
        return h, ladj

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, dims=(self.features,), ndim=(2,), name=type(self).__name__)
        return self.integrate(z, 0.0, 1.0)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, dims=(self.features,), ndim=(2,), name=type(self).__name__)
        # integrating from 1 to 0 accumulates int_1^0 tr = -int_0^1 tr: the inverse's ladj
        return self.integrate(x, 1.0, 0.0)

    def extra_repr(self) -> str:
        return f"features={self.features}, steps={self.steps}, trace={self.trace!r}"


def continuous_flow(field: nn.Module, features: int, steps: int = 32, trace: str = "exact") -> Flow:
    """A :class:`ContinuousFlow` of ``field`` on a standard normal base."""
    return Flow(ContinuousFlow(field, features, steps, trace), StandardNormal(features))


def flow_matching_loss(field: nn.Module, x1: Tensor, sigma_min: float = 0.0,
                       generator: torch.Generator | None = None) -> Tensor:
    r"""The conditional flow-matching loss of Lipman et al. (2023), per batch (a scalar):
    :math:`\frac1B \sum_b \| v(x_t, t) - (x_1 - (1 - \sigma_{\min}) x_0) \|^2` with
    :math:`x_t = (1 - (1 - \sigma_{\min}) t) x_0 + t x_1`, :math:`x_0 \sim \mathcal N(0, I)`,
    :math:`t \sim U[0, 1]` drawn per sample."""
    check_input(x1, ndim=(2,), name="flow_matching_loss")
    x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device="cpu").to(x1.device) \
        if generator is not None else torch.randn_like(x1)
    t = torch.rand(x1.shape[0], 1, generator=generator, dtype=x1.dtype, device="cpu").to(x1.device) \
        if generator is not None else torch.rand(x1.shape[0], 1, dtype=x1.dtype, device=x1.device)
    xt = (1 - (1 - sigma_min) * t) * x0 + t * x1
    target = x1 - (1 - sigma_min) * x0
    return ((field(xt, t) - target) ** 2).sum(1).mean()


def fit_flow_matching(field: nn.Module, data: Any, steps: int = 2000, batch_size: int = 256,
                      lr: float = 1e-3, *, sigma_min: float = 0.0, clip: float | None = 10.0,
                      schedule: str = "cosine", dev: torch.device | None = None,
                      generator: torch.Generator | None = None, progress: bool | None = None) -> History:
    """Train ``field`` by flow matching with Adam; ``data`` as in :func:`flowlib.fit` (a tensor, a
    density with ``.sample``, or a callable). Returns a :class:`~flowlib.train.History` of the
    per-step regression losses (not log-likelihoods)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"fit_flow_matching: steps and batch_size must be positive, got {steps}, {batch_size}")
    dev = torch.device(dev) if dev is not None else _device()
    field.to(dev)
    params = [p for p in field.parameters() if p.requires_grad]
    next_batch = batches(data, batch_size, dev, generator)
    field.train()
    try:
        return train_loop(lambda step: flow_matching_loss(field, next_batch(), sigma_min), params,
                          steps, lr, who="fit_flow_matching", dev=dev, schedule=schedule, clip=clip,
                          quantity="regression loss", progress=progress)
    finally:
        field.eval()
