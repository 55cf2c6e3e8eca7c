"""The incremental sequential pass (flowlib.sequential) equals the naive D-pass loop and does one
MADE pass of arithmetic."""

import itertools

import pytest
import torch

import flowlib
from flowlib.autoregressive import MaskedAutoregressive
from flowlib.maps import AdditiveMap, AffineMap
from flowlib.sequential import sequential, sequential_incremental, sequential_naive
from flowlib.spline import SplineMap
from flowlib.testing import perturb

MAPS = {"affine": lambda: AffineMap(2.0), "additive": AdditiveMap,
        "spline": lambda: SplineMap(bins=5, bound=2.0)}
HIDDEN = [(), (9,), (12, 7), (6, 11, 8)]


def _layer(d, hidden, kind, context, seed, degrees="cyclic"):
    g = torch.Generator().manual_seed(seed)
    layer = MaskedAutoregressive(d, hidden, elementwise=MAPS[kind](), order="random",
                                 context=context, activation="tanh" if seed % 2 else "relu",
                                 generator=g)
    if degrees == "random":  # Germain et al.'s random hidden degrees instead of cyclic ones
        layer.made = flowlib.MADE(d, hidden, outputs=layer.elementwise.params, order=layer.order,
                                  context_features=context, hidden_degrees="random", generator=g)
    return perturb(layer, 0.4, seed).double()


@pytest.mark.parametrize("kind,hidden,context,degrees",
                         [(k, h, c, deg) for k, h, c, deg in
                          itertools.product(MAPS, HIDDEN, (0, 3), ("cyclic", "random"))])
def test_incremental_equals_naive(kind, hidden, context, degrees):
    for seed, d in enumerate((1, 2, 5, 8)):
        layer = _layer(d, hidden, kind, context, 10 * seed + len(hidden), degrees)
        g = torch.Generator().manual_seed(seed)
        z = 1.5 * torch.randn(13, d, generator=g, dtype=torch.float64)
        ctx = torch.randn(13, context, generator=g, dtype=torch.float64) if context else None
        with torch.no_grad():
            x_n, l_n = sequential_naive(layer.made, layer.elementwise, z, ctx)
            x_i, l_i = sequential_incremental(layer.made, layer.elementwise, z, ctx)
        assert torch.allclose(x_i, x_n, atol=1e-10, rtol=0), (x_i - x_n).abs().max()
        assert torch.allclose(l_i, l_n, atol=1e-10, rtol=0), (l_i - l_n).abs().max()
        # and it is the layer's forward: the parallel inverse gives z back
        z_back, l_back = layer.inverse(x_i, ctx)
        assert torch.allclose(z_back, z, atol=1e-9) and torch.allclose(l_back, -l_i, atol=1e-9)


@pytest.mark.parametrize("hidden,context", [((), 0), ((), 2), ((16,), 0), ((16, 12), 3)])
def test_incremental_does_one_pass_of_arithmetic(hidden, context):
    """Each multiply-add is a weight the masks keep, used once per sample: the count equals the
    masks' non-zeros (context columns included) times the batch; the naive loop does D dense
    passes."""
    d, b = 7, 5
    layer = _layer(d, hidden, "affine", context, 3)
    made = layer.made
    stats: dict = {}
    z = torch.randn(b, d, dtype=torch.float64)
    ctx = torch.randn(b, context, dtype=torch.float64) if context else None
    sequential_incremental(made, layer.elementwise, z, ctx, stats=stats)
    kept = sum(int(m.sum()) for m in made.masks)
    dense = sum(m.numel() for m in made.masks)
    assert stats["macs"] == kept * b
    assert stats["macs"] <= dense * b < d * dense * b     # naive: D passes of `dense`


def test_dispatch_and_gradients():
    """With autograd recording, the sequential direction is the differentiable naive loop;
    without, the incremental one; both give the same values."""
    layer = _layer(4, (10, 10), "affine", 0, 1)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    x, ladj = layer(z)
    (x.sum() + ladj.sum()).backward()
    assert z.grad is not None and all(p.grad is not None for p in layer.made.parameters())
    with torch.no_grad():
        x2, l2 = layer(z)
    assert torch.allclose(x, x2, atol=1e-12) and torch.allclose(ladj, l2, atol=1e-12)


def test_flow_sample_and_iaf_log_prob_use_the_incremental_pass(monkeypatch):
    """Flow.sample of a MAF and the IAF's log_prob without gradient never call the naive loop."""
    import flowlib.autoregressive as ar

    def forbidden(*args, **kwargs):
        raise AssertionError("naive loop called")

    monkeypatch.setattr(ar, "sequential", lambda *a: sequential(*a))
    monkeypatch.setattr("flowlib.sequential.sequential_naive", forbidden)
    maf = flowlib.models.maf(5, layers=3, hidden=(16, 16))
    perturb(maf, 0.2)
    x = maf.sample(32)
    assert x.shape == (32, 5) and not x.requires_grad
    iaf = flowlib.models.iaf(5, layers=3, hidden=(16, 16))
    perturb(iaf, 0.2)
    with torch.no_grad():
        lp = iaf.log_prob(x)
    assert lp.shape == (32,) and torch.isfinite(lp).all()
