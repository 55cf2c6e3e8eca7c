r"""The bijection contract every layer of :mod:`flowlib` honours.

Direction follows the lectures: ``forward`` is the *generative* map :math:`z \mapsto x`, ``inverse``
is the *normalizing* map :math:`x \mapsto z`. Both return the transformed tensor and
:math:`\log|\det J|` of **that** direction, one value per sample (shape ``[batch]``), summed over
every non-batch dimension:

.. math::

    x, \ell_f = f(z), \quad \ell_f = \log\left|\det \frac{\partial f}{\partial z}\right|, \qquad
    z, \ell_{f^{-1}} = f^{-1}(x), \quad \ell_{f^{-1}} = -\ell_f .

So ``inverse(forward(z)[0])[0]`` gives back ``z`` and the two log-determinants sum to zero.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Bijection", "Compose", "Inverse", "check_input", "soft_clamp", "sum_except_batch"]


def sum_except_batch(v: Tensor) -> Tensor:
    """Sum every dimension but the first: elementwise log-derivatives ``[B, ...]`` -> the
    per-sample log-determinant ``[B]``."""
    return v.reshape(v.shape[0], -1).sum(1)


def soft_clamp(raw: Tensor, bound: float, *, negate: bool = False) -> Tensor:
    r"""The log-scale clamp of the affine layers: :math:`\frac{2c}{\pi}\arctan\frac{\pi r}{2c}` with
    :math:`c` = ``bound`` > 0.

    The identity near 0 (slope 1), strictly inside :math:`(-c, c)`, and odd. Its slope
    :math:`1 / (1 + (\pi r / 2c)^2)` decays polynomially, where ``c * tanh(r / c)``'s decays
    exponentially: a layer whose raw output has grown large still gets a gradient to change its
    scale (the book's benchmark appendix compares the two clamps).

    ``negate=True`` returns ``-soft_clamp(raw, bound)`` at the cost of the positive one (the clamp
    is odd, so the sign rides on the scalar multiply).
    """
    k = math.pi / (2.0 * bound)
    return torch.atan(raw * (-k if negate else k)) * (1.0 / k)


def check_input(x: Tensor, *, dims: Sequence[int] | None = None, ndim: Sequence[int] | None = None,
                name: str = "input", finite: bool = True) -> None:
    """Raise a clear error for input a layer cannot use.

    Args:
        x: the tensor to check; dimension 0 is the batch.
        dims: if given, ``x.shape[1:]`` must equal it (``None`` entries match anything).
        ndim: if given, ``x.dim()`` must be one of these.
        name: what to call the tensor in the message (usually the layer's name).
        finite: whether to reject NaN and infinite values.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{name}: expected a batch [B, ...], got a scalar")
    if ndim is not None and x.dim() not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(x.shape)}")
    if dims is not None:
        got = tuple(x.shape[1:])
        if len(got) != len(dims) or any(d is not None and d != g for d, g in zip(dims, got)):
            shown = tuple("*" if d is None else d for d in dims)
            raise ValueError(f"{name}: expected shape [B, {', '.join(map(str, shown))}], "
                             f"got {tuple(x.shape)}")
    if finite and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name}: input holds {bad} non-finite value(s) (NaN or inf)")


class Bijection(nn.Module):
    """Base class of every invertible layer.

    A subclass provides ``forward(z, context=None) -> (x, ladj)`` (generative direction) and
    ``inverse(x, context=None) -> (z, ladj)`` (normalizing direction), where ``ladj`` has shape
    ``[batch]``. It must create tensors on the device and dtype of its input.

    ``layer.inv`` is the same layer with the two directions swapped (no copy of parameters): the
    inverse autoregressive flow is ``MaskedAutoregressive(...).inv``.
    """

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not define inverse")

    @property
    def inv(self) -> "Bijection":
        return Inverse(self)


class Inverse(Bijection):
    r"""The inverse of a bijection: ``forward`` is the wrapped layer's ``inverse`` and vice versa.

    .. math:: \text{forward}(z) = f^{-1}(z), \quad \text{inverse}(x) = f(x),
              \quad \ell = \mp \log|\det J_f| .
    """

    def __init__(self, base: Bijection):
        super().__init__()
        self.base = base

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base.inverse(z, context)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base.forward(x, context)

    @property
    def inv(self) -> Bijection:
        return self.base

    def extra_repr(self) -> str:
        return "inverse of the layer below"


class Compose(Bijection):
    r"""Layers applied one after another: :math:`f = f_K \circ \cdots \circ f_1`.

    ``forward`` applies ``layers[0]`` first; ``inverse`` undoes them in reverse order. The
    log-determinants add up (chain rule):

    .. math:: \log|\det J_f(z)| = \sum_{k=1}^{K} \log|\det J_{f_k}(h_{k-1})|, \quad h_0 = z.

    ``trace_forward`` / ``trace_inverse`` also return every intermediate value, for plots.
    """

    def __init__(self, *layers: Bijection | Iterable[Bijection]):
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], nn.Module):
            layers = tuple(layers[0])  # Compose([a, b, c]) as well as Compose(a, b, c)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Bijection):
                raise TypeError(f"Compose: layer {i} is a {type(layer).__name__}, not a Bijection")
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Bijection:
        return self.layers[i]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = None  # not a zeros tensor: one op fewer per call, for flows of small layers
        for layer in self.layers:
            z, l = layer(z, context)
            ladj = l if ladj is None else ladj + l
        return z, z.new_zeros(z.shape[0]) if ladj is None else ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = None
        for layer in reversed(self.layers):
            x, l = layer.inverse(x, context)
            ladj = l if ladj is None else ladj + l
        return x, x.new_zeros(x.shape[0]) if ladj is None else ladj

    def trace_forward(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """``[z, f_1(z), f_2(f_1(z)), ..., x]``: the sample after each layer, generative order."""
        out = [z]
        for layer in self.layers:
            z, _ = layer(z, context)
            out.append(z)
        return out

    def trace_inverse(self, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """``[x, ..., z]``: the data after each layer of the normalizing direction."""
        out = [x]
        for layer in reversed(self.layers):
            x, _ = layer.inverse(x, context)
            out.append(x)
        return out
