r"""Rational-quadratic spline flows (Neural Spline Flows, Durkan et al., 2019).

An affine layer moves and stretches each coordinate; a *monotonic spline* can bend it into any
increasing shape, so one layer can already split one mode into several. The spline used here is
the monotonic rational-quadratic (RQ) spline of Gregory & Delbourgo (1982), as in Durkan et al.

**Knots.** On the interval :math:`[-B, B]` the map passes through :math:`K + 1` knots
:math:`(x^{(k)}, y^{(k)})_{k=0..K}`, increasing in both coordinates, from
:math:`(-B, -B)` to :math:`(B, B)`, with positive derivatives :math:`\delta^{(k)}` at the knots.
A network outputs *unnormalised* values: bin widths and heights go through a softmax (so they
are positive and add up to :math:`2B`) with a minimum size of :math:`10^{-3} \cdot 2B` (so
that no bin collapses), the :math:`K - 1` interior derivatives through a softplus with a
minimum of :math:`\delta_{\min} = 10^{-3}`. The two boundary
derivatives are fixed to :math:`\delta^{(0)} = \delta^{(K)} = 1`.

**The map in bin k.** With :math:`w_k = x^{(k+1)} - x^{(k)}`, :math:`h_k = y^{(k+1)} - y^{(k)}`,
the bin slope :math:`s_k = h_k / w_k` and :math:`\xi = (x - x^{(k)}) / w_k \in [0, 1]`:

.. math::

    y = y^{(k)} + \frac{h_k \left[s_k \xi^2 + \delta^{(k)} \xi (1 - \xi)\right]}
                       {s_k + \left[\delta^{(k+1)} + \delta^{(k)} - 2 s_k\right] \xi (1 - \xi)},

    \frac{dy}{dx} = \frac{s_k^2 \left[\delta^{(k+1)} \xi^2 + 2 s_k \xi (1 - \xi)
                    + \delta^{(k)} (1 - \xi)^2\right]}
                   {\left(s_k + [\delta^{(k+1)} + \delta^{(k)} - 2 s_k]\, \xi (1-\xi)\right)^2}
                   > 0 .

It is increasing in every bin, matches the knots and their derivatives, so it is a
:math:`C^1` bijection of :math:`[-B, B]`.

**Inverse.** Given :math:`y` in bin :math:`k` (found among the :math:`y`-knots), :math:`\xi`
solves :math:`a \xi^2 + b \xi + c = 0` with, for :math:`\Delta = \delta^{(k+1)} + \delta^{(k)}
- 2 s_k` and :math:`\eta = y - y^{(k)}`,

.. math::

    a = h_k (s_k - \delta^{(k)}) + \eta \Delta, \quad b = h_k \delta^{(k)} - \eta \Delta, \quad
    c = -s_k \eta, \qquad \xi = \frac{2c}{-b - \sqrt{b^2 - 4ac}},

the root in :math:`[0, 1]` written in the form that does not subtract two close numbers when
:math:`a \approx 0` (the textbook :math:`(-b + \sqrt{\cdot})/2a` would divide 0 by 0 there).
In the upper half of a bin (:math:`\eta > h_k / 2`) the same formula is applied to the bin
reflected about its centre (:math:`\xi \to 1 - \xi`, :math:`\eta \to h_k - \eta`,
:math:`\delta^{(k)} \leftrightarrow \delta^{(k+1)}`, again an RQ segment), so that the root
solved for is always in :math:`[0, 1/2]`: near :math:`\xi = 1` with a large
:math:`\delta^{(k)}`, :math:`b` is a difference of two large terms and float32 loses
hundreds of ulp of :math:`\xi` (measured at :math:`y = B`); reflected, the root is near 0 and
:math:`2c/(\ldots)` keeps its relative accuracy.
Then :math:`x = x^{(k)} + \xi w_k` and :math:`\log|dx/dy| = -\log|dy/dx|` at that :math:`\xi`.

**Tails.** Outside :math:`[-B, B]` the map is the identity (log-det 0). With the boundary
derivatives fixed to 1 the spline joins the tails with matching value *and* slope, so the whole
map of :math:`\mathbb R` is :math:`C^1`, invertible, and a point far in the tails (an outlier, a
sample at high temperature) never sees a saturated or undefined spline.

**Identity start.** The derivative is :math:`\delta_{\min} + \operatorname{softplus}(u + u_0)`
with :math:`u_0` chosen so that a raw :math:`u = 0` gives exactly 1; with zero raw widths and
heights the bins are equal, so all-zero network outputs give :math:`s_k = \delta^{(k)} = 1` and
:math:`y = x`. A network whose last layer starts at zero therefore starts as the identity.

* :func:`rq_spline`: the elementwise spline and its log-derivative (vectorised over bins: one
  bin search and one gather per call).
* :class:`SplineAutoregressive`: a MADE gives the :math:`3K - 1` spline parameters of every
  coordinate from the coordinates before it (the MAF direction; ``.inv`` is the IAF one).
* :class:`SplineCoupling`: an MLP of the kept half gives the spline of the transformed half.

References:
    Durkan, Bekasov, Murray, Papamakarios (2019), *Neural Spline Flows*, NeurIPS.
    Gregory, Delbourgo (1982), *Piecewise rational quadratic interpolation to monotonic data*,
    IMA Journal of Numerical Analysis 2(2).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import MaskedAutoregressive
from .coupling import Coupling
from .maps import ElementwiseMap

__all__ = ["rq_spline", "SplineMap", "SplineAutoregressive", "SplineCoupling"]

MIN_BIN_SIZE = 1e-3
MIN_DERIVATIVE = 1e-3


def _softplus_shift(min_derivative: float) -> float:
    # softplus(u0) = 1 - min_derivative, so that a raw derivative of 0 gives exactly 1.
    return math.log(math.expm1(1.0 - min_derivative))


def _check_params(bins: int, bound: float, who: str) -> None:
    if int(bins) < 2:
        raise ValueError(f"{who}: a spline needs at least 2 bins, got bins={bins}")
    if not bound > 0:
        raise ValueError(f"{who}: bound must be positive, got {bound}")


def _rq(x: Tensor, params: Tensor, bound: float, inverse: bool,
        min_bin_size: float = MIN_BIN_SIZE,
        min_derivative: float = MIN_DERIVATIVE) -> tuple[Tensor, Tensor]:
    """The spline of ``N`` points ``x [N]`` with packed raw parameters ``params [3K-1, N]``
    (widths K, heights K, interior derivatives K-1, parameter axis *first*).

    The layers call this directly, :func:`rq_spline` after checking and packing its arguments.
    The layout is chosen for the CPU, where these tensors are small and every op costs mostly
    its overhead: with the parameter axis first, each softmax, cumsum, bin count and the gather
    runs over a contiguous inner axis of length N (a softmax over a short *last* axis is much
    slower on a CPU), and each in-bin quantity comes out of the gather as a contiguous row.
    Python-scalar arithmetic is avoided where a fused op (``addcmul``, ``alpha=``) does the
    same, since every scalar operand costs an extra tensor conversion.
    """
    k = (params.shape[0] + 1) // 3
    n = x.shape[0]
    two_b = 2 * bound
    # Widths and heights as one [2, K, N] tensor: one softmax and one cumsum for both.
    wh = torch.softmax(params[:2 * k].reshape(2, k, n), 1)
    wh = wh * (two_b * (1 - k * min_bin_size)) + two_b * min_bin_size
    # Knots: -B, the running sums of the first K-1 sizes, then B itself rather than the K-th
    # running sum (which is B only up to rounding): the spline meets the identity tails exactly.
    knots = F.pad(F.pad(wh[:, :-1], (0, 0, 1, 0), value=-bound).cumsum(1), (0, 0, 0, 1),
                  value=bound)                                            # [2, K+1, N]
    deriv = F.softplus(params[2 * k:] + _softplus_shift(min_derivative)) + min_derivative
    deriv = F.pad(deriv, (0, 0, 1, 1), value=1.0)  # boundary derivatives 1: C^1 with the tails
    # Everything a bin needs, [6, K, N]: left x-knot, left y-knot, width, height, left and
    # right derivative; one gather then picks the point's bin in all six. Widths and heights
    # are taken as knot differences, not the softmax sizes: then xi = (B - x0) / (B - x0) is
    # exactly 1 at the bound (and y exactly B), which the tails and the inverse rely on.
    table = torch.cat([knots[:, :-1], knots.diff(dim=1), deriv[None, :-1], deriv[None, 1:]], 0)

    inside = x.abs() <= bound
    xc = x.clamp(-bound, bound)
    # Bin index = number of interior knots <= the point (x-knots for the spline, y-knots for
    # its inverse); a point on a knot starts the next bin (xi = 0 there). K-1 comparisons per
    # point beat a binary search at these sizes: torch.searchsorted wants the knots last, and
    # the transpose it needs costs more than the comparisons save.
    idx = (xc >= knots[1 if inverse else 0, 1:-1]).sum(0, keepdim=True)  # [1, N]
    x0, y0, w, h, d0, d1 = table.gather(1, idx.expand(6, 1, n)).view(6, n).unbind(0)
    s = h / w
    delta = torch.add(d0 + d1, s, alpha=-2.0)        # d0 + d1 - 2s

    if inverse:
        # In the upper half of the bin's height, solve from its right end: the bin reflected
        # (xi -> 1 - xi, eta -> h - eta, d0 <-> d1) is again an RQ segment, and the root, now in
        # [0, 1/2], comes out with a small *absolute* error. Solving for xi near 1 directly
        # loses up to ~100 ulp in float32 when d0 is large (cancellation in b).
        eta = xc - y0
        flip = eta + eta > h
        eta = torch.where(flip, h - eta, eta)
        da = torch.where(flip, d1, d0)
        a = torch.addcmul(h * (s - da), eta, delta)
        b = torch.addcmul(h * da, eta, delta, value=-1.0)
        c = -s * eta
        # c <= 0 and the root in [0, 1] has g'(xi) = sqrt(disc) > 0: -b - sqrt(disc) < 0, never
        # 0/0 (the form (-b + sqrt(disc)) / 2a cancels catastrophically when a -> 0).
        disc = torch.addcmul(b * b, a, c, value=-4.0).clamp_min(0)
        xi = torch.div(c + c, -b - disc.sqrt()).clamp(0, 1)
        xi = torch.where(flip, 1 - xi, xi)
        y = torch.addcmul(x0, xi, w)
    else:
        xi = ((xc - x0) / w).clamp(0, 1)
    xi2 = xi * xi
    t = xi - xi2                                          # xi (1 - xi)
    den = torch.addcmul(s, delta, t)
    if not inverse:
        y = torch.addcdiv(y0, h * torch.addcmul(s * xi2, d0, t), den)
    # d1 xi^2 + 2 s xi(1-xi) + d0 (1-xi)^2, rewritten with t: d0 + (d1 - d0) xi - delta t.
    inner = torch.addcmul(torch.addcmul(d0, d1 - d0, xi), delta, t, value=-1.0)
    r = s / den
    logdet = (inner * r * r).log()
    if inverse:
        logdet = -logdet
    return torch.where(inside, y, x), torch.where(inside, logdet, 0.0)


def rq_spline(x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float,
              inverse: bool = False, *, min_bin_size: float = MIN_BIN_SIZE,
              min_derivative: float = MIN_DERIVATIVE) -> tuple[Tensor, Tensor]:
    r"""The monotonic rational-quadratic spline on :math:`[-B, B]`, identity outside, applied
    elementwise (see the module docstring for the formulas).

    Args:
        x: the points ``[...]``.
        widths, heights: unnormalised bin widths and heights ``[..., K]`` (softmax, then a
            minimum of ``min_bin_size`` times :math:`2B` per bin).
        derivatives: unnormalised derivatives at the :math:`K - 1` interior knots
            ``[..., K-1]`` (:math:`\delta_{\min}` + softplus, shifted so that 0 gives 1).
        bound: :math:`B > 0`.
        inverse: apply the inverse spline (closed-form root of the quadratic).

    Returns:
        ``(y, logabsdet)``, both of the shape of ``x``: the image and
        :math:`\log|dy/dx|` of the map applied, elementwise (0 in the tails).

    Example:
        >>> x = torch.linspace(-5, 5, 7)
        >>> p = torch.zeros(7, 8)
        >>> y, ld = rq_spline(x, p, p, torch.zeros(7, 7), bound=3.0)   # zero parameters: identity
        >>> torch.allclose(y, x) and bool(ld.abs().max() < 1e-6)
        True
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"rq_spline: x must be a torch.Tensor, got {type(x).__name__}")
    k = widths.shape[-1] if widths.dim() else 0
    _check_params(k, bound, "rq_spline")
    want = (*x.shape, k)
    if tuple(widths.shape) != want or tuple(heights.shape) != want:
        raise ValueError(f"rq_spline: widths and heights must have shape [*x.shape, K] = {want}, "
                         f"got {tuple(widths.shape)} and {tuple(heights.shape)}")
    if tuple(derivatives.shape) != (*x.shape, k - 1):
        raise ValueError(f"rq_spline: derivatives must have shape [*x.shape, K-1] = "
                         f"{(*x.shape, k - 1)}, got {tuple(derivatives.shape)}")
    if not (0 <= min_bin_size < 1 / k and min_derivative > 0):
        raise ValueError(f"rq_spline: need 0 <= min_bin_size < 1/K = {1 / k} and "
                         f"min_derivative > 0, got {min_bin_size}, {min_derivative}")
    params = torch.cat([widths, heights, derivatives], -1).reshape(-1, 3 * k - 1).t()
    y, ld = _rq(x.reshape(-1), params.contiguous(), float(bound), inverse, min_bin_size,
                min_derivative)
    return y.view_as(x), ld.view_as(x)


