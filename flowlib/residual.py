r"""Invertible residual networks (i-ResNet): a flow layer without a triangular Jacobian.

A residual block maps data to latent, in the **normalizing** direction, by

.. math::

    z = F(x) = x + g(x), \qquad \operatorname{Lip}(g) \le c < 1,

where :math:`g` is a network whose every linear layer is spectrally normalised,
:math:`\tilde W = W / \max(1, \sigma(W) / c)` with :math:`\sigma(W)` the largest singular value, and
whose activations are 1-Lipschitz (ELU, tanh), so that :math:`\operatorname{Lip}(g) \le c`
(Behrmann et al., 2019). Then :math:`F` is invertible (Banach's fixed-point theorem):

* **inverse** (normalizing, ``inverse``): :math:`z = x + g(x)`, one pass;
* **forward** (generative, ``forward``): :math:`x` is the fixed point of :math:`x \mapsto z - g(x)`,
  found by iterating :math:`x_{k+1} = z - g(x_k)` from :math:`x_0 = z`; the error shrinks by
  :math:`c` per step, :math:`\|x_k - x\| \le c^k \|g(z)\| / (1 - c)`. Gradients of the solution
  are the implicit ones, :math:`\partial x / \partial z = (I + J_g(x))^{-1}`, applied to incoming
  gradients by a second fixed-point iteration :math:`w \leftarrow u - J_g^\top w` (a hook), so
  autograd Jacobians of ``forward`` are exact.
* **log-determinant** of the normalizing direction, :math:`\log|\det(I + J_g(x))|`, and the
  opposite for ``forward`` (at the solved :math:`x`). Two modes:

  - ``logdet="exact"``: the full Jacobian :math:`J_g` by :math:`D` autograd passes and
    ``torch.linalg.slogdet``, :math:`O(D^3)`; exact and deterministic, for small :math:`D` (the
    2-D densities) and for every contract check (``flowlib.testing.examples`` uses it);
  - ``logdet="estimate"``: the power series (valid because :math:`\|J_g\|_2 \le c < 1`)

    .. math::

        \log\det(I + J_g) = \sum_{k=1}^{\infty} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_g^k)
        \approx \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k}\, v^\top J_g^k v, \qquad
        \mathbb E[v v^\top] = I,

    truncated after :math:`n` = ``terms`` terms, each trace replaced by Hutchinson's estimator
    (Hutchinson, 1989) with Rademacher probes :math:`v` (``probes`` of them, the
    same :math:`v` for every power); :math:`v^\top J_g^k` costs :math:`k` vector-Jacobian
    products, never the matrix. The estimate is **stochastic** (unbiased for the truncated
    series) and **biased** by the truncation, at most
    :math:`D\,c^{n+1} / ((n+1)(1-c))` in absolute value. Residual flows (Chen et al., 2019)
    remove the bias with a random number of terms ("Russian roulette"); this module keeps the
    truncated series of i-ResNet. Because the probes are random, a layer in this mode is not a
    deterministic function of its input: ``check_bijection``-style tests use the exact mode, and
    the estimator is tested *statistically* against it (``tests/test_residual.py``: its mean over
    many probes lies within a few standard errors of the exact truncated series, and the series
    within the truncation bound of the exact value).

Only vectors ``[B, D]``. Example::

    >>> import torch, flowlib
    >>> block = flowlib.ResidualBlock(2, hidden=(16,), coeff=0.8).double()
    >>> z = torch.randn(4, 2, dtype=torch.float64)
    >>> x, ladj = block(z)                      # fixed-point iteration
    >>> z2, ladj_inv = block.inverse(x)         # one pass
    >>> bool(torch.allclose(z2, z)), bool(torch.allclose(ladj + ladj_inv, torch.zeros(4, dtype=torch.float64)))
    (True, True)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from . import activations
from .bijection import Bijection, Compose, check_input
from .distributions import Flow, StandardNormal

__all__ = ["SpectralLinear", "ResidualBlock", "residual_flow", "logdet_series", "jacobian_of"]


class SpectralLinear(nn.Module):
    r"""A linear layer :math:`h \mapsto \tilde W h + b` with spectral norm at most ``coeff``:

    .. math:: \tilde W = W / \max\big(1, \hat\sigma(W) / c\big).

    ``power_iterations=None`` (the default) takes the exact largest singular value
    :math:`\sigma(W)` (``torch.linalg.matrix_norm(W, 2)``, cheap for the course's small layers), so
    the bound holds exactly. An integer uses i-ResNet's power iteration instead: that many steps per
    call in training mode (buffers ``u``, ``v`` carried over between calls), none in evaluation
    mode; :math:`\hat\sigma = u^\top W v \le \sigma(W)` can underestimate :math:`\sigma`, so call
    :meth:`refresh` (many iterations) before sampling from a trained model.
    """

    def __init__(self, in_features: int, out_features: int, coeff: float = 0.9,
                 power_iterations: int | None = None):
        super().__init__()
        if not 0.0 < coeff < 1.0:
            raise ValueError(f"SpectralLinear: coeff must be in (0, 1), got {coeff}")
        self.coeff = float(coeff)
        self.power_iterations = power_iterations
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.register_buffer("u", nn.functional.normalize(torch.randn(out_features), dim=0))
        self.register_buffer("v", nn.functional.normalize(torch.randn(in_features), dim=0))
        if power_iterations is not None:
            self.refresh()

    @torch.no_grad()
    def refresh(self, iterations: int = 100) -> None:
        """Run ``iterations`` power-iteration steps on the buffers (power-iteration mode only)."""
        w = self.weight
        u, v = self.u.to(w.dtype), self.v.to(w.dtype)
        for _ in range(iterations):
            v = nn.functional.normalize(w.t() @ u, dim=0)
            u = nn.functional.normalize(w @ v, dim=0)
        self.u.copy_(u)
        self.v.copy_(v)

    def sigma(self) -> Tensor:
        """The (estimated) spectral norm of ``weight``, differentiable in the weight."""
        if self.power_iterations is None:
            return torch.linalg.matrix_norm(self.weight, ord=2)
        if self.training and self.power_iterations > 0:
            self.refresh(self.power_iterations)
        return self.u.to(self.weight.dtype) @ self.weight @ self.v.to(self.weight.dtype)

    def normalized_weight(self) -> Tensor:
        sigma = self.sigma()
        return self.weight / torch.clamp(sigma / self.coeff, min=1.0)

    def forward(self, h: Tensor) -> Tensor:
        return nn.functional.linear(h, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        it = "exact" if self.power_iterations is None else f"{self.power_iterations} power iterations"
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"coeff={self.coeff}, sigma={it}")


# The activations (names of flowlib's one table) that keep Lip(g) <= c: 1-Lipschitz, and smooth
# enough for the power series and the fixed-point iteration (ReLU's kinks are not).
LIPSCHITZ_ACTIVATIONS = ("elu", "tanh")


def jacobian_of(fn, x: Tensor, create_graph: bool | None = None) -> Tensor:
    r"""Per-sample Jacobians ``[B, D, D]``, :math:`J_{b,ij} = \partial\, \mathrm{fn}(x)_{b,i} /
    \partial x_{b,j}`, of a map ``fn`` acting on each row of ``x [B, D]`` independently, by ``D``
    autograd passes. ``create_graph`` (default: whether gradients are enabled where it is called)
    keeps the result differentiable, for training through an exact log-determinant."""
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xi = x if x.requires_grad else x.detach().requires_grad_(True)
        y = fn(xi)
        rows = [torch.autograd.grad(y[:, i].sum(), xi, create_graph=create_graph, retain_graph=True)[0]
                for i in range(y.shape[1])]
    return torch.stack(rows, 1)


def logdet_series(g, x: Tensor, terms: int = 10, probes: int | None = 1, *,
                  generator: torch.Generator | None = None) -> Tensor:
    r"""The truncated power series of :math:`\log\det(I + J_g(x))`, per sample ``[B]``:

    .. math:: \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_g^k),

    with each trace estimated by Hutchinson's :math:`\frac1P \sum_p v_p^\top J_g^k v_p`
    (Rademacher :math:`v_p`, ``probes`` :math:`= P`), or computed exactly from the full Jacobian
    when ``probes=None`` (small :math:`D`; isolates the truncation error from the stochastic one).
    Differentiable when gradients are enabled (``create_graph``), as i-ResNet trains through it.
    """
    if terms < 1:
        raise ValueError(f"logdet_series: terms must be >= 1, got {terms}")
    if probes is None:
        J = jacobian_of(g, x)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        P = J
        for k in range(1, terms + 1):
            total = total + (-1) ** (k + 1) / k * torch.diagonal(P, dim1=1, dim2=2).sum(1)
            P = P @ J
        return total
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        xi = x if x.requires_grad else x.detach().requires_grad_(True)
        y = g(xi)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(probes):
            v = torch.randint(0, 2, x.shape, generator=generator, device="cpu").to(x) * 2 - 1
            w = v
            for k in range(1, terms + 1):
                # w <- w^T J_g: one vector-Jacobian product per power
                w = torch.autograd.grad(y, xi, w, create_graph=create_graph, retain_graph=True)[0]
                total = total + (-1) ** (k + 1) / k * (w * v).sum(1)
    return total / probes


class ResidualBlock(Bijection):
    r"""One i-ResNet block: normalizing :math:`z = x + g(x)`, generative by fixed-point iteration
    (the formulas, the two log-determinant modes and their tests are in the module docstring).

    Args:
        features: the number of features :math:`D` (vectors ``[B, D]`` only).
        hidden: widths of :math:`g`'s hidden layers, each a :class:`SpectralLinear`.
        coeff: the bound :math:`c < 1` on every layer's spectral norm, hence on
            :math:`\operatorname{Lip}(g)`: closer to 1 is more expressive, but the fixed-point
            iteration and the power series converge more slowly (rate :math:`c`).
        activation: ``"elu"`` or ``"tanh"`` (1-Lipschitz and smooth enough for the series).
        logdet: ``"exact"`` (autograd Jacobian + slogdet) or ``"estimate"`` (power series with
            Hutchinson's trace estimator: stochastic).
        terms, probes: the series' number of terms and of Hutchinson probes (``"estimate"``).
        power_iterations: ``None`` for exact spectral norms, else i-ResNet's power iteration.
        tol, max_iter: the fixed-point iteration stops when no coordinate moves by more than
            ``tol * (1 + max|x|)`` (default ``1e-12`` in float64, ``1e-6`` otherwise); it raises if
            ``max_iter`` iterations do not reach it.
    """

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), coeff: float = 0.9,
                 activation: str = "elu", logdet: str = "exact", terms: int = 10, probes: int = 1,
                 power_iterations: int | None = None, tol: float | None = None, max_iter: int = 2000):
        super().__init__()
        if logdet not in ("exact", "estimate"):
            raise ValueError(f"ResidualBlock: logdet must be 'exact' or 'estimate', got {logdet!r}")
        if activation not in LIPSCHITZ_ACTIVATIONS:
            raise ValueError(f"ResidualBlock: activation must be one of {LIPSCHITZ_ACTIVATIONS} "
                             f"(1-Lipschitz and smooth), got {activation!r}")
        act = activations.activation(activation, "ResidualBlock")
        self.features, self.logdet, self.terms, self.probes = int(features), logdet, int(terms), int(probes)
        self.tol, self.max_iter = tol, int(max_iter)
        sizes = [self.features, *map(int, hidden), self.features]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [SpectralLinear(a, b, coeff, power_iterations), act()]
        self.g = nn.Sequential(*layers[:-1])          # no activation after the last layer
        self.last_iterations = 0                      # iterations of the last fixed-point solve

    def lipschitz_bound(self) -> float:
        """The product of the layers' exact spectral norms: an upper bound on Lip(g)."""
        bound = 1.0
        for m in self.g.modules():
            if isinstance(m, SpectralLinear):
                bound *= float(torch.linalg.matrix_norm(m.normalized_weight().detach(), ord=2))
        return bound

    def _logdet(self, x: Tensor) -> Tensor:
        """log det(I + J_g(x)) per sample, by the layer's mode."""
        if self.logdet == "exact":
            J = jacobian_of(self.g, x)
            eye = torch.eye(self.features, dtype=x.dtype, device=x.device)
            return torch.linalg.slogdet(eye + J).logabsdet
        return logdet_series(self.g, x, self.terms, self.probes)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, dims=(self.features,), ndim=(2,), name=type(self).__name__)
        return x + self.g(x), self._logdet(x)

    def _solve(self, z: Tensor) -> Tensor:
        tol = self.tol if self.tol is not None else (1e-12 if z.dtype == torch.float64 else 1e-6)
        with torch.no_grad():
            x = z - self.g(z)
            for k in range(1, self.max_iter + 1):
                x_new = z - self.g(x)
                moved = (x_new - x).abs().max().item() if x.numel() else 0.0
                x = x_new
                if moved <= tol * (1.0 + x.abs().max().item()):
                    self.last_iterations = k
                    return x
        raise RuntimeError(f"{type(self).__name__}: the fixed-point iteration did not converge in "
                           f"{self.max_iter} iterations (last move {moved:.3g}); is Lip(g) < 1? "
                           f"bound {self.lipschitz_bound():.4f}")

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, dims=(self.features,), ndim=(2,), name=type(self).__name__)
        x_star = self._solve(z)
        needs_grad = torch.is_grad_enabled() and (z.requires_grad or any(
            p.requires_grad for p in self.parameters()))
        if not needs_grad:
            return x_star, -self._logdet(x_star)
        # x = z - g(x*): the value is x* (to the tolerance); an implicit-function hook turns the
        # incoming gradient u into (I + J_g)^{-T} u, the exact gradient of the fixed point.
        x_leaf = x_star.detach().requires_grad_(True)
        gx = self.g(x_leaf)
        x = z - gx
        if x.requires_grad:
            def implicit(u: Tensor) -> Tensor:
                w = u
                eps = 1e-13 if u.dtype == torch.float64 else 1e-6
                for _ in range(self.max_iter):
                    vjp = torch.autograd.grad(gx, x_leaf, w, retain_graph=True)[0]
                    w_new = u - vjp
                    done = (w_new - w).abs().max().item() <= eps * (1.0 + w_new.abs().max().item())
                    w = w_new
                    if done:
                        break
                return w
            x.register_hook(implicit)
        return x, -self._logdet(x)

    def extra_repr(self) -> str:
        return f"features={self.features}, logdet={self.logdet!r}" + (
            f", terms={self.terms}, probes={self.probes}" if self.logdet == "estimate" else "")


def residual_flow(features: int, blocks: int = 8, hidden: Sequence[int] = (64, 64), coeff: float = 0.9,
                  **kwargs) -> Flow:
    r"""A residual flow: ``blocks`` :class:`ResidualBlock` layers (keyword arguments passed on) on a
    standard normal base. In the normalizing direction the density is

    .. math:: \log q(x) = \log \mathcal N(z; 0, I) + \sum_k \log\det(I + J_{g_k}(h_{k})).
    """
    layers = [ResidualBlock(features, hidden, coeff, **kwargs) for _ in range(blocks)]
    return Flow(Compose(*layers), StandardNormal(features))
