r"""Autoregressive networks and flows: :class:`MADE` and :class:`MaskedAutoregressive` (MAF).

The chain rule writes any density as a product of one-dimensional conditionals,

.. math:: p(x) = \prod_{i=1}^{D} p(x_{\sigma(i)} \mid x_{\sigma(1)}, \dots, x_{\sigma(i-1)})

for an ordering :math:`\sigma`. MADE (Germain et al., 2015) computes the parameters of *all* D
conditionals in one pass of a masked MLP whose output :math:`i` can only see the inputs that come
before :math:`i` in the ordering. A Gaussian conditional :math:`x_i = e^{\alpha_i} z_i + \mu_i` with
:math:`(\mu_i, \alpha_i)` computed by MADE from :math:`x_{<i}` is an invertible map
:math:`z \mapsto x` with a triangular Jacobian: the masked autoregressive flow (MAF, Papamakarios et
al., 2017). Its inverse, read as a generative map, is the inverse autoregressive flow (IAF, Kingma
et al., 2016): ``MaskedAutoregressive(...).inv``, the *same* layer with its directions swapped.

==========  ==========================  ===========================
layer       ``inverse`` x -> z          ``forward`` z -> x
==========  ==========================  ===========================
MAF         1 MADE pass (parallel)      D steps (sequential)
IAF (.inv)  D steps (sequential)        1 MADE pass (parallel)
==========  ==========================  ===========================

The D sequential steps cost one MADE pass of arithmetic in all when no gradient is recorded (every
hidden unit computed once, :mod:`flowlib.sequential`), D full passes otherwise. The layer takes
any elementwise map of :mod:`flowlib.maps` (affine by default).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import activation as get_activation
from .bijection import Bijection, check_input
from .maps import AffineMap, ElementwiseMap
from .sequential import sequential

__all__ = ["MaskedLinear", "MADE", "MaskedAutoregressive", "made_order"]

def made_order(features: int, order: str | Sequence[int] | Tensor = "natural",
               generator: torch.Generator | None = None) -> Tensor:
    r"""The ordering as a tensor ``order`` with ``order[j]`` = the position of input ``j`` in the
    autoregressive sequence (``0`` comes first): a permutation of ``0..D-1``.

    ``order`` is ``"natural"`` (``0, 1, ..., D-1``), ``"reversed"``, ``"random"`` (drawn from
    ``generator``) or an explicit permutation (a list or tensor of positions).
    """
    d = int(features)
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(d)
        if order in ("reversed", "reverse"):
            return torch.arange(d - 1, -1, -1)
        if order == "random":
            return torch.randperm(d, generator=generator)
        raise ValueError(f"MADE: order must be 'natural', 'reversed', 'random' or a permutation, "
                         f"got {order!r}")
    out = torch.as_tensor(order, dtype=torch.long).flatten()
    if len(out) != d or not torch.equal(out.sort().values, torch.arange(d)):
        raise ValueError(f"MADE: order {out.tolist()} is not a permutation of 0..{d - 1}")
    return out.clone()


class MaskedLinear(nn.Linear):
    r"""A linear layer whose weight is multiplied by a fixed 0/1 mask: :math:`y = (W \odot M) x + b`.

    The mask is a buffer (it moves with ``.to(device)`` and is saved with the model) and is applied
    once per call inside ``F.linear``, so the masked-out weights get zero gradient and never matter.
    """

    def __init__(self, mask: Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation (Germain et al., 2015): an MLP whose
    output :math:`i` depends only on the inputs that precede :math:`i` in the ordering.

    Every unit gets a *degree*: input :math:`j` has degree :math:`m(j) = \text{order}[j] + 1 \in
    \{1..D\}`, hidden units degrees in :math:`\{1..D-1\}` (assigned cyclically, or at random with
    ``hidden_degrees="random"``), output :math:`i` the degree of input :math:`i`. A connection is
    kept when

    * input/hidden :math:`j \to` hidden :math:`k`: :math:`m(k) \ge m(j)`,
    * hidden :math:`k \to` output :math:`i`: :math:`m(i) > m(k)` (strict).

    A path from input :math:`j` to output :math:`i` then needs :math:`m(i) > m(j)`, so
    :math:`\partial\,\text{out}_i / \partial x_j = 0` whenever :math:`\text{order}[j] \ge
    \text{order}[i]`: the network is autoregressive for that ordering. With a context, hidden
    degrees run over :math:`\{0..D-1\}`: units of degree 0 see the context alone and carry it to
    the first output, which sees no input (so does the single output when ``D = 1``).

    Args:
        features: :math:`D`, the number of inputs.
        hidden: sizes of the hidden layers (any number, possibly none).
        outputs: parameters per input (e.g. 2 for :math:`\mu, \alpha`); ``forward`` returns
            ``[B, outputs, D]`` (``[B, D]`` when ``outputs=1``).
        order: ``"natural"``, ``"reversed"``, ``"random"`` or an explicit permutation,
            see :func:`made_order`.
        context_features: size of an optional context vector fed to the first hidden layer
            *unmasked* (every output may depend on it).
        activation: ``"relu"`` (default), ``"elu"``, ``"tanh"``, ``"gelu"``, ``"silu"``,
            ``"leaky_relu"`` or an ``nn.Module`` class.
        hidden_degrees: ``"cyclic"`` (deterministic, every degree used when a layer has at least
            :math:`D-1` units) or ``"random"`` (Germain et al.'s sampling).
        generator: the random source for ``order="random"`` and ``hidden_degrees="random"``.

    ``masks`` lists the mask matrices (``[out, in]``, ``outputs`` repetitions in the last one) and
    ``connectivity()`` their product: which outputs can see which inputs, for pictures.

    Example:
        >>> made = MADE(3, hidden=(8,), outputs=2)
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 2, 3])
    """

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), outputs: int = 1,
                 order: str | Sequence[int] | Tensor = "natural", context_features: int = 0,
                 activation: str | type[nn.Module] = "relu", hidden_degrees: str = "cyclic",
                 generator: torch.Generator | None = None):
        super().__init__()
        if int(features) < 1 or int(outputs) < 1 or int(context_features) < 0:
            raise ValueError(f"MADE: features and outputs must be positive and context_features "
                             f"non-negative, got {features}, {outputs}, {context_features}")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"MADE: hidden sizes must be positive, got {tuple(hidden)}")
        self.features, self.outputs = int(features), int(outputs)
        self.context_features = int(context_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.register_buffer("order", made_order(self.features, order, generator))
        d = self.features

        # Degrees of every layer's units. Hidden degrees run over 1..D-1, or 0..D-1 with a
        # context: units of degree 0 see the context alone, and they are the only path from the
        # context to the first output (degree 1), which sees no input.
        lowest = 0 if self.context_features or d == 1 else 1
        degrees = [self.order + 1]
        for h in self.hidden:
            if hidden_degrees == "cyclic":
                deg = torch.arange(h) % (d - lowest) + lowest
            elif hidden_degrees == "random":
                low = int(degrees[-1].min()) if len(degrees) > 1 else lowest
                deg = torch.randint(low, d, (h,), generator=generator)
            else:
                raise ValueError(f"MADE: hidden_degrees must be 'cyclic' or 'random', "
                                 f"got {hidden_degrees!r}")
            degrees.append(deg)
        self.register_buffer("degrees_out", degrees[0].repeat(self.outputs))
        # Hidden degrees, kept for the incremental sequential pass (flowlib.sequential); not in
        # the state dict, which the masks already determine.
        for k, deg in enumerate(degrees[1:]):
            self.register_buffer(f"_degrees_{k}", deg, persistent=False)

        activation = get_activation(activation, "MADE")

        layers: list[nn.Module] = []
        for k, (d_in, d_out) in enumerate(zip(degrees[:-1], degrees[1:])):
            mask = (d_out[:, None] >= d_in[None, :]).float()
            if k == 0 and self.context_features:
                mask = torch.cat([mask, torch.ones(len(d_out), self.context_features)], 1)
            layers += [MaskedLinear(mask), activation()]
        mask = (self.degrees_out[:, None] > degrees[-1][None, :]).float()
        if not self.hidden and self.context_features:
            mask = torch.cat([mask, torch.ones(len(mask), self.context_features)], 1)
        layers.append(MaskedLinear(mask))
        self.net = nn.Sequential(*layers)

    @property
    def masks(self) -> list[Tensor]:
        """The mask of every layer, ``[out, in]`` (context columns last in the first one)."""
        return [m.mask for m in self.masked_linears]

    @property
    def masked_linears(self) -> list[MaskedLinear]:
        """The masked layers, input side first (the last one is the output layer)."""
        return [m for m in self.net if isinstance(m, MaskedLinear)]

    @property
    def hidden_degrees(self) -> list[Tensor]:
        """The degree of every unit of every hidden layer (see the class docstring)."""
        return [getattr(self, f"_degrees_{k}") for k in range(len(self.hidden))]

    @property
    def last(self) -> MaskedLinear:
        """The output layer (e.g. to initialise a flow layer close to the identity)."""
        return self.net[-1]

    def zero_output_(self) -> "MADE":
        """Set the output layer to zero (in place), so that a flow layer built on this MADE
        starts as the identity map. Returns the MADE."""
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        return self

    def connectivity(self) -> Tensor:
        """``[outputs * D, D]``: entry ``(i, j)`` counts the paths from input ``j`` to output ``i``
        through the masks (zero exactly where the output cannot depend on the input)."""
        out = None
        for m in self.masks:
            m = m[:, : (self.features if out is None else m.shape[1])]
            out = m if out is None else m @ out
        return out

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        check_input(x, dims=(self.features,), ndim=(2,), name="MADE", finite=False)
        if self.context_features:
            if context is None or context.shape != (x.shape[0], self.context_features):
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"MADE: expected context [B={x.shape[0]}, "
                                 f"{self.context_features}], got {got}")
            x = torch.cat([x, context], 1)
        elif context is not None:
            raise ValueError("MADE: got a context but was built with context_features=0")
        out = self.net(x)
        if self.outputs == 1:
            return out
        return out.view(x.shape[0], self.outputs, self.features)

    def extra_repr(self) -> str:
        return (f"features={self.features}, hidden={self.hidden}, outputs={self.outputs}, "
                f"context_features={self.context_features}")