class SplineMap(ElementwiseMap):
    r"""The rational-quadratic spline as an elementwise map (:mod:`flowlib.maps`):
    :math:`P = 3K - 1` raw parameters per coordinate (widths, heights, interior derivatives, see
    :func:`rq_spline`), ``bins`` :math:`K \ge 2` on :math:`[-B, B]` (``bound``), the identity
    outside.

    The *normalizing* direction (``inverse``, the one training runs) applies the spline itself,
    which is cheaper than its inverse (no square root); ``forward`` solves the quadratic. The
    spline's slopes are bounded by construction, so no clamp is needed; all-zero parameters give
    the identity.
    """

    def __init__(self, bins: int = 8, bound: float = 4.0):
        super().__init__()
        _check_params(bins, bound, "SplineMap")
        self.bins, self.bound = int(bins), float(bound)
        self.params = 3 * self.bins - 1

    def _spline(self, v: Tensor, params: Tensor, spline_inverse: bool) -> tuple[Tensor, Tensor]:
        # [P, *S] -> [P, N], the layout of _rq (a copy unless params is already [P, N]).
        out, ld = _rq(v.reshape(-1), params.reshape(self.params, -1), self.bound, spline_inverse)
        return out.view_as(v), ld.view_as(v)

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(z, params, spline_inverse=True)

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, spline_inverse=False)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}"


