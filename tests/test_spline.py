"""Rational-quadratic splines: rq_spline against a slow reference, its identity start, monotonicity
and float32 stability; the spline layers (contract checks, autoregressive structure, errors); the
nsf factory and a short training run."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import flowlib
from flowlib.coupling import alternating_mask, half_mask
from flowlib.models import nsf
from flowlib.spline import SplineAutoregressive, SplineCoupling, rq_spline
from flowlib.testing import check_bijection, jacobian, perturb

MIN_BIN, MIN_D = 1e-3, 1e-3


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _raw(n, k, scale, seed=0, dtype=torch.float64):
    """Raw (unnormalised) widths, heights [n, K] and derivatives [n, K-1]."""
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(n, m, generator=g, dtype=dtype) for m in (k, k, k - 1))


# ---------------------------------------------------------------------------- a slow reference


def _ref_knots(w_raw, h_raw, d_raw, bound):
    """Knots and derivatives of one spline, in plain Python floats, from the definitions."""

    def sizes(raw):
        m = max(raw)
        e = [math.exp(v - m) for v in raw]
        tot = sum(e)
        k = len(raw)
        return [2 * bound * (MIN_BIN + (1 - k * MIN_BIN) * v / tot) for v in e]

    def knots(sz):
        out = [-bound]
        for v in sz[:-1]:
            out.append(out[-1] + v)
        return out + [bound]

    shift = math.log(math.expm1(1 - MIN_D))
    softplus = lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v)))  # noqa: E731
    d = [1.0] + [MIN_D + softplus(v + shift) for v in d_raw] + [1.0]
    return knots(sizes(w_raw)), knots(sizes(h_raw)), d


def _ref_forward(x, xk, yk, d, bound):
    """(y, log dy/dx) of the spline at one point, bin found by a linear scan."""
    if not -bound <= x <= bound:
        return x, 0.0
    k = max(i for i in range(len(xk) - 1) if xk[i] <= x)
    w, h = xk[k + 1] - xk[k], yk[k + 1] - yk[k]
    s = h / w
    xi = min(max((x - xk[k]) / w, 0.0), 1.0)
    den = s + (d[k + 1] + d[k] - 2 * s) * xi * (1 - xi)
    y = yk[k] + h * (s * xi**2 + d[k] * xi * (1 - xi)) / den
    dydx = s**2 * (d[k + 1] * xi**2 + 2 * s * xi * (1 - xi) + d[k] * (1 - xi) ** 2) / den**2
    return y, math.log(dydx)


def _ref_inverse(y, xk, yk, d, bound):
    """The inverse by bisection on the reference forward map (no closed form involved)."""
    if not -bound <= y <= bound:
        return y, 0.0
    lo, hi = -bound, bound
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _ref_forward(mid, xk, yk, d, bound)[0] < y:
            lo = mid
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    return x, -_ref_forward(x, xk, yk, d, bound)[1]


@pytest.mark.parametrize("inverse", [False, True], ids=["spline", "inverse"])
@pytest.mark.parametrize("k", [2, 5, 9])
def test_rq_spline_matches_reference(inverse, k):
    bound, n = 3.0, 40
    w, h, d = _raw(n, k, 1.5, seed=k)
    x = 8.0 * torch.rand(n, generator=torch.Generator().manual_seed(k), dtype=torch.float64) - 4.0
    x[:3] = torch.tensor([-bound, bound, 0.0], dtype=torch.float64)  # the ends of the interval
    y, ld = rq_spline(x, w, h, d, bound, inverse=inverse)
    fn = _ref_inverse if inverse else _ref_forward
    for i in range(n):
        xk, yk, dk = _ref_knots(w[i].tolist(), h[i].tolist(), d[i].tolist(), bound)
        want_y, want_ld = fn(x[i].item(), xk, yk, dk, bound)
        assert y[i].item() == pytest.approx(want_y, abs=1e-10), (i, x[i].item())
        assert ld[i].item() == pytest.approx(want_ld, abs=1e-8), (i, x[i].item())


def test_rq_spline_log_det_against_autograd():
    w, h, d = _raw(50, 7, 2.0)
    x = 2.5 * _randn(50, seed=1)
    for inverse in (False, True):
        xg = x.clone().requires_grad_()
        y, ld = rq_spline(xg, w, h, d, 2.0, inverse=inverse)
        (dy,) = torch.autograd.grad(y.sum(), xg)
        torch.testing.assert_close(ld, dy.log(), atol=1e-10, rtol=1e-10)


def test_rq_spline_zero_parameters_is_the_identity():
    k = 8
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    zeros = torch.zeros(101, k, dtype=torch.float64)
    for inverse in (False, True):
        y, ld = rq_spline(x, zeros, zeros, zeros[:, 1:], 4.0, inverse=inverse)
        torch.testing.assert_close(y, x, atol=1e-14, rtol=0)
        assert ld.abs().max() < 1e-14


def test_rq_spline_identity_tails_and_c1_at_the_bound():
    w, h, d = _raw(6, 6, 3.0, seed=3)
    bound = 2.0
    x = torch.tensor([-9.0, -2.0 - 1e-9, 2.0 + 1e-9, 5.0, 100.0, -1e6], dtype=torch.float64)
    y, ld = rq_spline(x, w, h, d, bound)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros_like(ld)), "outside: the identity"
    # At the bound: value -> +-B and slope -> 1 from inside (boundary derivative fixed to 1).
    eps = 1e-10
    x = torch.tensor([-bound + eps, bound - eps] * 3, dtype=torch.float64)
    y, ld = rq_spline(x, w, h, d, bound)
    torch.testing.assert_close(y, x, atol=1e-9, rtol=0)
    assert ld.abs().max() < 1e-5


def test_rq_spline_is_monotonic():
    k, n = 10, 2001
    w, h, d = _raw(1, k, 4.0, seed=5)
    x = torch.linspace(-5, 5, n, dtype=torch.float64)
    y, ld = rq_spline(x, w.expand(n, k), h.expand(n, k), d.expand(n, k - 1), 4.0)
    assert (y.diff() > 0).all()
    assert torch.isfinite(ld).all()
    xb, _ = rq_spline(y, w.expand(n, k), h.expand(n, k), d.expand(n, k - 1), 4.0, inverse=True)
    assert (xb.diff() > 0).all()
    torch.testing.assert_close(xb, x, atol=1e-9, rtol=0)


@pytest.mark.parametrize("scale", [5.0, 20.0, 60.0])
def test_rq_spline_float32_extreme_parameters(scale):
    k, bound, n = 8, 3.0, 4000
    w, h, d = _raw(n, k, scale, seed=7, dtype=torch.float32)
    x = 4.0 * _randn(n, seed=8, dtype=torch.float32)
    # special points: the ends, just inside/outside them, and exactly on interior knots
    special = torch.tensor([-bound, bound, -bound + 1e-6, bound - 1e-6, -bound - 1e-6,
                            bound + 1e-6, 0.0, 1e-30], dtype=torch.float32)
    x[:len(special)] = special
    knots_x = torch.cumsum(torch.softmax(w[8:16].double(), -1), -1)[:, 0]
    x[8:16] = (2 * bound * knots_x - bound).float()
    w.requires_grad_(), h.requires_grad_(), d.requires_grad_()
    y, ld = rq_spline(x, w, h, d, bound)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    xb, ldb = rq_spline(y, w, h, d, bound, inverse=True)
    assert torch.isfinite(xb).all() and torch.isfinite(ldb).all()
    (y.sum() + ld.sum() + xb.sum() + ldb.sum()).backward()
    for p in (w, h, d):
        assert torch.isfinite(p.grad).all(), "non-finite gradient"
    with torch.no_grad():
        # Slopes run from about e^-15 to e^7 here, so float32 can promise a small error in x only
        # where the slope is moderate, and otherwise a small error in y-space (backward
        # stability) up to the slope times the rounding of x ...
        y2, ld2 = rq_spline(xb, w, h, d, bound)
        assert ((y2 - y).abs() / ld2.exp().clamp(min=1.0)).max() < 1e-4
        ok = ld.abs() < 2
        assert (xb - x)[ok].abs().max() < 1e-4
        # ... and log-determinants that agree at the point the inverse returned.
        assert (ldb + ld2).abs().max() < 1e-2


def test_rq_spline_errors():
    x = torch.zeros(4)
    w = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="bins"):
        rq_spline(x, torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 0), 1.0)
    with pytest.raises(ValueError, match="bound"):
        rq_spline(x, w, w, torch.zeros(4, 4), 0.0)
    with pytest.raises(ValueError, match="derivatives"):
        rq_spline(x, w, w, torch.zeros(4, 5), 1.0)
    with pytest.raises(ValueError, match="widths and heights"):
        rq_spline(x, w, torch.zeros(4, 6), torch.zeros(4, 4), 1.0)
    with pytest.raises(ValueError, match="widths and heights"):
        rq_spline(torch.zeros(3), w, w, torch.zeros(4, 4), 1.0)


# ---------------------------------------------------------------------------- the layers


def _layers():
    d = 4
    g = torch.Generator().manual_seed(1)
    yield "autoregressive", perturb(SplineAutoregressive(d, (16, 16), bins=6, bound=2.0,
                                                         order="random", generator=g),
                                    0.5).double()
    yield "autoregressive/context", perturb(SplineAutoregressive(d, (16,), bins=3, bound=2.0,
                                                                 context=2), 0.5).double()
    yield "coupling/alternating", perturb(SplineCoupling(alternating_mask(d), (16,), bins=7,
                                                         bound=2.0), 0.5).double()
    yield "coupling/half/context", perturb(SplineCoupling(half_mask(d, flip=True), (16, 16), bins=4,
                                                          bound=2.0, context=2),
                                           0.5).double()


with torch.random.fork_rng(devices=[]):   # the same layers whatever ran before this import
    torch.manual_seed(0)
    LAYERS = list(_layers())


@pytest.mark.parametrize("inverted", [False, True], ids=["layer", "inv"])
@pytest.mark.parametrize("name,layer", LAYERS, ids=[n for n, _ in LAYERS])
def test_spline_layers_pass_the_contract(name, layer, inverted):
    z = 1.6 * _randn(16, 4, seed=2)          # about a quarter of the values beyond the bound
    assert (z.abs() > 2.0).any() and (z.abs() < 2.0).any()
    ctx = _randn(16, 2, seed=3) if "context" in name else None
    lay = layer.inv if inverted else layer
    report = check_bijection(lay, z, ctx, jacobian_samples=4)
    # The sequential inverse of a steep spline loses about ulp / slope per step: over 60 random
    # layers of the context configuration the round trip erred by up to 5e-9 (either sequential
    # pass), so 1e-8, check_bijection's float64 tolerance, is the bound to hold.
    assert report["round_trip"] < 1e-8
    x, _ = lay(z, ctx)
    assert (x - z).abs().max() > 0.1, "the perturbed layer should not be the identity"


@pytest.mark.parametrize("name,layer", LAYERS, ids=[n for n, _ in LAYERS])
def test_spline_layers_float32(name, layer):
    lay = copy.deepcopy(layer).float()
    ctx = _randn(64, 2, seed=3, dtype=torch.float32) if "context" in name else None
    # These layers contract some samples by up to e^-15 (ladj -15): inverting that in float32
    # costs about ulp / slope in z, hence atol 1e-3 rather than check_bijection's 1e-4.
    check_bijection(lay, 3 * _randn(64, 4, seed=4, dtype=torch.float32), ctx, atol=1e-3,
                    jacobian_samples=0)


def test_spline_layers_start_as_the_identity():
    z = 3 * _randn(10, 3)
    for layer in (SplineAutoregressive(3, (8,)).double(),
                  SplineCoupling(alternating_mask(3), (8,)).double()):
        for fn in (layer.forward, layer.inverse):
            x, ladj = fn(z)
            torch.testing.assert_close(x, z, atol=1e-14, rtol=0)
            assert ladj.abs().max() < 1e-13


@pytest.mark.parametrize("order", ["natural", "reversed", [2, 0, 3, 1]])
def test_spline_autoregressive_jacobian_is_triangular(order):
    layer = perturb(SplineAutoregressive(4, (16, 16), bins=5, bound=3.0, order=order,
                                         activation="tanh"), 0.5).double()
    pos = layer.order
    x = 1.5 * _randn(5, 4, seed=6)
    for direction in ("inverse", "forward"):
        J = jacobian(layer, x, direction=direction).abs().sum(0)   # [D_out, D_in]
        later = pos[None, :] > pos[:, None]                          # input j after output i
        assert (J[later] == 0).all(), f"{direction}: an output depends on a later input"
        assert (J.diagonal() > 0).all()
        assert J[pos[None, :] < pos[:, None]].sum() > 0, "no dependence on earlier inputs"


def test_spline_autoregressive_inv_is_the_iaf_direction():
    layer = perturb(SplineAutoregressive(3, (8,), bins=4), 0.5)
    calls = []
    layer.made.register_forward_hook(lambda *a: calls.append(1))
    layer.inverse(torch.randn(5, 3))
    assert len(calls) == 1, "normalizing direction: one MADE pass"
    calls.clear()
    layer.inv.forward(torch.randn(5, 3))
    assert len(calls) == 1, ".inv samples in one MADE pass"
    calls.clear()
    layer(torch.randn(5, 3))
    assert len(calls) == 3, "generative direction: D passes"


def test_spline_layer_errors():
    with pytest.raises(ValueError, match="bins"):
        SplineAutoregressive(3, bins=1)
    with pytest.raises(ValueError, match="bound"):
        SplineAutoregressive(3, bound=0.0)
    with pytest.raises(ValueError, match="bins"):
        SplineCoupling(alternating_mask(4), bins=1)
    with pytest.raises(ValueError, match="bound"):
        SplineCoupling(alternating_mask(4), bound=-1.0)
    with pytest.raises(ValueError, match="vector mask"):
        SplineCoupling(torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected shape \[B, 3\]"):
        SplineAutoregressive(3).inverse(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"expected shape \[B, 4\]"):
        SplineCoupling(alternating_mask(4))(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="kind"):
        nsf(2, kind="spline")


# ---------------------------------------------------------------------------- the model


@pytest.mark.parametrize("kind", ["autoregressive", "coupling"])
def test_nsf_factory(kind):
    flow = nsf(3, layers=3, hidden=(8,), bins=4, kind=kind).double()
    x = 2 * _randn(7, 3)
    torch.testing.assert_close(flow.log_prob(x), flowlib.StandardNormal(3).double().log_prob(x))
    if kind == "autoregressive":
        orders = [layer.made.order.tolist() for layer in flow.bijection.layers]
        assert orders == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    else:
        masks = [layer.mask_tensor.tolist() for layer in flow.bijection.layers]
        assert masks[0] == [True, False, True] and masks[1] == [False, True, False]
    s, lp = flow.sample_and_log_prob(5)
    assert s.shape == (5, 3) and lp.shape == (5,)
    cond = nsf(2, layers=2, hidden=(8,), kind=kind, context=3)
    assert cond.log_prob(torch.randn(4, 2), context=torch.randn(4, 3)).shape == (4,)


def test_nsf_learns_eight_gaussians(one_thread):
    flowlib.seed(0)
    density = flowlib.data.toy("eight_gaussians")
    flow = nsf(2)
    before = flowlib.metrics.kl_to_truth(flow, density, n=5000).value     # about 2.2 nats
    flowlib.fit(flow, density, steps=300, batch_size=256, lr=3e-3, progress=False,
                dev=torch.device("cpu"))
    kl = flowlib.metrics.kl_to_truth(flow, density, n=5000)
    # measured 0.052-0.058 nats over 3 seeds (MAF of the same size: about 1 nat after 300 steps)
    assert kl.value < 0.15, f"KL to the truth {kl} after 300 steps (before: {before:.3f})"
