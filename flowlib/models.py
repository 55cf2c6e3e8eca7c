"""Factories that return a ready-to-train :class:`~flowlib.Flow` for each model family of the
course. Each trains well with its defaults on the 2-D toys (``dim=2``) and on the 8x8 digits."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .autoregressive import MaskedAutoregressive, made_order
from .bijection import Bijection, Compose
from .maps import AffineMap
from .distributions import Flow, StandardNormal
from .coupling import (AdditiveCoupling, AffineCoupling, Rescale, alternating_mask,
                       channel_mask, checkerboard_mask, half_mask)
from .distributions import StandardLogistic
from .normalization import BatchNormFlow
from .preprocess import LogitPreprocess
from .reshape import FactorOut, Squeeze
from .spline import SplineAutoregressive, SplineCoupling

__all__: list[str] = ["maf", "iaf", "nice", "realnvp", "glow", "nsf"]


def _autoregressive_orders(features: int, layers: int, permutation: str, seed: int) -> list[Tensor]:
    """The MADE ordering of each layer. Permuting the coordinates between two layers is the same
    as giving the next layer the permuted ordering, so the stack needs no Permutation layers:
    those would move data every pass for nothing (a standard normal base is unchanged by the
    final permutation that remains)."""
    g = torch.Generator().manual_seed(seed)
    if permutation in ("reversed", "reverse"):
        return [made_order(features, "natural" if k % 2 == 0 else "reversed") for k in range(layers)]
    if permutation == "random":
        return [made_order(features, "natural")] + [made_order(features, "random", g) for _ in range(layers - 1)]
    if permutation == "none":
        return [made_order(features, "natural")] * layers
    raise ValueError(f"permutation must be 'reversed', 'random' or 'none', got {permutation!r}")


def _autoregressive_stack(features: int, layers: int, hidden: Sequence[int], permutation: str,
                          context: int, activation: str, log_scale_bound: float | None,
                          invert: bool, seed: int) -> Compose:
    blocks: list[Bijection] = []
    for order in _autoregressive_orders(features, layers, permutation, seed):
        layer = MaskedAutoregressive(features, hidden, elementwise=AffineMap(log_scale_bound),
                                     order=order, context=context, activation=activation)
        blocks.append(layer.inv if invert else layer)
    return Compose(*blocks)


def maf(features: int, layers: int = 5, hidden: Sequence[int] = (64, 64), *,
        permutation: str = "reversed", context: int = 0, activation: str = "relu",
        log_scale_bound: float | None = 3.0, seed: int = 0) -> Flow:
    r"""Masked autoregressive flow (Papamakarios et al., 2017): ``layers`` :class:`MaskedAutoregressive`
    layers (MADE with ``hidden`` units) over a standard normal base, each conditioning in its own
    order: ``permutation="reversed"`` alternates the natural and the reversed ordering,
    ``"random"`` draws the orderings after the first from ``seed``, ``"none"`` keeps the natural
    one throughout. That is the classic permutation between layers, folded into the MADEs'
    orderings (see ``_autoregressive_orders``).

    ``log_prob`` costs one MADE pass per layer; ``sample`` takes ``features`` sequential steps per
    layer, with about one MADE pass of arithmetic in all (:mod:`flowlib.sequential`).
    ``context`` > 0 makes a conditional flow (pass ``context=`` to ``log_prob``/``sample``).
    ``log_scale_bound`` is the soft clamp of each layer's log-scale (:class:`~flowlib.maps.AffineMap`).

    Example:
        >>> flow = maf(2)
        >>> flow.log_prob(torch.randn(8, 2)).shape
        torch.Size([8])
    """
    stack = _autoregressive_stack(features, layers, hidden, permutation, context, activation,
                                  log_scale_bound, invert=False, seed=seed)
    return Flow(stack, StandardNormal(features))


def iaf(features: int, layers: int = 5, hidden: Sequence[int] = (64, 64), *,
        permutation: str = "reversed", context: int = 0, activation: str = "relu",
        log_scale_bound: float | None = 3.0, seed: int = 0) -> Flow:
    r"""Inverse autoregressive flow (Kingma et al., 2016): the layers of :func:`maf`, each
    inverted with ``.inv`` (the same parameters, directions swapped).

    ``sample`` and ``sample_and_log_prob`` cost one MADE pass per layer (the density of its own
    samples comes with them); ``log_prob`` of given data takes ``features`` sequential steps per layer
    (about one MADE pass of arithmetic when no gradient is recorded, :mod:`flowlib.sequential`).
    """
    stack = _autoregressive_stack(features, layers, hidden, permutation, context, activation,
                                  log_scale_bound, invert=True, seed=seed)
    return Flow(stack, StandardNormal(features))


# ---------------------------------------------------------------------------- coupling flows


def _layer_count(who: str, layers: int | None, old: int | None, old_name: str,
                 default: int) -> int:
    """``layers``, the one name every factory uses for its number of layers; ``old`` is the
    count under the factory's former name (still accepted, with a DeprecationWarning)."""
    if old is not None:
        import warnings

        if layers is not None:
            raise TypeError(f"{who}: give layers= only ({old_name}= is its former name)")
        warnings.warn(f"{who}: {old_name}= is now layers=", DeprecationWarning, stacklevel=3)
        layers = old
    layers = default if layers is None else int(layers)
    if layers < 1:
        raise ValueError(f"{who}: layers must be positive, got {layers}")
    return layers


