"""Probability density distillation: the KL estimators, gradients through samples, the loop."""

import math

import pytest
import torch

import flowlib
from flowlib import Compose, ElementwiseAffine, Flow, StandardNormal
from flowlib.autoregressive import MaskedAutoregressive
from flowlib.data import Waveforms
from flowlib.distill import distill, gaussian_ar_kl, gaussian_kl, kl_estimate, kl_samples
from flowlib.models import iaf, maf
from flowlib.testing import perturb


def _affine_flow(dim: int, scale: float, seed: int) -> Flow:
    g = torch.Generator().manual_seed(seed)
    layer = ElementwiseAffine(dim).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return Flow(layer, StandardNormal(dim)).double()


def _gaussian_params(flow: Flow, dim: int):
    """Mean and log-std of the diagonal Gaussian N(shift, e^{2 log_scale}) of a one-layer flow."""
    return flow.bijection.shift.detach().clone(), flow.bijection.log_scale.detach().clone()


def test_mc_kl_is_unbiased_for_diagonal_gaussians():
    d = 3
    s, t = _affine_flow(d, 0.5, 1), _affine_flow(d, 0.5, 2)
    exact = gaussian_kl(*_gaussian_params(s, d), *_gaussian_params(t, d)).sum().item()
    assert exact > 0.1
    means = torch.stack([kl_samples(s, t, 2000).mean().detach() for _ in range(50)])
    se = means.std() / math.sqrt(len(means))
    assert abs(means.mean().item() - exact) < 4 * se.item() + 1e-9
    est = kl_estimate(s, t, n=20_000)
    assert abs(est.value - exact) < 5 * est.stderr
    # KL of a flow to itself is exactly 0, sample by sample
    assert kl_samples(s, s, 100).abs().max() < 1e-10


