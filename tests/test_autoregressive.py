"""MADE's connectivity, the MAF/IAF layer (triangular Jacobians, costs, IAF = MAF.inv), the
maf/iaf factories, and a short training run."""

from __future__ import annotations

import math

import pytest
import torch

import flowlib
from flowlib import Inverse, Permutation
from flowlib.autoregressive import MADE, MaskedAutoregressive, made_order
from flowlib.maps import AffineMap
from flowlib.models import iaf, maf
from flowlib.testing import check_bijection, jacobian, perturb

D = 5


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _made_jacobian(made: MADE, x: torch.Tensor) -> torch.Tensor:
    """[B, outputs, D_out, D_in] autograd Jacobian of MADE's outputs w.r.t. its inputs."""
    out = []
    for row in x:
        J = torch.autograd.functional.jacobian(
            lambda v: made(v[None]).reshape(made.outputs, made.features), row)
        out.append(J)
    return torch.stack(out)


ORDERS = ["natural", "reversed", "random", [2, 0, 4, 1, 3]]


@pytest.mark.parametrize("order", ORDERS, ids=["natural", "reversed", "random", "explicit"])
@pytest.mark.parametrize("hidden", [(), (16,), (16, 16), (12, 7, 9)])
@pytest.mark.parametrize("outputs", [1, 3])
def test_made_is_autoregressive(order, hidden, outputs):
    # tanh rather than ReLU: no dead units, so "allowed => non-zero" holds at every point.
    made = perturb(MADE(D, hidden, outputs=outputs, order=order, activation="tanh",
                        generator=torch.Generator().manual_seed(3))).double()
    pos = made.order
    J = _made_jacobian(made, _randn(8, D)).abs().sum(0)             # [outputs, D, D]
    forbidden = pos[None, :] >= pos[:, None]                          # (i, j): order[j] >= order[i]
    assert (J[:, forbidden] == 0).all(), "an output depends on an input that does not precede it"
    if not hidden or min(hidden) >= D - 1:
        # With enough hidden units every allowed connection exists (not trivially zero).
        assert (J[:, ~forbidden] > 0).all(), "an allowed dependency is missing"
        assert ((made.connectivity() > 0) == ~forbidden.repeat(outputs, 1)).all()
    else:
        assert J[:, ~forbidden].sum() > 0


def test_made_random_hidden_degrees_and_masks():
    g = torch.Generator().manual_seed(0)
    made = MADE(6, (20, 20), order="random", hidden_degrees="random", generator=g)
    pos = made.order
    conn = made.connectivity().bool()
    assert not (conn & (pos[None, :] >= pos[:, None])).any()
    masks = made.masks
    assert [tuple(m.shape) for m in masks] == [(20, 6), (20, 20), (6, 20)]
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)


def test_made_context_is_unmasked():
    made = perturb(MADE(3, (8, 8), outputs=2, context_features=2)).double()
    x, c = _randn(4, 3), _randn(4, 2, seed=1)
    J = torch.autograd.functional.jacobian(lambda cc: made(x, cc).sum(0), c)  # [2, 3, 4, 2]
    assert (J.abs().sum((-1, -2)) > 0).all(), "every output, the first included, sees the context"
    with pytest.raises(ValueError, match="context"):
        made(x)
    with pytest.raises(ValueError, match="context"):
        MADE(3, (8,))(x.float(), c.float())


def test_made_one_feature_and_errors():
    made = perturb(MADE(1, (4,), outputs=2)).double()
    x = _randn(5, 1)
    out = made(x)
    assert out.shape == (5, 2, 1)
    assert torch.allclose(out, out[:1].expand_as(out)), "with D=1 the output sees no input"
    with pytest.raises(ValueError, match="expected shape"):
        MADE(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="permutation"):
        made_order(3, [0, 0, 1])
    with pytest.raises(ValueError, match="order"):
        made_order(3, "sideways")
    with pytest.raises(ValueError, match="activation"):
        MADE(3, activation="swish2")


@pytest.mark.parametrize("order", ORDERS, ids=["natural", "reversed", "random", "explicit"])
def test_maf_layer_jacobian_is_triangular_in_its_order(order):
    layer = perturb(MaskedAutoregressive(D, (16, 16), order=order,
                                         generator=torch.Generator().manual_seed(3))).double()
    check_bijection(layer, _randn(6, D))
    check_bijection(layer.inv, _randn(6, D))
    pos = layer.order
    x = _randn(4, D, seed=2)
    above = pos[None, :] > pos[:, None]                    # (i, j): j comes after i
    for direction in ("inverse", "forward"):
        J = jacobian(layer, x, direction=direction)
        assert (J[:, above] == 0).all(), f"{direction}: not triangular in the layer's order"
        assert (J[:, ~above & (pos[None, :] != pos[:, None])].abs().sum() > 0)
    # Sorting rows and columns by the order gives a lower-triangular matrix whose diagonal is
    # exp(-alpha): the log-det is -sum(alpha) with one pass.
    J = jacobian(layer, x, direction="inverse")
    perm = torch.argsort(pos)
    Js = J[:, perm][:, :, perm]
    assert torch.equal(Js, Js.tril())
    _, alpha = layer.conditionals(x)
    assert torch.allclose(torch.diagonal(Js, dim1=1, dim2=2), torch.exp(-alpha)[:, perm])
    assert torch.allclose(layer.inverse(x)[1], -alpha.sum(1))


