r"""Numerical checks every bijection must pass, and one small example of every public layer.

``check_bijection(layer, z)`` verifies, on the generative direction ``x = layer(z)``:

1. output shapes (same batch, same number of values per sample, ``ladj`` of shape ``[B]``),
   finiteness, and that dtype and device are preserved;
2. the round trip ``inverse(forward(z)) == z``;
3. ``ladj(forward) + ladj(inverse) == 0``;
4. ``ladj`` equals :math:`\log|\det \partial x/\partial z|` of the brute-force autograd Jacobian
   (``torch.linalg.slogdet``) on a few samples — run it in float64;
5. batch independence: a sub-batch gives the same outputs as the same rows of the whole batch.

``examples()`` yields ``(name, layer, z)`` for every public bijection class, small and float64,
so that one parametrized test covers them all (a test fails if a public class has no example).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from .bijection import Bijection, Compose, Inverse
from .elementwise import ElementwiseAffine, Exp, LeakyReLU, Sigmoid, SinhArcsinh, Tanh
from .linear import Linear, Permutation
from .autoregressive import MaskedAutoregressive
from .coupling import (AdditiveCoupling, AffineCoupling, Coupling, Rescale, alternating_mask,
                       channel_mask, checkerboard_mask, half_mask)
from .maps import AdditiveMap, AffineMap
from .normalization import ActNorm, BatchNormFlow
from .invconv import GlowStep, InvConv1x1
from .preprocess import LogitPreprocess
from .reshape import FactorOut, Squeeze
from .spline import SplineAutoregressive, SplineCoupling, SplineMap

__all__ = ["check_bijection", "jacobian", "examples", "register_example"]


def jacobian(layer: Bijection, z: Tensor, context: Tensor | None = None,
             direction: str = "forward") -> Tensor:
    """Per-sample Jacobians ``[B, D, D]`` of ``layer.forward`` (or ``inverse``) by autograd, with
    every non-batch dimension flattened. Each sample is pushed through alone, so the result is
    the Jacobian of the per-sample map."""
    fn = layer.forward if direction == "forward" else layer.inverse
    shape = z.shape[1:]
    out = []
    for i in range(z.shape[0]):
        ctx = None if context is None else context[i:i + 1]

        def f(v: Tensor) -> Tensor:
            return fn(v.reshape(1, *shape), ctx)[0].reshape(-1)

        out.append(torch.autograd.functional.jacobian(f, z[i].reshape(-1)))
    return torch.stack(out)


def _close(a: Tensor, b: Tensor, atol: float, rtol: float) -> tuple[bool, float]:
    err = (a - b).abs().max().item() if a.numel() else 0.0
    return bool(torch.allclose(a, b, atol=atol, rtol=rtol)), err


def check_bijection(layer: Bijection, z: Tensor, context: Tensor | None = None, *,
                    atol: float | None = None, rtol: float = 1e-5, jacobian_samples: int = 3,
                    max_jacobian_dim: int = 256, eval_mode: bool = True) -> dict[str, float]:
    """Run every check of the module docstring; raise ``AssertionError`` naming the first that
    fails. Returns the largest errors seen, for reporting.

    ``eval_mode`` puts the layer in ``eval()`` for the checks (batch norm then uses its running
    statistics, so the map is the same for every batch); the training flag is restored after.
    """
    name = type(layer).__name__
    atol = atol if atol is not None else (1e-8 if z.dtype == torch.float64 else 1e-4)
    was_training = layer.training
    if eval_mode:
        layer.eval()
    report: dict[str, float] = {}
    try:
        with torch.no_grad():
            x, ladj_f = layer(z, context)
            assert isinstance(x, Tensor) and isinstance(ladj_f, Tensor), \
                f"{name}: forward must return (tensor, ladj)"
            assert x.shape[0] == z.shape[0] and x[0].numel() == z[0].numel(), \
                f"{name}: forward changed the batch or the dimension: {tuple(z.shape)} -> {tuple(x.shape)}"
            assert ladj_f.shape == (z.shape[0],), \
                f"{name}: ladj must have shape [batch] = ({z.shape[0]},), got {tuple(ladj_f.shape)}"
            for t, what in ((x, "output"), (ladj_f, "ladj")):
                assert t.dtype == z.dtype, f"{name}: {what} dtype {t.dtype} != input dtype {z.dtype}"
                assert t.device == z.device, f"{name}: {what} on {t.device}, input on {z.device}"
                assert torch.isfinite(t).all(), f"{name}: forward {what} is not finite"

            z2, ladj_i = layer.inverse(x, context)
            assert z2.shape == z.shape, f"{name}: inverse shape {tuple(z2.shape)} != {tuple(z.shape)}"
            ok, err = _close(z2, z, atol, rtol)
            report["round_trip"] = err
            assert ok, f"{name}: inverse(forward(z)) differs from z by up to {err:.3g}"
            ok, err = _close(ladj_f + ladj_i, torch.zeros_like(ladj_f), atol, rtol)
            report["ladj_sum"] = err
            assert ok, f"{name}: ladj(forward) + ladj(inverse) is not 0 (up to {err:.3g})"

            k = max(1, z.shape[0] // 2)
            xs, ls = layer(z[:k], None if context is None else context[:k])
            ok1, e1 = _close(xs, x[:k], atol, rtol)
            ok2, e2 = _close(ls, ladj_f[:k], atol, rtol)
            report["batch_independence"] = max(e1, e2)
            assert ok1 and ok2, f"{name}: outputs depend on the other samples of the batch"

        if z[0].numel() <= max_jacobian_dim and jacobian_samples > 0:
            m = min(jacobian_samples, z.shape[0])
            ctx = None if context is None else context[:m]
            J = jacobian(layer, z[:m], ctx)
            sign, logabs = torch.linalg.slogdet(J)
            assert (sign != 0).all(), f"{name}: the autograd Jacobian is singular"
            ok, err = _close(ladj_f[:m], logabs, atol * 10, rtol)
            report["ladj_vs_autograd"] = err
            assert ok, (f"{name}: ladj {ladj_f[:m].tolist()} differs from log|det J| by autograd "
                        f"{logabs.tolist()} (max error {err:.3g})")
    finally:
        layer.train(was_training)
    return report


# ---------------------------------------------------------------------------- examples

_EXTRA: list[Callable[[], Iterator[tuple[str, Bijection, Tensor]]]] = []


def register_example(fn: Callable[[], Iterator[tuple[str, Bijection, Tensor]]]):
    """Decorator: add a generator of ``(name, layer, z)`` examples (for later modules)."""
    _EXTRA.append(fn)
    return fn


def perturb(layer: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its (often identity) initial value, so that a check
    cannot pass only because the layer starts as the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return layer


def _z(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def examples() -> Iterator[tuple[str, Bijection, Tensor]]:
    """``(name, layer, z)`` for every public bijection class, in float64, with non-trivial
    parameters; ``z`` lies in the layer's forward domain.

    The layers draw their initial values from the global generator, seeded to 0 for
    reproducible examples inside ``fork_rng``: the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        built = list(_examples())
    yield from built