def _image_shape(name: str, features: int | None, shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """``shape`` as ``(C, H, W)`` for an image model, ``None`` for a vector model (``features``);
    exactly one of the two must be given."""
    if (features is None) == (shape is None):
        raise ValueError(f"{name}: give either features (vectors) or shape=(C, H, W) (images)")
    if shape is None:
        return None
    shp = tuple(int(s) for s in shape)
    if len(shp) != 3:
        raise ValueError(f"{name}: shape must be (C, H, W), got {shp}")
    return shp


def _vector_masks(features: int, mask: str | Tensor) -> tuple[Tensor, Tensor]:
    """The two complementary vector masks the couplings alternate between."""
    import torch

    if isinstance(mask, str):
        if mask == "alternating":
            m = alternating_mask(features)
        elif mask == "half":
            m = half_mask(features)
        else:
            raise ValueError(f"mask must be 'alternating', 'half' or a boolean tensor [features], "
                             f"got {mask!r}")
    else:
        m = torch.as_tensor(mask).bool().flatten()
        if m.numel() != features:
            raise ValueError(f"mask has {m.numel()} entries, expected features = {features}")
    return m, ~m


def nice(features: int, layers: int | None = None, hidden: Sequence[int] = (64, 64), *,
         mask: str | Tensor = "alternating", rescale: bool = True, base: str = "normal",
         logit: float | None = None, context: int = 0, activation: str = "relu",
         init_std: float | None = None, couplings: int | None = None) -> Flow:
    r"""NICE (Dinh et al., 2014): ``layers`` (default 6) :class:`~flowlib.coupling.AdditiveCoupling`
    layers with MLP conditioners (``hidden`` units), the partition alternating between a mask and its
    complement, then NICE's diagonal :class:`~flowlib.coupling.Rescale` next to the base.

    In the normalizing direction (what ``log_prob`` runs), the data go through
    ``[LogitPreprocess(logit)] -> couplings -> Rescale`` to the base, ``"normal"`` (default) or
    ``"logistic"`` (the paper's prior). The couplings have determinant 1, so
    :math:`\log p(x) = \log p_Z(z) - \sum_i \lambda_i` (plus the logit's log-det): only the
    rescaling changes volume. ``rescale=False`` gives a volume-preserving flow.

    Args:
        features: the data dimension (at least 2).
        mask: ``"alternating"`` (even/odd coordinates, as in the paper), ``"half"`` (first/second
            half), or a boolean tensor ``[features]`` (``True`` = conditioning part of the first layer).
        logit: if given, the data lie in :math:`[0, 1]^D` (e.g. dequantized pixels) and the flow
            starts with :class:`~flowlib.preprocess.LogitPreprocess` with this :math:`\alpha`.
        context: size of an optional context vector given to every conditioner.
        init_std: the couplings' last-layer initialisation (default: ``AdditiveCoupling``'s 0.1,
            which breaks the symmetry that stalls an exact identity start, see there).

    Example:
        >>> flow = nice(2)
        >>> flow.log_prob(torch.randn(8, 2)).shape
        torch.Size([8])
    """
    if base not in ("normal", "logistic"):
        raise ValueError(f"nice: base must be 'normal' or 'logistic', got {base!r}")
    couplings = _layer_count("nice", layers, couplings, "couplings", 6)
    masks = _vector_masks(features, mask)
    steps: list[Bijection] = []  # normalizing order: data first
    if logit is not None:
        steps.append(LogitPreprocess(logit))
    steps += [AdditiveCoupling(masks[k % 2], hidden=hidden, context=context, activation=activation,
                               init_std=init_std) for k in range(couplings)]
    if rescale:
        steps.append(Rescale(features))
    prior = StandardNormal(features) if base == "normal" else StandardLogistic(features)
    return Flow(Compose(*reversed(steps)), prior)


def _realnvp_image(shape: tuple[int, int, int], couplings: int, hidden: int, blocks: int,
                   scales: int, batch_norm: bool, context: int, activation: str,
                   log_scale_bound: float | None) -> Compose:
    """The multi-scale stack, built in the normalizing order and returned in generative order."""

    def stage(mask_fn, shp: tuple[int, int, int], n: int, steps: list[Bijection]) -> None:
        for k in range(n):
            steps.append(AffineCoupling(mask_fn(shp, flip=k % 2 == 1), hidden=hidden,
                                        blocks=blocks, context=context, activation=activation,
                                        log_scale_bound=log_scale_bound))
            if batch_norm:
                steps.append(BatchNormFlow(shp[0]))

    def level(c: int, h: int, w: int, s: int) -> Compose:
        steps: list[Bijection] = []
        if s == scales - 1 or h % 2 or w % 2:  # the last scale: checkerboard couplings only
            stage(checkerboard_mask, (c, h, w), couplings + 1, steps)
        else:
            stage(checkerboard_mask, (c, h, w), couplings, steps)
            steps.append(Squeeze().inv)  # its inverse squeezes, in the normalizing direction
            stage(channel_mask, (4 * c, h // 2, w // 2), couplings, steps)
            steps.append(FactorOut(level(2 * c, h // 2, w // 2, s + 1)))  # half goes on
            steps.append(Squeeze())  # its inverse unsqueezes: z gets the data's shape back
        return Compose(*reversed(steps))

    return level(*shape, 0)


def realnvp(features: int | None = None, *, shape: Sequence[int] | None = None,
            layers: int | None = None, hidden: int | Sequence[int] | None = None,
            blocks: int = 1, scales: int = 2, mask: str | Tensor = "alternating",
            batch_norm: bool = False, logit: float | None = None, context: int = 0,
            activation: str = "relu", log_scale_bound: float | None = 2.0,
            couplings: int | None = None) -> Flow:
    r"""RealNVP (Dinh et al., 2017) with a standard normal base, for vectors (``features=``) or images
    (``shape=(C, H, W)``).

    **Vectors.** ``layers`` (default 8) :class:`~flowlib.coupling.AffineCoupling` layers with
    MLP conditioners, the partition alternating between ``mask`` and its complement
    (``"alternating"``, ``"half"`` or a boolean tensor ``[features]``, e.g. a flattened
    :func:`~flowlib.coupling.checkerboard_mask` for images seen as vectors). ``hidden`` defaults to
    ``(64, 64)`` for ``features <= 16`` and ``(32, 32)`` above: on the 1500 training digits
    (``dim=64``) wider conditioners overfit within 2000 steps.

    **Images: the multi-scale architecture.** At each scale, in the normalizing direction:
    ``layers`` (default 3) checkerboard couplings, a squeeze (``[C, H, W] -> [4C, H/2, W/2]``),
    ``layers`` channel-mask couplings, then half the channels go on to the next scale
    (:class:`~flowlib.reshape.FactorOut`) while the other half is factored out; the last scale has
    ``layers + 1`` checkerboard couplings. The conditioners are
    :class:`~flowlib.coupling.ConvNet` (``hidden`` channels, ``blocks`` residual blocks). Every
    squeeze is undone at the end of its scale, so ``z`` has the data's shape and one standard
    normal base covers every factored-out part.

    Args:
        batch_norm: insert a :class:`~flowlib.normalization.BatchNormFlow` after every coupling
            (but the last, for vectors).
        logit: if given, the data lie in :math:`[0, 1]` and the flow starts (normalizing
            direction) with :class:`~flowlib.preprocess.LogitPreprocess` with this :math:`\alpha`.
        context: size of an optional context vector given to every conditioner.
        log_scale_bound: the soft clamp of each coupling's log-scale (see ``AffineCoupling``).

    Example:
        >>> flow = realnvp(shape=(1, 8, 8), logit=0.05)
        >>> flow.sample(4).shape
        torch.Size([4, 1, 8, 8])
    """
    shp = _image_shape("realnvp", features, shape)
    steps: list[Bijection] = []  # normalizing order: data first
    if logit is not None:
        steps.append(LogitPreprocess(logit))
    if shp is not None:
        body = _realnvp_image(shp, _layer_count("realnvp", layers, couplings, "couplings", 3),
                              32 if hidden is None else int(hidden), blocks,  # type: ignore[arg-type]
                              scales, batch_norm, context, activation, log_scale_bound)
        return Flow(Compose(body, *reversed(steps)), StandardNormal(shp))
    features = int(features)  # type: ignore[arg-type]
    couplings = _layer_count("realnvp", layers, couplings, "couplings", 8)
    if hidden is None:
        hidden = (64, 64) if features <= 16 else (32, 32)
    masks = _vector_masks(features, mask)
    for k in range(couplings):
        steps.append(AffineCoupling(masks[k % 2], hidden=hidden, context=context,
                                    activation=activation, log_scale_bound=log_scale_bound))
        if batch_norm and k < couplings - 1:
            steps.append(BatchNormFlow(features))
    return Flow(Compose(*reversed(steps)), StandardNormal(features))


# ---------------------------------------------------------------------------- Glow


def _glow_image(shape: tuple[int, int, int], steps: int, hidden: int, blocks: int, scales: int,
                permutation: str, learned_prior: bool, context: int, activation: str,
                log_scale_bound: float | None) -> Compose:
    """Glow's multi-scale stack, built in the normalizing order, returned in generative order."""
    from .coupling import AffineCoupling, channel_mask
    from .invconv import GlowStep

    def level(c: int, h: int, w: int, s: int) -> Compose:
        if h % 2 or w % 2:
            raise ValueError(f"glow: scale {s} needs an even height and width, got {(c, h, w)}")
        c4, h2, w2 = 4 * c, h // 2, w // 2
        layers: list[Bijection] = [Squeeze().inv]  # its inverse squeezes (normalizing direction)
        layers += [GlowStep((c4, h2, w2), hidden, blocks=blocks, permutation=permutation,
                            context=context, activation=activation,
                            log_scale_bound=log_scale_bound) for _ in range(steps)]
        last = s == scales - 1 or h2 % 2 or w2 % 2
        if not last:
            if learned_prior:
                # Glow's learned prior of the factored-out half, N(mu(h1), sigma(h1)^2), is the
                # same as a standard normal after an affine coupling conditioned on the kept half
                layers.append(AffineCoupling(channel_mask((c4, h2, w2)), hidden=hidden,
                                             blocks=blocks, context=context,
                                             activation=activation,
                                             log_scale_bound=log_scale_bound))
            layers.append(FactorOut(level(c4 // 2, h2, w2, s + 1)))
        layers.append(Squeeze())  # its inverse unsqueezes: z keeps the data's shape
        return Compose(*reversed(layers))

    return level(*shape, 0)


def glow(features: int | None = None, *, shape: Sequence[int] | None = None, layers: int | None = None,
         hidden: int | Sequence[int] | None = None, blocks: int = 1, scales: int = 2,
         permutation: str = "lu", learned_prior: bool = True, logit: float | None = None,
         context: int = 0, activation: str = "relu",
         log_scale_bound: float | None = 2.0,
         steps: int | None = None) -> Flow:
    r"""Glow (Kingma & Dhariwal, 2018): steps of flow (:class:`~flowlib.invconv.GlowStep`:
    actnorm, invertible 1x1 convolution, affine coupling with a fixed half/channel mask), standard
    normal base.

    **Vectors** (``features``): ``layers`` (default 8) steps of flow with :class:`~flowlib.coupling.MLP`
    conditioners (``hidden`` defaults to ``(64, 64)`` for ``features <= 16``, ``(32, 32)`` above, as
    in :func:`realnvp`). The 1x1 convolution is then a learned :math:`D \times D` mixing of the
    coordinates.

    **Images** (``shape=(C, H, W)``): Glow's multi-scale architecture. At each of ``scales``
    levels, in the normalizing direction: squeeze, ``layers`` (default 4) steps of flow with
    :class:`~flowlib.coupling.ConvNet` conditioners (``hidden`` channels, default 32, ``blocks``
    residual blocks), then (but at the last level) half the channels are factored out and the
    other half goes on. With ``learned_prior`` (default), the factored-out half gets Glow's
    learned prior :math:`\mathcal N(\mu(h), \sigma(h)^2)`, conditioned on the half that goes on:
    written as an affine coupling before the split, so the flow keeps one standard normal base
    over all values (``z`` has the data's shape). Sampling at temperature :math:`T`
    (``flow.sample(n, temperature=T)``) scales that base, hence every factored-out part too, by
    :math:`T`: the learned prior is sampled as :math:`\mu + \sigma\,(T\epsilon)`, as in Glow.

    Args:
        permutation: between the couplings: ``"lu"`` (LU 1x1 convolution, default), ``"plain"``
            (dense :math:`W`), ``"reversed"`` or ``"shuffle"`` (fixed permutations, for ablations).
        logit: if given, the data lie in :math:`[0, 1]` and the flow starts (normalizing
            direction) with :class:`~flowlib.preprocess.LogitPreprocess` with this :math:`\alpha`.
        context: size of an optional context given to every conditioner.
        log_scale_bound: the soft clamp of each coupling's log-scale (see ``AffineCoupling``).

    The actnorm layers initialize themselves on the first training batch (see
    :class:`~flowlib.normalization.ActNorm`).

    Example:
        >>> flow = glow(shape=(1, 8, 8), logit=0.05)
        >>> flow.sample(4, temperature=0.7).shape
        torch.Size([4, 1, 8, 8])
    """
    from .invconv import GlowStep

    shp = _image_shape("glow", features, shape)
    pre: list[Bijection] = [LogitPreprocess(logit)] if logit is not None else []
    if shp is not None:
        body = _glow_image(shp, _layer_count("glow", layers, steps, "steps", 4),
                           32 if hidden is None else int(hidden), blocks,  # type: ignore[arg-type]
                           int(scales), permutation, learned_prior, context, activation,
                           log_scale_bound)
        return Flow(Compose(body, *pre), StandardNormal(shp))
    features = int(features)  # type: ignore[arg-type]
    if hidden is None:
        hidden = (64, 64) if features <= 16 else (32, 32)
    g = torch.Generator().manual_seed(0)
    count = _layer_count("glow", layers, steps, "steps", 8)
    flow_steps = [GlowStep(features, hidden, permutation=permutation, context=context,
                           activation=activation, log_scale_bound=log_scale_bound, generator=g)
                  for _ in range(count)]
    return Flow(Compose(*reversed(flow_steps), *pre), StandardNormal(features))


# ---------------------------------------------------------------------------- neural spline flows


def nsf(features: int, layers: int = 5, hidden: Sequence[int] = (64, 64), bins: int = 8,
        bound: float = 4.0, *, kind: str = "autoregressive", context: int = 0,
        seed: int = 0) -> Flow:
    r"""Neural spline flow (Durkan et al., 2019): ``layers`` rational-quadratic spline layers
    (``bins`` bins on :math:`[-B, B]` = ``[-bound, bound]``, identity outside) over a standard
    normal base.

    ``kind="autoregressive"``: :class:`~flowlib.spline.SplineAutoregressive` layers (MADE with
    ``hidden`` units), their orders alternating ``"natural"`` / ``"reversed"``: the alternation
    does the work of a permutation between layers, without the extra layers. ``log_prob`` costs
    one MADE pass per layer, ``sample`` ``features`` passes per layer.
    ``kind="coupling"``: :class:`~flowlib.spline.SplineCoupling` layers (MLP conditioners), the
    partition alternating between :func:`~flowlib.coupling.alternating_mask` and its complement;
    one pass per layer both ways (``features >= 2``).

    ``context`` > 0 makes a conditional flow. ``seed`` seeds the networks' initial weights
    (the global generator's state is restored afterwards). Every layer starts as the identity.

    Example:
        >>> flow = nsf(2, layers=4, bins=8)
        >>> flow.log_prob(torch.randn(8, 2)).shape
        torch.Size([8])
    """
    if kind not in ("autoregressive", "coupling"):
        raise ValueError(f"nsf: kind must be 'autoregressive' or 'coupling', got {kind!r}")
    if int(layers) < 1:
        raise ValueError(f"nsf: layers must be positive, got {layers}")
    features = int(features)
    blocks: list[Bijection] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k in range(int(layers)):
            if kind == "autoregressive":
                blocks.append(SplineAutoregressive(features, hidden, bins, bound,
                                                   order="natural" if k % 2 == 0 else "reversed",
                                                   context=context))
            else:
                blocks.append(SplineCoupling(alternating_mask(features, flip=k % 2 == 1), hidden, bins,
                                             bound, context=context))
    return Flow(Compose(*blocks), StandardNormal(features))

