r"""Reshaping bijections for RealNVP's multi-scale architecture: :class:`Squeeze` and
:class:`FactorOut`.

**Squeeze** trades space for channels: every 2x2 block of pixels becomes one pixel with four
times the channels, ``[B, C, H, W] -> [B, 4C, H/2, W/2]``. A coupling with a channel mask after a
squeeze then conditions two pixels of each 2x2 block on the other two, and the convolutions of
the next scale see twice as far.

**Factoring out.** RealNVP (Dinh et al., 2017) sends only half of the channels on to the next
scale, in the normalizing direction; the other half is already "latent" and is left alone (it is
modelled directly by the base density). :class:`FactorOut` does this while keeping *one* tensor of
the data's size: it applies an inner bijection to the first ``keep`` channels and passes the
remaining channels through unchanged. A multi-scale flow is then a plain :class:`Compose`,

.. code-block:: text

    normalizing direction (data x -> latent z), one scale:
        couplings (checkerboard) -> squeeze -> couplings (channel masks)
        -> FactorOut(next scale)             # next scale sees half the channels
        -> unsqueeze                          # back to the data's shape: z has x's shape

so the whole model remains a :class:`~flowlib.Bijection` with a single base distribution
:math:`\mathcal N(0, I)` over all :math:`C H W` values: a standard normal on the concatenation
of the factored-out parts is the same as independent standard normals on each, whatever fixed
arrangement the values end up in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bijection import Bijection, check_input

__all__ = ["Squeeze", "FactorOut"]


class Squeeze(Bijection):
    r"""Space-to-channels: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (``H``, ``W`` even).

    * forward: :math:`x[b,\ 4c + 2i + j,\ h,\ w] = z[b,\ c,\ 2h + i,\ 2w + j]`,
      :math:`i, j \in \{0, 1\}`: the four pixels of each 2x2 block of channel :math:`c` become
      channels :math:`4c .. 4c+3` in row-major order (top-left, top-right, bottom-left,
      bottom-right).
    * inverse: the same placement read backwards (channels-to-space).
    * log-det: 0 (a permutation of the values).

    ``Squeeze().inv`` is the unsqueeze.
    """

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(z, ndim=(4,), name="Squeeze", finite=False)
        b, c, h, w = z.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze: height and width must be even, got shape {tuple(z.shape)}")
        x = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2), z.new_zeros(b)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_input(x, ndim=(4,), name="Squeeze.inverse", finite=False)
        b, c4, h, w = x.shape
        if c4 % 4:
            raise ValueError(f"Squeeze.inverse: channels must be a multiple of 4, "
                             f"got shape {tuple(x.shape)}")
        z = x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c4 // 4, 2 * h, 2 * w), x.new_zeros(b)


class FactorOut(Bijection):
    r"""Apply ``inner`` to the first ``keep`` channels (features, dimension 1) and pass the rest
    through: RealNVP's factoring out, kept inside one tensor.

    With :math:`z = (z_1, z_2)` split along dimension 1 (``z_1`` the first ``keep`` channels):

    * forward: :math:`x = (g(z_1), z_2)`, :math:`g` = ``inner``
    * inverse: :math:`z = (g^{-1}(x_1), x_2)`
    * log-det: that of ``inner`` (the pass-through part contributes 0).

    In the normalizing direction, ``inner`` is the rest of the flow (the coarser scales) and
    :math:`x_2` is "factored out": it goes to the base density as it is. ``keep`` defaults to half
    the channels (rounded down). Works on ``[B, D]`` and ``[B, C, H, W]``.
    """

    def __init__(self, inner: Bijection, keep: int | None = None):
        super().__init__()
        if not isinstance(inner, Bijection):
            raise TypeError(f"FactorOut: inner must be a Bijection, got {type(inner).__name__}")
        if keep is not None and int(keep) < 1:
            raise ValueError(f"FactorOut: keep must be a positive number of channels, got {keep}")
        self.inner = inner
        self.keep = None if keep is None else int(keep)

    def _k(self, v: Tensor) -> int:
        check_input(v, name="FactorOut", finite=False)
        if v.dim() < 2:
            raise ValueError(f"FactorOut: expected [B, C, ...], got shape {tuple(v.shape)}")
        k = v.shape[1] // 2 if self.keep is None else self.keep
        if not 1 <= k < v.shape[1]:
            raise ValueError(f"FactorOut: cannot keep {k} of {v.shape[1]} channels "
                             f"(shape {tuple(v.shape)})")
        return k

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = self._k(z)
        x1, ladj = self.inner(z[:, :k], context)
        return torch.cat([x1, z[:, k:]], 1), ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = self._k(x)
        z1, ladj = self.inner.inverse(x[:, :k], context)
        return torch.cat([z1, x[:, k:]], 1), ladj

    def extra_repr(self) -> str:
        return f"keep={'half' if self.keep is None else self.keep}"
