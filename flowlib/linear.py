r"""Linear bijections: a dense invertible matrix and fixed permutations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bijection import Bijection

__all__ = ["Linear", "Permutation"]


def _check_vector(x: Tensor, features: int, name: str) -> None:
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"{name}: expected shape [B, {features}], got {tuple(x.shape)}")


class Linear(Bijection):
    r"""A general invertible affine map with a dense learned matrix :math:`W` (chapter 1).

    * forward: :math:`x = W z + b`
    * inverse: :math:`z = W^{-1}(x - b)` (a linear solve, :math:`O(D^3)`)
    * log-det (forward): :math:`\log|\det W|`, the same for every sample, by an LU factorisation
      (``torch.linalg.slogdet``), :math:`O(D^3)` per evaluation.

    :math:`W` starts as a random rotation (seeded by the global generator), so the layer starts
    well conditioned. Nothing stops training from making :math:`W` singular: that cost and
    fragility is why later chapters use structured Jacobians instead.
    """

    def __init__(self, features: int, bias: bool = True):
        super().__init__()
        self.features = int(features)
        q, _ = torch.linalg.qr(torch.randn(self.features, self.features))
        self.weight = nn.Parameter(q)
        self.bias = nn.Parameter(torch.zeros(self.features)) if bias else None

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(z, self.features, "Linear")
        x = z @ self.weight.T
        if self.bias is not None:
            x = x + self.bias
        return x, torch.linalg.slogdet(self.weight)[1].expand(z.shape[0])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(x, self.features, "Linear")
        if self.bias is not None:
            x = x - self.bias
        z = torch.linalg.solve(self.weight, x.T).T
        return z, -torch.linalg.slogdet(self.weight)[1].expand(x.shape[0])


class Permutation(Bijection):
    r"""A fixed permutation of the features (dimension 1: coordinates of ``[B, D]`` or channels of
    ``[B, C, H, W]``).

    * forward: :math:`x_i = z_{\pi(i)}`, inverse: :math:`z_{\pi(i)} = x_i`
    * log-det: 0 (a permutation matrix has determinant :math:`\pm 1`)

    ``Permutation.reverse(D)`` reverses the order; ``Permutation.random(D, generator)`` shuffles.
    """

    def __init__(self, perm: Tensor | list[int]):
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"Permutation: {perm.tolist()} is not a permutation of 0..{len(perm) - 1}")
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    @classmethod
    def reverse(cls, features: int) -> "Permutation":
        return cls(torch.arange(features - 1, -1, -1))

    @classmethod
    def random(cls, features: int, generator: torch.Generator | None = None) -> "Permutation":
        return cls(torch.randperm(features, generator=generator))

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != len(self.perm):
            raise ValueError(f"Permutation: expected {len(self.perm)} features in dimension 1, "
                             f"got shape {tuple(x.shape)}")

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        return z[:, self.perm], z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x[:, self.inverse_perm], x.new_zeros(x.shape[0])

    def extra_repr(self) -> str:
        return f"features={len(self.perm)}"