class MaskedAutoregressive(Bijection):
    r"""A masked autoregressive layer with any elementwise map: one layer of the masked
    autoregressive flow (MAF, Papamakarios et al., 2017) by default; its ``.inv`` is one layer of
    the inverse autoregressive flow (IAF, Kingma et al., 2016).

    A :class:`MADE` computes, for every coordinate :math:`i`, the parameters
    :math:`\theta_i(x_{<i})` of the elementwise map :math:`h` (``elementwise``, an
    :class:`~flowlib.maps.ElementwiseMap`) from the coordinates before :math:`i` in the ordering:

    * inverse (normalizing, **parallel**: one MADE pass): :math:`z_i = h^{-1}(x_i;\ \theta_i(x_{<i}))`;
    * forward (generative, **sequential**): :math:`x_i = h(z_i;\ \theta_i(x_{<i}))`, coordinate
      after coordinate in the ordering (:func:`~flowlib.sequential.sequential`: every hidden unit
      computed once, about one MADE pass of arithmetic in :math:`D` steps, when no gradient is
      recorded; :math:`D` MADE passes otherwise);
    * log-det: forward :math:`\sum_i \log|h'(z_i)|`, inverse its negative (the Jacobian is
      triangular in the ordering, with diagonal :math:`h'`).

    With the default :class:`~flowlib.maps.AffineMap`, the layer is a Gaussian autoregressive
    model, :math:`x_i = e^{s_i} z_i + \mu_i` given :math:`x_{<i}` with :math:`\mu_i = -t_i e^{s_i}`:
    the MAF layer, :math:`z = x \odot e^{-s} + t` in one pass. With
    :class:`~flowlib.maps.AdditiveMap` it is volume preserving; with
    :class:`~flowlib.spline.SplineMap` it is the autoregressive neural spline flow.

    The MADE's output layer starts at zero (``identity_init``), so the layer starts as the
    identity map for every map of :mod:`flowlib.maps`.

    Args:
        features: :math:`D`.
        hidden, order, activation: passed to :class:`MADE`.
        elementwise: the map (default ``AffineMap(log_scale_bound=3.0)``).
        context: size of an optional context vector (every output may depend on it).
        identity_init: start with a zero output layer (the identity map).
        generator: random source of a ``"random"`` order.

    Example:
        >>> maf = MaskedAutoregressive(4, hidden=(16,))
        >>> iaf = maf.inv  # the same parameters: parallel sampling, sequential density
    """

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64), *,
                 elementwise: ElementwiseMap | None = None,
                 order: str | Sequence[int] | Tensor = "natural", context: int = 0,
                 activation: str | type[nn.Module] = "relu", identity_init: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.features = int(features)
        self.elementwise = AffineMap(3.0) if elementwise is None else elementwise
        if not isinstance(self.elementwise, ElementwiseMap):
            raise TypeError(f"{type(self).__name__}: elementwise must be an ElementwiseMap, got "
                            f"{type(self.elementwise).__name__}")
        self.made = MADE(features, hidden, outputs=self.elementwise.params, order=order,
                         context_features=context, activation=activation, generator=generator)
        if identity_init:
            self.made.zero_output_()

    @property
    def order(self) -> Tensor:
        return self.made.order

    def params(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The map's raw parameters at ``x``, ``[P, B, D]`` (one MADE pass; a view)."""
        return self.made(x, context).view(x.shape[0], self.elementwise.params,
                                          self.features).transpose(0, 1)

    def _affine(self) -> AffineMap:
        if not isinstance(self.elementwise, AffineMap):
            raise TypeError(f"{type(self).__name__}: Gaussian conditionals need an AffineMap, "
                            f"this layer has {type(self.elementwise).__name__}")
        return self.elementwise

    def shift_and_log_scale(self, x: Tensor, context: Tensor | None = None
                            ) -> tuple[Tensor, Tensor]:
        r"""Affine map only: :math:`(t, s)` at ``x``, each ``[B, D]`` (soft clamp applied), so
        that :math:`z = x e^{-s} + t`."""
        raw, shift = self.params(x, context)
        return shift, self._affine().log_scale(raw)

    def conditionals(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Affine map only: :math:`(\mu, \log\sigma)` of every Gaussian conditional
        :math:`p(x_i \mid x_{<i}) = \mathcal N(\mu_i, \sigma_i^2)`, computed at ``x``."""
        return self._affine().mean_and_log_std(self.params(x, context))

    def _check(self, x: Tensor, where: str) -> None:
        # Shapes only: non-finite values are caught once at the flow's entry (Flow.log_prob);
        # a finiteness test per layer would cost a device synchronisation per layer on a GPU.
        check_input(x, dims=(self.features,), name=f"{type(self).__name__}.{where}", finite=False)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "inverse")
        z, ld = self.elementwise.inverse(x, self.params(x, context))
        return z, ld.sum(1)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, "forward")
        return sequential(self.made, self.elementwise, z, context)

    def extra_repr(self) -> str:
        return f"features={self.features}"
