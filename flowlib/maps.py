r"""Elementwise maps: the invertible one-dimensional functions a coupling or an autoregressive
layer applies to each transformed coordinate, given parameters computed by its network.

A *structure* (:class:`~flowlib.coupling.Coupling`, :class:`~flowlib.autoregressive.MaskedAutoregressive`)
decides what each coordinate's parameters may depend on; the *elementwise map* decides what is
done with them. The two are independent (as zuko's ``univariate=`` and distrax's
``MaskedCoupling(mask, conditioner, bijector)``): every structure takes any map.

An :class:`ElementwiseMap` with ``params = P`` raw parameters per coordinate provides

* ``forward(z, params) -> (x, ld)``: the generative direction :math:`x = h(z; \theta)`;
* ``inverse(x, params) -> (z, ld)``: the normalizing direction :math:`z = h^{-1}(x; \theta)`;

where ``params`` has shape ``[P, *v.shape]`` (parameter axis first; a strided view is fine) and
``ld`` is :math:`\log|d\,\text{out} / d\,\text{in}|` *elementwise*, of the shape of the input
(the structure sums it). All-zero parameters give the identity, so a network whose last layer
starts at zero starts the layer as the identity map.

* :class:`AdditiveMap` (NICE), :math:`P = 1`;
* :class:`AffineMap` (RealNVP, MAF, IAF), :math:`P = 2`, arctangent-clamped log-scale;
* :class:`~flowlib.spline.SplineMap` (neural spline flows), :math:`P = 3K - 1`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bijection import soft_clamp

__all__ = ["ElementwiseMap", "AdditiveMap", "AffineMap"]


class ElementwiseMap(nn.Module):
    """Base of the elementwise maps. A subclass sets ``params`` (raw parameters per coordinate)
    and defines ``forward`` and ``inverse`` as in the module docstring; it may set ``init_std``,
    the last-layer weight scale a default conditioner should start with (0: exactly the
    identity)."""

    params: int = 1
    init_std: float = 0.0

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not define inverse")

    def check_params(self, v: Tensor, params: Tensor) -> None:
        """Raise a clear error when ``params`` is not ``[P, *v.shape]``."""
        if tuple(params.shape) != (self.params, *v.shape):
            raise ValueError(f"{type(self).__name__}: expected parameters of shape "
                             f"[{self.params}, {', '.join(map(str, v.shape))}], "
                             f"got {tuple(params.shape)}")


class AdditiveMap(ElementwiseMap):
    r"""NICE's shift, :math:`P = 1`: forward :math:`x = z + t`, inverse :math:`z = x - t`,
    log-det 0 (volume preserving).

    ``init_std = 0.1``: a stack of additive layers started *exactly* at the identity is a
    stationary point of the likelihood whenever the data are symmetric under
    :math:`x_B \mapsto -x_B` (the gradient of each shift is the mean base score, zero there), so
    the default conditioner starts with small random last-layer weights instead.
    """

    params = 1
    init_std = 0.1

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z + params[0], torch.zeros_like(z)

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x - params[0], torch.zeros_like(x)


class AffineMap(ElementwiseMap):
    r"""The affine map with the shift on the base side, :math:`P = 2` (raw log-scale
    :math:`\tilde s`, then shift :math:`t`):

    .. math::
        s = \frac{2c}{\pi}\arctan\frac{\pi \tilde s}{2c}, \qquad
        \text{forward } x = (z - t)\, e^{s}, \qquad \text{inverse } z = x\, e^{-s} + t,

    log-det :math:`\pm s` per coordinate. The Gaussian conditional it gives in an autoregressive
    layer is :math:`\mathcal N(\mu, \sigma^2)` with :math:`\sigma = e^{s}`, :math:`\mu = -t\,e^{s}`
    (:meth:`mean_and_log_std`).

    **Why the shift sits on the base side.** :math:`x = z e^{s} + t'` is the same family
    (:math:`t' = -t e^{s}`), but the gradient of the density with respect to :math:`t'` is damped
    by :math:`e^{-s}` wherever the layer expands; with :math:`t` on the base side it is the base's
    score whatever the scale (zuko and nflows write their affine layers this way too).

    **Why an arctangent clamp** (``log_scale_bound`` :math:`c`; ``None``: no clamp). One layer
    scales by at most :math:`e^{\pm c}`, so a bad optimiser step cannot blow up the exponential,
    nor the sequential pass of an autoregressive layer; the clamp is the identity near 0, where
    the layer starts, and its slope :math:`1 / (1 + (\pi\tilde s / 2c)^2)` decays polynomially,
    not exponentially like ``c * tanh(s / c)``'s, so a layer that has grown a large scale can still
    change it (:func:`~flowlib.bijection.soft_clamp`).
    """

    params = 2

    def __init__(self, log_scale_bound: float | None = 3.0):
        super().__init__()
        if log_scale_bound is not None and not log_scale_bound > 0:
            raise ValueError(f"AffineMap: log_scale_bound must be positive or None, "
                             f"got {log_scale_bound}")
        self.log_scale_bound = None if log_scale_bound is None else float(log_scale_bound)

    def log_scale(self, raw: Tensor, negate: bool = False) -> Tensor:
        """:math:`s` (or :math:`-s` with ``negate``, at the cost of one: the clamp is odd)."""
        c = self.log_scale_bound
        if c is None:
            return -raw if negate else raw
        return soft_clamp(raw, c, negate=negate)

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale(params[0])
        return (z - params[1]) * torch.exp(s), s

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        neg_s = self.log_scale(params[0], negate=True)
        return torch.addcmul(params[1], x, torch.exp(neg_s)), neg_s

    def mean_and_log_std(self, params: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(\mu, \log\sigma) = (-t\,e^{s}, s)`: the Gaussian :math:`x` is when :math:`z` is a
        standard normal."""
        s = self.log_scale(params[0])
        return -params[1] * torch.exp(s), s

    def extra_repr(self) -> str:
        return f"log_scale_bound={self.log_scale_bound}"
