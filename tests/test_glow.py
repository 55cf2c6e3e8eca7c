"""Glow: ActNorm's data-dependent init, the 1x1 convolution (plain and LU), GlowStep, glow()."""

import io

import pytest
import torch

import flowlib
from flowlib import ActNorm, GlowStep, InvConv1x1
from flowlib.models import glow
from flowlib.testing import check_bijection, perturb


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("shape,dims", [((256, 3), (0,)), ((32, 3, 4, 4), (0, 2, 3))])
def test_actnorm_init_gives_zero_mean_unit_variance(shape, dims):
    an = ActNorm(3).double()
    x = 3 * _x(*shape) + torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64).view(1, 3, *[1] * (len(shape) - 2))
    assert not an.initialized
    z, ladj = an.inverse(x)
    assert an.initialized
    var, mean = torch.var_mean(z, dim=dims, correction=0)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(var, torch.ones(3, dtype=torch.float64), atol=1e-5)
    pixels = 1 if len(shape) == 2 else shape[2] * shape[3]
    sd = x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False)
    assert torch.allclose(ladj, -pixels * torch.log(sd).sum().expand(shape[0]), atol=1e-5)
    # afterwards the parameters are ordinary: a second batch does not re-initialize
    before = an.loc.detach().clone()
    an.inverse(x + 10)
    assert torch.equal(an.loc.detach(), before)


def test_actnorm_eval_mode_does_not_initialize_and_state_dict_keeps_the_flag():
    an = ActNorm(2).eval()
    an.inverse(torch.randn(8, 2) * 4)
    assert not an.initialized and torch.equal(an.loc.detach(), torch.zeros(2))
    an.train()
    an.inverse(torch.randn(64, 2) * 4 + 1)
    buf = io.BytesIO()
    torch.save(an.state_dict(), buf)
    buf.seek(0)
    fresh = ActNorm(2)
    fresh.load_state_dict(torch.load(buf))
    assert fresh.initialized
    fresh.inverse(torch.randn(64, 2) * 100)  # training mode, but must not re-initialize
    assert torch.allclose(fresh.loc, an.loc) and torch.allclose(fresh.log_scale, an.log_scale)
    with pytest.raises(ValueError, match="features"):
        an.inverse(torch.randn(4, 3))


@pytest.mark.parametrize("lu", [True, False])
def test_invconv_logdet_agrees_with_slogdet(lu):
    torch.manual_seed(1)
    conv = perturb(InvConv1x1(5, lu=lu), 0.3).double()
    w = conv.weight
    ref = torch.linalg.slogdet(w)[1]
    z = _x(2, 5, 3, 4)
    x, ladj = conv(z)
    assert torch.allclose(ladj, 12 * ref.expand(2), atol=1e-10)
    assert torch.allclose(x, torch.einsum("ij,bjhw->bihw", w, z), atol=1e-12)
    zv = _x(3, 5)
    xv, ladjv = conv(zv)
    assert torch.allclose(xv, zv @ w.T) and torch.allclose(ladjv, ref.expand(3), atol=1e-10)
    check_bijection(conv, z)
    check_bijection(conv, zv)


def test_lu_parametrisation_reproduces_w_and_starts_as_a_rotation():
    torch.manual_seed(2)
    conv = InvConv1x1(6).double()
    w = conv.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6)
    l, u = conv._factors()
    assert torch.equal(torch.triu(l, 1), torch.zeros_like(l)) and torch.equal(torch.diagonal(l), torch.ones(6, dtype=torch.float64))
    assert torch.equal(torch.tril(u, -1), torch.zeros_like(u))
    perturb(conv, 0.3)
    l, u = conv._factors()
    assert torch.allclose(conv.weight, conv.p @ l @ u)
    assert torch.allclose(torch.diagonal(u).abs().log(), conv.log_s)
    assert torch.allclose(conv.inverse_weight() @ conv.weight, torch.eye(6, dtype=torch.float64), atol=1e-10)
    # c^2 free numbers in all: c(c-1)/2 in each triangle, c in log|s|
    assert sum(p.numel() for p in conv.parameters()) == 36
    assert conv.state_dict()["p"].shape == (6, 6)


def test_glow_step_round_trip_and_init():
    step = GlowStep((4, 4, 4), hidden=8).double()
    x = 2 * _x(16, 4, 4, 4) + 3
    z, ladj = step.inverse(x)  # initializes the actnorm
    assert step.actnorm.initialized
    back, ladj_f = step(z)
    assert torch.allclose(back, x, atol=1e-10) and torch.allclose(ladj + ladj_f, torch.zeros_like(ladj), atol=1e-10)
    with pytest.raises(ValueError):
        GlowStep(4, permutation="nope")


@pytest.mark.parametrize("kw", [dict(features=6, hidden=(8,), layers=3),
                                dict(shape=(1, 8, 8), hidden=4, layers=2, logit=0.05)])
def test_glow_model_round_trip_and_temperature(kw):
    flowlib.seed(0)
    flow = glow(**kw).double()
    shape = (kw["features"],) if "features" in kw else kw["shape"]
    x = torch.rand(32, *shape, dtype=torch.float64)
    flow.train()
    flow.log_prob(x)  # actnorm init
    perturb(flow, 0.05)
    flow.eval()
    report = check_bijection(flow.bijection, x[:4] * 0.9 + 0.05 if "logit" in kw else _x(4, *shape),
                             jacobian_samples=1)
    assert report["round_trip"] < 1e-8
    # temperature scales the whole base, the factored-out parts included
    torch.manual_seed(3)
    z1 = flow.base.sample(5, temperature=1.0)
    torch.manual_seed(3)
    z07 = flow.base.sample(5, temperature=0.7)
    assert torch.allclose(z07, 0.7 * z1)
    torch.manual_seed(3)
    s = flow.sample(5, temperature=0.7)
    assert torch.allclose(s, flow.bijection(z07)[0])
    assert torch.allclose(flow.bijection.inverse(s)[0], z07, atol=1e-8)
    t0 = flow.sample(3, temperature=0.0)
    assert torch.allclose(t0, t0[:1].expand_as(t0))


def test_glow_trains_on_a_toy():
    flowlib.seed(0)
    density = flowlib.data.toy("two_moons")
    flow = glow(2)
    flowlib.fit(flow, density, steps=300, batch_size=256, lr=5e-3)
    kl = flowlib.metrics.kl_to_truth(flow, density)
    assert kl.value < 0.5, kl
