r"""Glow's invertible 1x1 convolution (:class:`InvConv1x1`, plain and LU-parametrised) and one
step of Glow (:class:`GlowStep`: actnorm, 1x1 convolution, affine coupling).

A 1x1 convolution mixes the :math:`c` channels of every pixel with the same :math:`c \times c`
matrix :math:`W`. It generalizes the fixed permutations that RealNVP puts between couplings (a
permutation matrix is one particular :math:`W`): the flow *learns* which channels to mix
(Kingma & Dhariwal, 2018). Its log-determinant is :math:`h\,w \log|\det W|`, which costs
:math:`O(c^3)` per evaluation for a dense :math:`W`; writing :math:`W = P L (U + \operatorname{diag}
s)` (LU, with a fixed permutation :math:`P`) brings it down to :math:`O(c)`: :math:`\sum \log|s|`.
On vectors ``[B, D]`` the same layer is a learned :math:`D \times D` linear map, a learned
"permutation" between couplings.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .bijection import Bijection, Compose, check_input
from .coupling import AffineCoupling, channel_mask, half_mask
from .normalization import ActNorm

__all__ = ["InvConv1x1", "GlowStep"]


def _apply(w: Tensor, v: Tensor) -> Tensor:
    """``W`` applied to dimension 1 of ``[B, C]`` or ``[B, C, H, W]``."""
    if v.dim() == 2:
        return v @ w.T
    return torch.einsum("ij,bjhw->bihw", w, v)


class InvConv1x1(Bijection):
    r"""Invertible 1x1 convolution over dimension 1 (channels of ``[B, C, H, W]``, coordinates of
    ``[B, D]``), Glow (Kingma & Dhariwal, 2018).

    With the :math:`c \times c` matrix :math:`W` (``weight``) and :math:`h w` pixels (1 for vectors):

    * forward (generative): :math:`x_{:,i,j} = W z_{:,i,j}` at every pixel
    * inverse (normalizing): :math:`z_{:,i,j} = W^{-1} x_{:,i,j}`
    * log-det (forward): :math:`h\,w \log|\det W|`; the inverse's is its negative.

    ``lu=False`` (plain): :math:`W` is a free parameter, started as a random rotation (seeded by
    the global generator; :math:`\log|\det W| = 0`); the log-det uses ``torch.linalg.slogdet``
    and the inverse ``torch.linalg.inv``, both :math:`O(c^3)`.

    ``lu=True`` (default): :math:`W = P\, L\, (U + \operatorname{diag}(s))` with :math:`P` a fixed
    permutation (buffer), :math:`L` unit lower triangular, :math:`U` strictly upper triangular
    and :math:`s = \operatorname{sign} \odot e^{\log|s|}` (the signs fixed buffers, :math:`\log|s|`
    learned), all taken from the LU factorisation of the initial random rotation. Then
    :math:`\log|\det W| = \sum_i \log|s_i|`, :math:`O(c)`, and the inverse needs two triangular
    solves. :math:`W` stays invertible whatever the parameters (no :math:`s_i` can reach 0).

    Example:
        >>> conv = InvConv1x1(4)
        >>> x, ladj = conv(torch.randn(2, 4, 8, 8))   # ladj = 64 * sum(log|s|) = 0 at the start
    """

    def __init__(self, channels: int, lu: bool = True):
        super().__init__()
        c = int(channels)
        if c < 1:
            raise ValueError(f"InvConv1x1: channels must be positive, got {channels}")
        self.channels, self.lu = c, bool(lu)
        w0, _ = torch.linalg.qr(torch.randn(c, c))
        if not self.lu:
            self.weight_param = nn.Parameter(w0)
            return
        p, l, u = torch.linalg.lu(w0)
        s = torch.diagonal(u)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        # only the c(c-1)/2 free entries of each triangle are parameters
        idx = torch.tril_indices(c, c, -1)
        self.register_buffer("tril_idx", idx)
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(l[idx[0], idx[1]])
        self.upper = nn.Parameter(u[idx[1], idx[0]])
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def _factors(self) -> tuple[Tensor, Tensor]:
        """``L`` (unit lower) and ``U + diag(s)`` (upper) of the LU parametrisation."""
        i, j = self.tril_idx
        zero = torch.zeros_like(self.eye)
        l = zero.index_put((i, j), self.lower) + self.eye
        u = zero.index_put((j, i), self.upper) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return l, u

    @property
    def weight(self) -> Tensor:
        """The matrix :math:`W` of the generative direction."""
        if not self.lu:
            return self.weight_param
        l, u = self._factors()
        return self.p @ l @ u

    def logabsdet(self) -> Tensor:
        r""":math:`\log|\det W|` (per pixel)."""
        if not self.lu:
            return torch.linalg.slogdet(self.weight_param)[1]
        return self.log_s.sum()

    def inverse_weight(self) -> Tensor:
        r""":math:`W^{-1}`: ``torch.linalg.inv`` (plain) or two triangular solves (LU)."""
        if not self.lu:
            return torch.linalg.inv(self.weight_param)
        l, u = self._factors()
        # W^-1 = (U + diag s)^-1 L^-1 P^T
        l_inv_pt = torch.linalg.solve_triangular(l, self.p.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(u, l_inv_pt, upper=True)

    def _check(self, v: Tensor, name: str) -> int:
        check_input(v, ndim=(2, 4), name=name, finite=False)
        if v.shape[1] != self.channels:
            raise ValueError(f"{name}: expected {self.channels} channels in dimension 1, "
                             f"got shape {tuple(v.shape)}")
        return 1 if v.dim() == 2 else v.shape[2] * v.shape[3]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pixels = self._check(z, "InvConv1x1")
        return _apply(self.weight, z), (pixels * self.logabsdet()).expand(z.shape[0])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pixels = self._check(x, "InvConv1x1.inverse")
        return _apply(self.inverse_weight(), x), (-pixels * self.logabsdet()).expand(x.shape[0])

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lu={self.lu}"


class GlowStep(Compose):
    r"""One step of flow of Glow (Kingma & Dhariwal, 2018). In the normalizing direction (data to
    latent): :class:`~flowlib.normalization.ActNorm`, :class:`InvConv1x1`, then an
    :class:`~flowlib.coupling.AffineCoupling` that keeps the first half of the channels (a
    :func:`~flowlib.coupling.channel_mask` for images ``(C, H, W)``, a
    :func:`~flowlib.coupling.half_mask` for vectors ``D``) and transforms the other half.

    * forward (generative): :math:`x = a(W\, c(z))` with :math:`c` the coupling's forward,
      :math:`a(h) = s \odot h + b` the actnorm's forward
    * inverse (normalizing): :math:`z = c^{-1}(W^{-1} a^{-1}(x))`: actnorm, :math:`W^{-1}`, coupling
    * log-det: the sum of the three (see each layer).

    Since the 1x1 convolution mixes the channels before every coupling, a fixed mask is enough:
    no alternation or permutation is needed. ``permutation`` replaces the 1x1 convolution for
    ablations: ``"lu"`` (default), ``"plain"`` (dense :math:`W`), ``"reversed"`` or ``"shuffle"``
    (a fixed :class:`~flowlib.linear.Permutation`, the latter drawn from ``generator``).

    Args:
        shape: ``D`` (vectors) or ``(C, H, W)`` (images, ``C >= 2``).
        hidden, blocks, activation, context, log_scale_bound: those of the coupling's default
            conditioner (:class:`~flowlib.coupling.MLP` or :class:`~flowlib.coupling.ConvNet`,
            last layer zero: the coupling starts as the identity).
    """

    def __init__(self, shape: int | Sequence[int], hidden: int | Sequence[int] | None = None, *,
                 blocks: int = 1, permutation: str = "lu", context: int = 0,
                 activation: str = "relu", log_scale_bound: float | None = 2.0,
                 generator: torch.Generator | None = None):
        from .linear import Permutation

        if isinstance(shape, int):
            mask = half_mask(shape)
            c = int(shape)
        else:
            shp = tuple(int(s) for s in shape)
            mask = channel_mask(shp)
            c = shp[0]
        if permutation in ("lu", "plain"):
            mix: Bijection = InvConv1x1(c, lu=permutation == "lu")
        elif permutation in ("reversed", "reverse"):
            mix = Permutation.reverse(c)
        elif permutation == "shuffle":
            mix = Permutation.random(c, generator)
        else:
            raise ValueError(f"GlowStep: permutation must be 'lu', 'plain', 'reversed' or "
                             f"'shuffle', got {permutation!r}")
        coupling = AffineCoupling(mask, hidden=hidden, blocks=blocks, context=context,
                                  activation=activation, log_scale_bound=log_scale_bound)
        # generative order: coupling first, actnorm last (next to the data)
        super().__init__(coupling, mix, ActNorm(c))
        self.permutation = permutation

    @property
    def actnorm(self) -> ActNorm:
        return self.layers[2]  # type: ignore[return-value]

    @property
    def mix(self) -> Bijection:
        return self.layers[1]

    @property
    def coupling(self) -> AffineCoupling:
        return self.layers[0]  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"permutation={self.permutation!r}"
