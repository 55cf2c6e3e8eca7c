r"""Coupling layers (NICE, RealNVP), their masks and conditioner networks.

A coupling layer splits its input in two with a fixed binary mask :math:`b`: the part
:math:`z_A` where :math:`b = 1` is copied unchanged and *conditions* an elementwise map of the
other part :math:`z_B` (:math:`b = 0`):

.. math::

    x_A = z_A, \qquad x_B = h\big(z_B;\ \theta(z_A)\big).

The Jacobian is block triangular, :math:`\begin{pmatrix} I & 0 \\ \partial x_B/\partial z_A &
\operatorname{diag} h'\end{pmatrix}`, so its determinant is the product of the diagonal of
:math:`\partial x_B / \partial z_B` whatever the conditioner :math:`\theta` is; and the inverse
only needs :math:`\theta(x_A) = \theta(z_A)`, so :math:`\theta` itself is never inverted. It can be
any network.

* :class:`Coupling`: the structure, with any elementwise map :math:`h` of :mod:`flowlib.maps`;
* :class:`AdditiveCoupling` (NICE, Dinh et al. 2014): :math:`x_B = z_B + m(z_A)`, volume preserving.
* :class:`AffineCoupling` (RealNVP, Dinh et al. 2017): :math:`x_B = (z_B - t(z_A)) \odot e^{s(z_A)}`.
* :class:`Rescale`: NICE's final diagonal scaling, the only part of NICE that changes volume.

Masks follow the paper's convention: ``True`` (1) marks the conditioning part :math:`A`, kept
unchanged; ``False`` (0) the transformed part :math:`B`. A mask has the *event shape* of the data
(``[D]`` for vectors, ``[C, H, W]`` for images):

* :func:`half_mask` / :func:`alternating_mask` for vectors;
* :func:`checkerboard_mask` (pixel :math:`(i, j)` in :math:`A` when :math:`i + j` is even) and
  :func:`channel_mask` (the first half of the channels in :math:`A`) for images.

How a layer uses its mask is decided once, at construction: a mask that selects whole features
(a vector mask, or a channel mask) is applied by *slicing* (the conditioner sees only the
:math:`|A|` selected features and returns parameters for the :math:`|B|` others; no work is wasted);
a mask that varies over pixels (checkerboard) is applied by *multiplication*, as in the RealNVP
paper: the conditioner sees :math:`b \odot z` and its outputs are multiplied by :math:`1 - b`.

The default conditioners (:class:`MLP` for vectors, :class:`ConvNet` for images) have their last
layer initialised to zero, so that every affine coupling starts as the identity: a deep stack
of them starts as the identity too, which keeps the first steps of training stable. Additive
couplings start *near* the identity instead (small random last layer), for the reason given in
:class:`AdditiveCoupling`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import activation as get_activation
from .bijection import Bijection, check_input, sum_except_batch
from .maps import AdditiveMap, AffineMap, ElementwiseMap

__all__ = ["half_mask", "alternating_mask", "checkerboard_mask", "channel_mask",
           "MLP", "ConvNet", "Coupling", "AdditiveCoupling", "AffineCoupling", "Rescale"]

# ---------------------------------------------------------------------------- masks


def half_mask(features: int, flip: bool = False) -> Tensor:
    """A vector mask ``[features]``: ``True`` on the first ``ceil(features/2)`` coordinates (on the others
    when ``flip``). Alternate ``flip`` from one coupling to the next so that every coordinate gets
    transformed."""
    if int(features) < 2:
        raise ValueError(f"half_mask: a coupling needs at least 2 dimensions, got {features}")
    mask = torch.arange(int(features)) < (int(features) + 1) // 2
    return ~mask if flip else mask


def alternating_mask(features: int, flip: bool = False) -> Tensor:
    """A vector mask ``[features]``: ``True`` on the even coordinates ``0, 2, 4, ...`` (on the odd
    ones when ``flip``), NICE's partition of the pixels of an image seen as a vector."""
    if int(features) < 2:
        raise ValueError(f"alternating_mask: a coupling needs at least 2 dimensions, got {features}")
    mask = torch.arange(int(features)) % 2 == 0
    return ~mask if flip else mask


