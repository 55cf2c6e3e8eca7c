"""The activation functions a conditioner network may use, by name: one table for every network
of :mod:`flowlib` (:class:`~flowlib.coupling.MLP`, :class:`~flowlib.coupling.ConvNet`,
:class:`~flowlib.autoregressive.MADE`)."""

from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATIONS", "activation"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU}


def activation(name: str | type[nn.Module], who: str = "network") -> type[nn.Module]:
    """The ``nn.Module`` class for ``name`` (a key of :data:`ACTIVATIONS`), or ``name`` itself
    when it already is a module class; a clear error naming ``who`` otherwise."""
    if isinstance(name, str):
        if name not in ACTIVATIONS:
            raise ValueError(f"{who}: unknown activation {name!r}; choose from "
                             f"{sorted(ACTIVATIONS)} or pass an nn.Module class")
        return ACTIVATIONS[name]
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name
    raise TypeError(f"{who}: activation must be a name or an nn.Module class, got {name!r}")