class SplineAutoregressive(MaskedAutoregressive):
    r"""A :class:`~flowlib.autoregressive.MaskedAutoregressive` layer with the
    :class:`SplineMap` (the autoregressive neural spline flow of Durkan et al., 2019); its ``.inv``
    is the IAF-style layer.

    * inverse (normalizing, parallel: one MADE pass): :math:`z_i = h(x_i;\ \theta_i(x_{<i}))`;
    * forward (generative, sequential): :math:`x_i = h^{-1}(z_i;\ \theta_i(x_{<i}))`;
    * log-det: inverse :math:`\sum_i \log h'(x_i; \theta_i)`, forward its negative,

    with :math:`h` the spline of :func:`rq_spline`. Arguments as in
    :class:`~flowlib.autoregressive.MaskedAutoregressive`, plus ``bins`` and ``bound``.

    Example:
        >>> layer = SplineAutoregressive(3, hidden=(16,), bins=5)
        >>> z, ladj = layer.inverse(torch.randn(4, 3))   # one MADE pass
        >>> iaf_like = layer.inv                         # one MADE pass to sample
    """

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), bins: int = 8,
                 bound: float = 4.0, *, order: str | Sequence[int] | Tensor = "natural",
                 context: int = 0, activation: str | type[nn.Module] = "relu",
                 identity_init: bool = True, generator: torch.Generator | None = None):
        super().__init__(features, hidden, elementwise=SplineMap(bins, bound), order=order,
                         context=context, activation=activation, identity_init=identity_init,
                         generator=generator)