def _image_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: shape must be (C, H, W) or (H, W), got {shape}")
    return shape  # type: ignore[return-value]


def checkerboard_mask(shape: Sequence[int], flip: bool = False) -> Tensor:
    r"""An image mask ``[C, H, W]`` (``shape`` is ``(C, H, W)`` or ``(H, W)``, then ``C = 1``):
    ``True`` where the row and column indices sum to an even number, the same in every channel
    (the complement when ``flip``). Each transformed pixel is surrounded by conditioning pixels."""
    c, h, w = _image_shape(shape, "checkerboard_mask")
    if h * w < 2:
        raise ValueError(f"checkerboard_mask: an image of {h}x{w} pixels cannot be split")
    mask = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    mask = mask.expand(c, h, w).clone()
    return ~mask if flip else mask


def channel_mask(shape: Sequence[int], flip: bool = False) -> Tensor:
    """An image mask ``[C, H, W]``: ``True`` on the first ``ceil(C/2)`` channels, at every pixel
    (on the other channels when ``flip``). Used after a squeeze, when each channel holds one
    pixel of every 2x2 block."""
    c, h, w = _image_shape(shape, "channel_mask")
    if c < 2:
        raise ValueError(f"channel_mask: needs at least 2 channels, got shape {(c, h, w)}")
    mask = (torch.arange(c) < (c + 1) // 2)[:, None, None].expand(c, h, w).clone()
    return ~mask if flip else mask


# ---------------------------------------------------------------------------- conditioners


def _init_last(layer: nn.Linear | nn.Conv2d, std: float) -> None:
    if std < 0:
        raise ValueError(f"init_std must be >= 0, got {std}")
    nn.init.zeros_(layer.bias)
    if std == 0:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.normal_(layer.weight, std=std)


class MLP(nn.Module):
    r"""A fully connected network ``in_features (+ context_features) -> hidden... -> out_features``
    whose **last layer starts at zero** (``init_std=0``, the default: a coupling using it starts
    as the identity) or, with ``init_std > 0``, has small normal weights of that standard
    deviation and a zero bias.

    ``forward(x, context=None)``: the context, if any, is concatenated to the input.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (64, 64),
                 context_features: int = 0, activation: str | type[nn.Module] = "relu",
                 init_std: float = 0.0):
        super().__init__()
        act = get_activation(activation, type(self).__name__)
        self.context_features = int(context_features)
        sizes = [int(in_features) + self.context_features, *map(int, hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        last = nn.Linear(sizes[-1], int(out_features))
        _init_last(last, init_std)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            if context is None:
                raise ValueError(f"MLP: built for a context of {self.context_features} features, "
                                 "got none")
            x = torch.cat([x, context.reshape(len(x), -1)], 1)
        return self.net(x)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, act: type[nn.Module]):
        super().__init__()
        self.net = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1),
                                 act(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ConvNet(nn.Module):
    r"""A small residual convolutional network for image couplings: a 3x3 convolution to
    ``hidden`` channels, ``blocks`` residual blocks (activation, 3x3 conv, activation, 3x3 conv,
    plus the skip), an activation and a 3x3 convolution to ``out_channels`` **initialised to
    zero** (or, with ``init_std > 0``, to small normal weights). The spatial size is kept
    (padding 1).

    ``forward(x, context=None)``: a context ``[B, K]`` is broadcast to ``[B, K, H, W]``, a context
    ``[B, K, H, W]`` used as it is; either way it is concatenated to the input channels.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32, blocks: int = 1,
                 context_channels: int = 0, activation: str | type[nn.Module] = "relu",
                 init_std: float = 0.0):
        super().__init__()
        act = get_activation(activation, type(self).__name__)
        self.context_channels = int(context_channels)
        self.inp = nn.Conv2d(int(in_channels) + self.context_channels, int(hidden), 3, padding=1)
        self.blocks = nn.Sequential(*[_ResBlock(int(hidden), act) for _ in range(int(blocks))])
        self.act = act()
        self.out = nn.Conv2d(int(hidden), int(out_channels), 3, padding=1)
        _init_last(self.out, init_std)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_channels:
            if context is None:
                raise ValueError(f"ConvNet: built for a context of {self.context_channels} "
                                 "channels, got none")
            if context.dim() == 2:
                context = context[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, context], 1)
        return self.out(self.act(self.blocks(self.inp(x))))