def _examples() -> Iterator[tuple[str, Bijection, Tensor]]:
    d = 5
    yield "ElementwiseAffine", perturb(ElementwiseAffine(d)).double(), _z(6, d)
    yield "ElementwiseAffine/image", perturb(ElementwiseAffine((2, 3, 3))).double(), _z(4, 2, 3, 3)
    yield "Exp", Exp(), _z(6, d)
    yield "Sigmoid", Sigmoid(), _z(6, d)
    yield "Sigmoid.inv (logit)", Sigmoid().inv, torch.sigmoid(_z(6, d))
    yield "Tanh", Tanh(), _z(6, d)
    yield "LeakyReLU", LeakyReLU(0.2), _z(6, d)
    yield "SinhArcsinh", perturb(SinhArcsinh(d)).double(), _z(6, d)
    yield "Linear", perturb(Linear(d), 0.1).double(), _z(6, d)
    yield "Permutation", Permutation.random(d, torch.Generator().manual_seed(1)).double(), _z(6, d)
    yield "Permutation/image", Permutation.reverse(3).double(), _z(4, 3, 2, 2)
    yield "Inverse", Inverse(perturb(SinhArcsinh(d)).double()), _z(6, d)
    yield ("Compose", Compose(perturb(ElementwiseAffine(d)), SinhArcsinh(d), perturb(Linear(d), 0.1),
                              Permutation.reverse(d)).double(), _z(6, d))
    g = torch.Generator().manual_seed(2)
    yield ("MaskedAutoregressive", perturb(MaskedAutoregressive(d, (8, 8), order="random",
                                                              generator=g)).double(), _z(6, d))
    yield ("MaskedAutoregressive.inv (IAF)", perturb(MaskedAutoregressive(d, (8,), order="reversed"),
                                                     seed=1).double().inv, _z(6, d))
    # structure x elementwise map: every map in the masked autoregressive layer (both directions)
    # and in the coupling layer (slice, gather and checkerboard partitions)
    maps = {"additive": AdditiveMap, "affine": lambda: AffineMap(1.5),
            "spline": lambda: SplineMap(bins=4, bound=2.0)}
    for k, (kind, make) in enumerate(maps.items()):
        scale = 1.5 if kind == "spline" else 1.0  # some points in the spline's identity tails
        layer = perturb(MaskedAutoregressive(d, (7, 6), elementwise=make(), order="random",
                                             generator=torch.Generator().manual_seed(k)),
                        seed=k).double()
        yield f"MaskedAutoregressive/{kind}", layer, scale * _z(6, d, seed=k)
        yield f"MaskedAutoregressive/{kind}.inv", layer.inv, scale * _z(6, d, seed=k + 1)
        yield (f"Coupling/{kind}/index", perturb(Coupling(torch.tensor([1, 0, 0, 1, 0]).bool(),
                                                         make(), hidden=(8,))).double(),
               scale * _z(6, d, seed=k))
        yield (f"Coupling/{kind}/checkerboard.inv",
               perturb(Coupling(checkerboard_mask((2, 4, 4)), make(), hidden=4), 0.2).double().inv,
               scale * _z(3, 2, 4, 4, seed=k))
    # coupling layers: every partition mode (slice, gather, checkerboard multiplication)
    yield "AdditiveCoupling/half", perturb(AdditiveCoupling(half_mask(d), hidden=(8,))).double(), _z(6, d)
    yield ("AdditiveCoupling/checkerboard",
           perturb(AdditiveCoupling(checkerboard_mask((2, 4, 4)), hidden=4)).double(), _z(3, 2, 4, 4))
    yield ("AffineCoupling/alternating",
           perturb(AffineCoupling(alternating_mask(d, flip=True), hidden=(8, 8))).double(), _z(6, d))
    yield "AffineCoupling/half", perturb(AffineCoupling(half_mask(d), hidden=(8,))).double(), _z(6, d)
    yield ("AffineCoupling/checkerboard",
           perturb(AffineCoupling(checkerboard_mask((2, 4, 4), flip=True), hidden=4)).double(), _z(3, 2, 4, 4))
    yield ("AffineCoupling/channel",
           perturb(AffineCoupling(channel_mask((4, 2, 2)), hidden=4)).double(), _z(3, 4, 2, 2))
    yield "Rescale", perturb(Rescale(d)).double(), _z(6, d)
    yield "Squeeze", Squeeze(), _z(3, 2, 4, 6)
    yield "Squeeze.inv", Squeeze().inv, _z(3, 8, 2, 3)
    yield ("FactorOut", FactorOut(perturb(AffineCoupling(checkerboard_mask((2, 4, 4)), hidden=4)).double()),
           _z(3, 4, 4, 4))
    bn = BatchNormFlow(d).double()
    bn.inverse(3 * _z(64, d, seed=1) + 1)  # training mode: running statistics move off (0, 1)
    yield "BatchNormFlow", perturb(bn), _z(6, d)
    bn = BatchNormFlow(3).double()
    bn.inverse(2 * _z(16, 3, 2, 2, seed=1) - 1)
    yield "BatchNormFlow/image", perturb(bn), _z(4, 3, 2, 2)
    yield "LogitPreprocess", LogitPreprocess(0.05), _z(6, d)
    # Glow: actnorm initialized on a batch first (then perturbed), 1x1 convolutions, a step
    an = ActNorm(d).double()
    an.inverse(3 * _z(64, d, seed=1) + 1)
    yield "ActNorm", perturb(an), _z(6, d)
    an = ActNorm(3).double()
    an.inverse(2 * _z(16, 3, 2, 2, seed=1) - 1)
    yield "ActNorm/image", perturb(an), _z(4, 3, 2, 2)
    yield "InvConv1x1/lu", perturb(InvConv1x1(4), 0.2).double(), _z(3, 4, 2, 3)
    yield "InvConv1x1/plain", perturb(InvConv1x1(4, lu=False), 0.2).double(), _z(3, 4, 2, 3)
    yield "InvConv1x1/vector", perturb(InvConv1x1(d), 0.2).double(), _z(6, d)
    step = GlowStep((4, 2, 2), hidden=4).double()
    step.inverse(2 * _z(16, 4, 2, 2, seed=1) + 1)
    yield "GlowStep/image", perturb(step, 0.1), _z(3, 4, 2, 2)
    step = GlowStep(d, hidden=(8,)).double()
    step.inverse(2 * _z(32, d, seed=1) + 1)
    yield "GlowStep/vector", perturb(step, 0.1), _z(6, d)
    # spline layers: perturbed so that the spline bends (raw parameters of order 1), inputs
    # scaled so that some fall outside [-bound, bound] (identity tails)
    yield ("SplineAutoregressive", perturb(SplineAutoregressive(d, (8, 8), bins=5, bound=2.0,
                                                                order="reversed")).double(),
           1.5 * _z(6, d))
    yield ("SplineAutoregressive.inv", perturb(SplineAutoregressive(d, (8,), bins=4, bound=2.5),
                                               seed=1).double().inv, 1.5 * _z(6, d, seed=1))
    yield ("SplineCoupling/alternating",
           perturb(SplineCoupling(alternating_mask(d), (8,), bins=6, bound=2.0)).double(),
           1.5 * _z(6, d))
    yield ("SplineCoupling/half.inv",
           perturb(SplineCoupling(half_mask(d, flip=True), (8, 8), bins=3, bound=2.5),
                   seed=2).double().inv, 1.5 * _z(6, d, seed=2))
    # beyond the lectures (chapter 8): the residual block in its exact log-det mode (the
    # estimator is random, tested statistically in tests/test_residual.py), an ODE flow with the
    # exact trace and enough RK4 steps for the tolerances
    from .residual import ResidualBlock
    from .continuous import ContinuousFlow, VelocityField
    yield ("ResidualBlock", perturb(ResidualBlock(d, hidden=(8, 8), coeff=0.9)).double(),
           _z(6, d))
    yield ("ResidualBlock.inv", perturb(ResidualBlock(d, hidden=(6,), coeff=0.8, activation="tanh"),
                                        seed=1).double().inv, _z(6, d, seed=1))
    yield ("ContinuousFlow", perturb(ContinuousFlow(VelocityField(d, hidden=(8,)), d, steps=40),
                                     0.1).double(), _z(6, d))
    for extra in _EXTRA:
        yield from extra()