class SplineCoupling(Coupling):
    r"""A :class:`~flowlib.coupling.Coupling` with the :class:`SplineMap` (the coupling NSF of
    Durkan et al., 2019), for vectors ``[B, D]``.

    * inverse (normalizing): :math:`z_A = x_A,\ z_i = h(x_i;\ \theta_i(x_A))`;
    * forward (generative): :math:`x_A = z_A,\ x_i = h^{-1}(z_i;\ \theta_i(z_A))`;
    * log-det: inverse :math:`\sum_{i \in B} \log h'(x_i; \theta_i)`, forward its negative.

    Both directions take one network pass; the MLP's last layer starts at zero (the identity).

    Args:
        mask: a boolean vector mask ``[D]`` (``True`` = conditioning part).
        hidden: the MLP's hidden widths.
        bins, bound: as in :class:`SplineMap`.
        context: size of an optional context vector fed to the MLP.
        activation: the MLP's activation.

    Example:
        >>> from flowlib import alternating_mask
        >>> layer = SplineCoupling(alternating_mask(4), hidden=(16,), bins=6)
        >>> x, ladj = layer(torch.randn(3, 4))
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int] = (64, 64), bins: int = 8,
                 bound: float = 4.0, *, context: int = 0,
                 activation: str | type[nn.Module] = "relu"):
        if torch.as_tensor(mask).dim() != 1:
            raise ValueError(f"SplineCoupling: expects a vector mask [D], got shape "
                             f"{tuple(torch.as_tensor(mask).shape)}")
        super().__init__(mask, SplineMap(bins, bound), hidden=tuple(hidden), context=context,
                         activation=activation)

    @property
    def bins(self) -> int:
        return self.elementwise.bins

    @property
    def bound(self) -> float:
        return self.elementwise.bound