# ---------------------------------------------------------------------------- couplings


class Coupling(Bijection):
    r"""A coupling layer with any elementwise map: :math:`x_A = z_A`,
    :math:`x_B = h(z_B;\ \theta(z_A))`, with :math:`h` = ``elementwise`` (an
    :class:`~flowlib.maps.ElementwiseMap`; default :class:`~flowlib.maps.AffineMap`) and
    :math:`\theta` = ``conditioner``.

    * forward: :math:`x_B = h(z_B; \theta(z_A))`, inverse: :math:`z_B = h^{-1}(x_B; \theta(x_A))`;
    * log-det: :math:`\sum_{i \in B} \log|h'(z_i)|` forward, its negative inverse.

    Both directions take one conditioner pass. The conditioner returns :math:`P` raw parameters
    per transformed value (:math:`P` = ``elementwise.params``), parameter-major: ``[B, P * |B|]``
    for vectors (the first :math:`|B|` columns are parameter 0 of every transformed coordinate),
    ``[B, P * C', H, W]`` for images. It is called as ``conditioner(h)`` or, with a context,
    ``conditioner(h, context)``.

    How the mask is applied is decided once, from the mask: ``"first"`` / ``"last"`` (A is a
    contiguous block of features at the start / end: split by slicing, merge by one ``cat``),
    ``"index"`` (any set of features: one gather each way), ``"mask"`` (the mask varies within a
    channel, e.g. a checkerboard: the conditioner sees :math:`b \odot z`, the map runs on every
    value and the conditioning values are kept by a selection).

    Args:
        mask: event-shaped boolean mask (``True`` = conditioning part :math:`A`).
        elementwise: the map :math:`h`.
        conditioner: the network :math:`\theta`; by default an :class:`MLP` (vectors) or a
            :class:`ConvNet` (images) whose last layer starts at ``init_std`` (default: the map's
            ``init_std``, 0 for the affine and spline maps: the identity at initialisation).
        hidden, blocks, activation: sizes of the default conditioner (``hidden`` a tuple of
            widths for the MLP, a channel count for the ConvNet).
        context: size of an optional context vector (or context channels) fed to the default
            conditioner.

    Example:
        >>> from flowlib.maps import AdditiveMap
        >>> layer = Coupling(half_mask(4), AdditiveMap(), hidden=(8,))
        >>> x, ladj = layer(torch.randn(3, 4))
    """

    def __init__(self, mask: Tensor, elementwise: ElementwiseMap | None = None,
                 conditioner: nn.Module | None = None, *,
                 hidden: int | Sequence[int] | None = None, blocks: int = 1, context: int = 0,
                 activation: str | type[nn.Module] = "relu", init_std: float | None = None):
        super().__init__()
        self.elementwise = AffineMap(2.0) if elementwise is None else elementwise
        if not isinstance(self.elementwise, ElementwiseMap):
            raise TypeError(f"{type(self).__name__}: elementwise must be an ElementwiseMap, got "
                            f"{type(self.elementwise).__name__}")
        init_std = self.elementwise.init_std if init_std is None else float(init_std)
        mask = torch.as_tensor(mask).bool()
        if mask.dim() not in (1, 3):
            raise ValueError(f"{type(self).__name__}: the mask must have the event shape [D] or "
                             f"[C, H, W], got shape {tuple(mask.shape)}")
        if mask.all() or not mask.any():
            raise ValueError(f"{type(self).__name__}: the mask must select some but not all "
                             "values (True = conditioning part, False = transformed part)")
        self.event_shape = tuple(mask.shape)
        feature_mask = mask if mask.dim() == 1 else mask[:, 0, 0]
        by_feature = mask.dim() == 1 or bool((mask == feature_mask[:, None, None]).all())
        k = self.elementwise.params
        if by_feature:
            idx_a = feature_mask.nonzero().flatten()
            idx_b = (~feature_mask).nonzero().flatten()
            n_a, n_b = len(idx_a), len(idx_b)
            if torch.equal(idx_a, torch.arange(n_a)):
                self.mode = "first"
            elif torch.equal(idx_a, torch.arange(n_b, n_a + n_b)):
                self.mode = "last"
            else:
                self.mode = "index"
                perm = torch.cat([idx_a, idx_b])
                self.register_buffer("perm", perm, persistent=False)
                self.register_buffer("inverse_perm", torch.argsort(perm), persistent=False)
            self.n_a, self.n_b = n_a, n_b
            c_in, c_out = n_a, k * n_b
        else:
            self.mode = "mask"
            self.register_buffer("mask", mask.float(), persistent=False)
            c = mask.shape[0]
            c_in, c_out = c, k * c
        self.register_buffer("_mask_bool", mask, persistent=False)
        if conditioner is None:
            if mask.dim() == 1:
                hidden = (64, 64) if hidden is None else hidden
                hidden = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
                conditioner = MLP(c_in, c_out, hidden, context, activation, init_std)
            else:
                hidden = 32 if hidden is None else int(hidden)  # type: ignore[arg-type]
                conditioner = ConvNet(c_in, c_out, hidden, blocks, context, activation, init_std)
        self.conditioner = conditioner

    # -- the partition
    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "first":
            return z[:, :self.n_a], z[:, self.n_a:]
        if self.mode == "last":
            return z[:, self.n_b:], z[:, :self.n_b]
        zp = z.index_select(1, self.perm)
        return zp[:, :self.n_a], zp[:, self.n_a:]

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        if self.mode == "first":
            return torch.cat([a, b], 1)
        if self.mode == "last":
            return torch.cat([b, a], 1)
        return torch.cat([a, b], 1).index_select(1, self.inverse_perm)

    def params(self, h: Tensor, like: Tensor, context: Tensor | None = None) -> Tensor:
        """The map's raw parameters ``[P, *like.shape]`` (a view) from the conditioning input
        ``h``; ``like`` is the part they transform."""
        out = self.conditioner(h) if context is None else self.conditioner(h, context)
        return out.view(like.shape[0], self.elementwise.params, *like.shape[1:]).transpose(0, 1)

    def _couple(self, v: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        check_input(v, dims=self.event_shape, name=type(self).__name__, finite=False)
        apply = self.elementwise.inverse if inverse else self.elementwise.forward
        if self.mode == "mask":
            out, ld = apply(v, self.params(v * self.mask, v, context))
            keep = self._mask_bool
            return torch.where(keep, v, out), sum_except_batch(torch.where(keep, 0.0, ld))
        a, b = self._split(v)
        out, ld = apply(b, self.params(a, b, context))
        return self._merge(a, out), sum_except_batch(ld)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=False)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=True)

    @property
    def mask_tensor(self) -> Tensor:
        """The mask (``True`` = conditioning part), event-shaped, for pictures and tests."""
        return self._mask_bool

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, mode={self.mode!r}"