def test_gradients_flow_through_the_samples():
    d = 4
    s, t = _affine_flow(d, 0.5, 3), _affine_flow(d, 0.5, 4)
    for p in t.parameters():
        p.requires_grad_(False)
    kl_samples(s, t, 64).mean().backward()
    grads = [p.grad for p in s.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # on average the gradient equals the closed-form gradient of the exact KL
    s.zero_grad()
    kl_samples(s, t, 200_000).mean().backward()
    mu_s, ls_s = _gaussian_params(s, d)
    mu_t, ls_t = _gaussian_params(t, d)
    mu_s.requires_grad_(True)
    ls_s.requires_grad_(True)
    g_mu, g_ls = torch.autograd.grad(gaussian_kl(mu_s, ls_s, mu_t, ls_t).sum(), (mu_s, ls_s))
    assert torch.allclose(s.bijection.shift.grad, g_mu, atol=0.03)
    assert torch.allclose(s.bijection.log_scale.grad, g_ls, rtol=0.02, atol=0.03)


def test_gaussian_ar_kl_matches_mc_and_is_lower_variance():
    flowlib.seed(0)
    d = 6
    teacher = perturb(Flow(Compose(MaskedAutoregressive(d, (16,)), MaskedAutoregressive(d, (16,))),
                           StandardNormal(d)).double(), 0.1)
    student = perturb(iaf(d, layers=2, hidden=(16,), permutation="none").double(), 0.1)
    with torch.no_grad():
        mc = kl_samples(student, teacher, 40_000)
        cf = gaussian_ar_kl(student, teacher, 40_000)
    se = math.sqrt(mc.var() / len(mc) + cf.var() / len(cf))
    assert abs(mc.mean() - cf.mean()) < 4 * se
    assert cf.var() < mc.var()
    assert (cf >= -1e-6).all()  # a sum of KLs, never negative


def test_gaussian_ar_kl_rejects_mismatched_structure():
    d = 4
    with pytest.raises(ValueError, match="same ordering|permutation"):
        gaussian_ar_kl(iaf(d, layers=2), maf(d, layers=1), 8)      # orders alternate
    with pytest.raises(ValueError, match="MAF"):
        gaussian_ar_kl(iaf(d, layers=1), iaf(d, layers=1), 8)


def test_distillation_lowers_the_kl_and_leaves_the_teacher_alone():
    flowlib.seed(0)
    d = 8
    teacher = maf(d, layers=2, hidden=(32,))
    flowlib.fit(teacher, Waveforms(d).sample(2000), steps=150, batch_size=128, lr=3e-3,
                dev="cpu", progress=False)
    teacher.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = [p.requires_grad for p in teacher.parameters()]
    student = iaf(d, layers=2, hidden=(32,))
    kl0 = kl_estimate(student, teacher, 4000)
    hist = distill(student, teacher, steps=150, batch_size=128, lr=3e-3, dev="cpu", progress=False)
    kl1 = kl_estimate(student, teacher, 4000)
    assert len(hist) == 150 and hist.seconds > 0
    assert kl1.value < 0.5 * kl0.value, (kl0, kl1)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == flags  # restored afterwards


def test_distill_with_the_gaussian_estimator_runs():
    d = 4
    teacher = perturb(Flow(MaskedAutoregressive(d, (8,)), StandardNormal(d)), 0.3)
    student = iaf(d, layers=1, hidden=(8,))
    kl0 = kl_estimate(student, teacher, 4000).value
    distill(student, teacher, steps=100, batch_size=64, lr=1e-2, estimator="gaussian",
            dev="cpu", progress=False)
    assert kl_estimate(student, teacher, 4000).value < kl0


def test_errors():
    with pytest.raises(ValueError, match="same dimension"):
        kl_samples(iaf(3, layers=1), maf(4, layers=1), 8)
    with pytest.raises(ValueError, match="same dimension"):
        distill(iaf(3, layers=1), maf(4, layers=1), steps=1, progress=False)
    with pytest.raises(ValueError, match="estimator"):
        distill(iaf(3, layers=1), maf(3, layers=1), steps=1, estimator="nope", progress=False)
    with pytest.raises(ValueError, match="positive"):
        distill(iaf(3, layers=1), maf(3, layers=1), steps=0, progress=False)
    with pytest.raises(TypeError, match="Flow"):
        kl_samples(torch.nn.Linear(2, 2), maf(2, layers=1), 8)


def test_waveforms_density_is_exact():
    w = Waveforms(6, periods=(7.0,))
    x = w.sample(40_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(x.var(0), torch.ones(6, dtype=torch.float64), atol=0.05)  # stationary
    # one component is a zero-mean Gaussian; its exact covariance is the AR(2) autocovariance
    rho = [1.0, float(w.rho1[0])]
    for _ in range(4):
        rho.append(float(w.a1[0]) * rho[-1] + float(w.a2[0]) * rho[-2])
    cov = torch.tensor([[rho[abs(i - j)] for j in range(6)] for i in range(6)], dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), cov)
    assert torch.allclose(w.log_prob(x[:100]), mvn.log_prob(x[:100]), atol=1e-8)
    assert abs(w.entropy(20_000).value - mvn.entropy().item()) < 0.05
    with pytest.raises(ValueError, match="shape"):
        w.log_prob(torch.zeros(3, 5))
    assert flowlib.data.waveforms(5, features=16).shape == (5, 16)


def test_forward_kl_warmup_fits_teacher_samples_first():
    """The warm-up steps minimise -E_t log s (recorded as the loss), then the reverse KL takes
    over; both lower their objective, and the teacher stays untouched."""
    d = 2
    teacher = perturb(Flow(MaskedAutoregressive(d, (8,)), StandardNormal(d)), 0.5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = iaf(d, layers=2, hidden=(16,))
    with torch.no_grad():
        xt = teacher.sample(4000)
        ce0 = -student.log_prob(xt).mean().item()
    hist = distill(student, teacher, steps=100, batch_size=128, warmup=0.5, dev="cpu",
                   progress=False)
    with torch.no_grad():
        ce1 = -student.log_prob(xt).mean().item()
    assert len(hist) == 100 and ce1 < ce0
    assert hist.loss[49] < hist.loss[0]          # the warm-up lowered the cross-entropy
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="warmup"):
        distill(student, teacher, steps=10, warmup=1.0, dev="cpu", progress=False)