def test_maf_layer_with_context():
    layer = perturb(MaskedAutoregressive(3, (8,), context=2)).double()
    z, c = _randn(5, 3), _randn(5, 2, seed=1)
    check_bijection(layer, z, c)
    check_bijection(layer.inv, z, c)
    assert not torch.allclose(layer(z, c)[0], layer(z, c + 1)[0])


def test_log_scale_is_soft_clamped():
    layer = MaskedAutoregressive(4, (8,), elementwise=AffineMap(2.0))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 50.0)
    x = torch.randn(64, 4) * 10
    _, alpha = layer.shift_and_log_scale(x)
    assert alpha.abs().max() <= 2.0 and alpha.abs().max() > 1.5   # the bound binds, softly
    # the arctangent clamp (2c/pi) atan(pi r / 2c) of the MADE's raw output: slope 1 at 0
    raw = layer.made(x)[:, 0]        # parameter 0: the raw log-scale
    assert torch.allclose(alpha, (4.0 / math.pi) * torch.atan(raw * math.pi / 4.0))
    # its slope at raw = 1 with c = 2 is 1 / (1 + (pi/4)^2)
    small = MaskedAutoregressive(1, (), elementwise=AffineMap(2.0))
    with torch.no_grad():
        small.made.last.bias.copy_(torch.tensor([1.0, 0.0]))
    a = torch.autograd.grad(small.shift_and_log_scale(torch.zeros(1, 1))[1].sum(),
                            small.made.last.bias)[0][0]
    assert torch.isclose(a, torch.tensor(1 / (1 + (math.pi / 4) ** 2)))
    z, ladj = layer.inverse(x)
    assert torch.isfinite(z).all() and (ladj.abs() <= 4 * 2.0 + 1e-5).all()
    with pytest.raises(ValueError, match="log_scale_bound"):
        AffineMap(0)
    with pytest.raises(ValueError, match="log_scale_bound"):
        AffineMap(float("nan"))
    with pytest.raises(ValueError, match="expected shape"):
        layer.inverse(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        maf(4, layers=2, hidden=(8,)).log_prob(torch.full((3, 4), float("nan")))


def test_maf_layer_is_a_gaussian_autoregressive_model():
    """One layer's density is the chain rule over the Gaussian conditionals N(mu_i, e^{2 alpha_i})
    that ``conditionals`` reports, and mu = -t e^alpha (z = x e^-alpha + t)."""
    layer = perturb(MaskedAutoregressive(D, (16,), order="random",
                                         generator=torch.Generator().manual_seed(5)), 0.5).double()
    flow = flowlib.Flow(layer, flowlib.StandardNormal(D))
    x = _randn(6, D, seed=4)
    mu, alpha = layer.conditionals(x)
    chain = torch.distributions.Normal(mu, alpha.exp()).log_prob(x).sum(1)
    assert torch.allclose(flow.log_prob(x), chain, atol=1e-10)
    t, alpha2 = layer.shift_and_log_scale(x)
    assert torch.equal(alpha, alpha2) and torch.allclose(mu, -t * alpha.exp())
    # ...and sampling draws x_i = mu_i + e^{alpha_i} z_i, with mu, alpha read at the sample
    z = _randn(6, D, seed=5)
    xs, _ = layer(z)
    mu, alpha = layer.conditionals(xs)
    assert torch.allclose(xs, mu + alpha.exp() * z, atol=1e-10)


def test_identity_init():
    layer = MaskedAutoregressive(4)
    z = torch.randn(7, 4)
    x, ladj = layer(z)
    assert torch.equal(x, z) and torch.equal(ladj, torch.zeros(7))


def _count_made_calls(flow) -> list[int]:
    calls = [0]
    for m in flow.modules():
        if isinstance(m, MADE):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("dim,layers", [(2, 3), (6, 2)])
def test_costs_maf_and_iaf(dim, layers):
    """MAF: log_prob = 1 MADE pass per layer; sample = D sequential steps per layer, which are D
    full passes when autograd records them and none (the incremental pass, flowlib.sequential)
    otherwise. IAF: the reverse, and its sample_and_log_prob needs only the parallel passes."""
    flowlib.seed(0)
    m, i = maf(dim, layers, (8,)), iaf(dim, layers, (8,))
    for f in (m, i):
        perturb(f, 0.2)
    x = torch.randn(16, dim)
    z = torch.randn(16, dim)
    for flow, cheap, dear in ((m, "inverse", "forward"), (i, "forward", "inverse")):
        calls = _count_made_calls(flow)
        counts = {}
        for direction, v in (("inverse", x), ("forward", z)):
            for grad in (False, True):
                calls[0] = 0
                with torch.set_grad_enabled(grad):
                    getattr(flow.bijection, direction)(v)
                counts[direction, grad] = calls[0]
        assert counts[cheap, False] == counts[cheap, True] == layers
        assert counts[dear, True] == layers * dim and counts[dear, False] == 0

    calls = _count_made_calls(i)
    with torch.no_grad():
        xs, lp = i.sample_and_log_prob(32)
    assert calls[0] == layers, "IAF's density of its own samples must come from the parallel pass"
    with torch.no_grad():
        lp_check = i.log_prob(xs)                       # the expensive, sequential way
    assert torch.allclose(lp, lp_check, atol=1e-4, rtol=1e-4)


def test_iaf_is_maf_inverted_not_a_copy():
    m, i = maf(3, 2, (8,)), iaf(3, 2, (8,))
    assert isinstance(i.bijection[0], Inverse)
    assert isinstance(i.bijection[0].base, MaskedAutoregressive)
    assert isinstance(i.bijection[1], Inverse) and len(i.bijection) == 2
    assert torch.equal(i.bijection[1].base.order, torch.tensor([2, 1, 0]))   # reversal folded in
    assert sum(p.numel() for p in i.parameters()) == sum(p.numel() for p in m.parameters())
    layer = perturb(MaskedAutoregressive(3, (8,))).double()
    z = _randn(4, 3)
    x_iaf, l_iaf = layer.inv(z)                       # IAF forward = MAF inverse
    z_maf, l_maf = layer.inverse(z)
    assert torch.equal(x_iaf, z_maf) and torch.equal(l_iaf, l_maf)
    assert layer.inv.inv is layer


def test_factories_shapes_and_options():
    for fac in (maf, iaf):
        f = fac(4, layers=3, hidden=(8,), permutation="random")
        assert len(f.bijection) == 3 and not any(isinstance(b, Permutation) for b in f.bijection)
        orders = [(b.base if isinstance(b, Inverse) else b).order for b in f.bijection]
        assert all(sorted(o.tolist()) == [0, 1, 2, 3] for o in orders)
        assert not all(torch.equal(o, orders[0]) for o in orders)      # each layer its own order
        assert fac(4, layers=3, permutation="random", seed=1).bijection[1].state_dict().keys()
        assert f.log_prob(torch.randn(5, 4)).shape == (5,)
        assert f.sample(3).shape == (3, 4)
        f = fac(3, layers=2, hidden=(8,), context=2)
        c = torch.randn(6, 2)
        assert f.log_prob(torch.randn(6, 3), c).shape == (6,)
        assert f.sample(6, context=c).shape == (6, 3)
        with pytest.raises(ValueError, match="permutation"):
            fac(3, permutation="spiral")
    assert len(maf(1, layers=3).bijection) == 3


def test_alternating_orders_equal_reversals_between_layers():
    # maf() folds the classic reversal between layers into alternating MADE orderings. Rebuild
    # the classic stack, natural-order MADEs with Permutation layers in between, from the same
    # weights, and check that it is the same map.
    flowlib.seed(0)
    folded = perturb(maf(3, layers=3, hidden=(8,)), 0.3).double()
    d, rev = 3, torch.arange(2, -1, -1)
    classic: list = []
    for k, layer in enumerate(folded.bijection):
        if k:
            classic.append(Permutation.reverse(d))
        m = MaskedAutoregressive(d, (8,)).double()
        sd = {key: v.clone() for key, v in layer.state_dict().items()}
        if k % 2:   # reversed order on x == natural order on y = reversed x: permute in and out
            last = len(m.made.net) - 1
            out = torch.cat([rev, rev + d])
            for key in ("made.net.0.weight", "made.net.0.mask"):
                sd[key] = sd[key][:, rev]
            for key in (f"made.net.{last}.weight", f"made.net.{last}.mask", f"made.net.{last}.bias"):
                sd[key] = sd[key][out]
            sd["made.order"] = torch.arange(d)
            assert all(torch.equal(sd[f"made.net.{i}.mask"], m.made.net[i].mask)
                       for i in range(0, last + 1, 2)), "permuted masks = natural-order masks"
        m.load_state_dict(sd)
        classic.append(m)
    classic_flow = flowlib.Flow(flowlib.Compose(*classic), flowlib.StandardNormal(d)).double()
    x, z = _randn(6, d), _randn(6, d)
    assert torch.allclose(folded.log_prob(x), classic_flow.log_prob(x), atol=1e-12)
    assert torch.allclose(folded.bijection(z)[0], classic_flow.bijection(z)[0], atol=1e-10)


def test_maf_learns_eight_gaussians(one_thread):
    flowlib.seed(0)
    density = flowlib.data.toy("eight_gaussians")
    flow = maf(2, layers=3, hidden=(32, 32))
    before = flowlib.metrics.kl_to_truth(flow, density, n=5000).value     # about 2.2 nats
    flowlib.fit(flow, density, steps=300, batch_size=256, lr=3e-3, progress=False,
                dev=torch.device("cpu"))
    kl = flowlib.metrics.kl_to_truth(flow, density, n=5000)
    assert kl.value < min(1.4, before - 0.8), f"KL to the truth {kl} after 300 steps ({before})"