class AdditiveCoupling(Coupling):
    r"""NICE's additive coupling layer (Dinh et al., 2014): a :class:`Coupling` with the
    :class:`~flowlib.maps.AdditiveMap`.

    With mask :math:`b` (``True`` = conditioning part :math:`A`) and any network :math:`m`:

    * forward: :math:`x_A = z_A,\ x_B = z_B + m(z_A)`
    * inverse: :math:`z_A = x_A,\ z_B = x_B - m(x_A)`
    * log-det: :math:`0` in both directions. The Jacobian is unit lower triangular (after
      ordering :math:`A` first), so the layer preserves volume.

    The default conditioner's last layer starts with small random weights (``init_std`` 0.1)
    rather than at zero: see :class:`~flowlib.maps.AdditiveMap` for why an exact identity start
    stalls on symmetric data. Arguments as in :class:`Coupling`.

    Example:
        >>> layer = AdditiveCoupling(half_mask(4))
        >>> x, ladj = layer(torch.randn(3, 4))   # ladj = 0: volume preserving
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module | None = None, *,
                 hidden: int | Sequence[int] | None = None, blocks: int = 1, context: int = 0,
                 activation: str | type[nn.Module] = "relu", init_std: float | None = None):
        super().__init__(mask, AdditiveMap(), conditioner, hidden=hidden, blocks=blocks,
                         context=context, activation=activation, init_std=init_std)


class AffineCoupling(Coupling):
    r"""RealNVP's affine coupling layer (Dinh et al., 2017): a :class:`Coupling` with the
    :class:`~flowlib.maps.AffineMap` (its docstring says why the shift sits on the base side and
    why the log-scale clamp is an arctangent).

    With mask :math:`b` (``True`` = conditioning part :math:`A`) and a network returning
    :math:`(\tilde s, t)` from :math:`z_A` in one call (raw log-scales first, shifts second):

    * forward: :math:`x_A = z_A,\ x_B = (z_B - t(z_A)) \odot e^{s(z_A)}`
    * inverse: :math:`z_A = x_A,\ z_B = x_B \odot e^{-s(x_A)} + t(x_A)`
    * log-det (forward): :math:`\sum_{i \in B} s_i(z_A)`; the inverse's is its negative,

    with :math:`s = \frac{2c}{\pi}\arctan\frac{\pi\tilde s}{2c}`, :math:`c` =
    ``log_scale_bound`` (default 2; ``None``: no clamp). Other arguments as in :class:`Coupling`.

    Example:
        >>> layer = AffineCoupling(checkerboard_mask((1, 8, 8)), hidden=16)
        >>> x, ladj = layer(torch.randn(5, 1, 8, 8))
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module | None = None, *,
                 hidden: int | Sequence[int] | None = None, blocks: int = 1, context: int = 0,
                 activation: str | type[nn.Module] = "relu", init_std: float | None = None,
                 log_scale_bound: float | None = 2.0):
        super().__init__(mask, AffineMap(log_scale_bound), conditioner, hidden=hidden,
                         blocks=blocks, context=context, activation=activation,
                         init_std=init_std)

    @property
    def log_scale_bound(self) -> float | None:
        """The bound :math:`c` of the soft clamp (``None``: no clamp)."""
        return self.elementwise.log_scale_bound

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, log_scale_bound={self.log_scale_bound}"


class Rescale(Bijection):
    r"""NICE's diagonal scaling layer: one learned positive scale per dimension.

    * forward: :math:`x = e^{\lambda} \odot z`, i.e. :math:`x_i = S_{ii}\, z_i` with
      :math:`S_{ii} = e^{\lambda_i} > 0`
    * inverse: :math:`z = e^{-\lambda} \odot x`
    * log-det (forward): :math:`\sum_i \lambda_i = \log \prod_i S_{ii}`, the same for every sample.

    The scale is stored as its logarithm, so it stays positive. Placed next to the base, after
    a stack of additive couplings in the normalizing direction (as in NICE; the couplings all
    have determinant 1), it is the only layer that can change volume: NICE's :math:`\det = \prod_i S_{ii}`. (NICE writes the scaling in the
    normalizing direction, :math:`h_i = S_{ii} x_i`; the :math:`S` here scales the generative
    direction, so it is the reciprocal of NICE's.)
    """

    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.log_scale = nn.Parameter(torch.zeros(self.shape))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, dims=self.shape, name="Rescale", finite=False)
        return z * torch.exp(self.log_scale), self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, dims=self.shape, name="Rescale", finite=False)
        return x * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(x.shape[0])

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
