"""Continuous-time flows: the ODE flow against closed forms, the stochastic trace against the exact
one, and the flow-matching loss and training.

The contract checks of ``ContinuousFlow`` (exact trace) run in ``test_bijections.py`` through
``flowlib.testing.examples()``."""

import math

import pytest
import torch
from torch import nn

import flowlib
from flowlib.continuous import (ContinuousFlow, VelocityField, continuous_flow, fit_flow_matching,
                                flow_matching_loss)


class LinearField(nn.Module):
    """v(h, t) = A h: the flow map is expm(A) and log|det| = tr(A), exactly."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, h, t):
        return h @ self.A.T


class PointMassField(nn.Module):
    """The exact conditional velocity towards a point mass c (sigma_min = 0): (c - x) / (1 - t)."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, h, t):
        return (self.c - h) / (1 - t)


def test_linear_field_gives_the_matrix_exponential_and_the_trace():
    g = torch.Generator().manual_seed(0)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    flow = ContinuousFlow(LinearField(A), 3, steps=32)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x, ladj = flow(z)
        z2, ladj_inv = flow.inverse(x)
    assert torch.allclose(x, z @ torch.linalg.matrix_exp(A).T, atol=1e-9)
    assert torch.allclose(ladj, torch.trace(A).expand(5), atol=1e-12)
    assert torch.allclose(ladj_inv, -torch.trace(A).expand(5), atol=1e-12)
    assert torch.allclose(z2, z, atol=1e-9)


def test_rk4_error_shrinks_like_h4():
    torch.manual_seed(0)
    field = flowlib.testing.perturb(VelocityField(2, hidden=(16,)), 0.5).double()
    z = torch.randn(8, 2, dtype=torch.float64)
    with torch.no_grad():
        ref, _ = ContinuousFlow(field, 2, steps=256)(z)
        errs = [(ContinuousFlow(field, 2, steps=n)(z)[0] - ref).abs().max().item() for n in (16, 32)]
    assert 8 < errs[0] / errs[1] < 64, errs  # fourth order: 2^4 = 16 asymptotically


def test_hutchinson_trace_is_unbiased():
    torch.manual_seed(1)
    field = flowlib.testing.perturb(VelocityField(3, hidden=(16,)), 0.3).double()
    z = torch.randn(2, 3, dtype=torch.float64)
    exact = ContinuousFlow(field, 3, steps=8)
    stochastic = ContinuousFlow(field, 3, steps=8, trace="hutchinson")
    n = 2000
    with torch.no_grad():
        x, ladj = exact(z)
        xs, ladjs = stochastic(z.repeat(n, 1))  # every row draws its own probe
    assert torch.allclose(xs, x.repeat(n, 1), atol=1e-12)  # the path does not depend on the probe
    est = ladjs.reshape(n, 2)
    se = est.std(0) / math.sqrt(n)
    assert (est.std(0) > 0).all()
    assert ((est.mean(0) - ladj).abs() < 5 * se).all(), (est.mean(0), ladj, se)


def test_flow_matching_loss_is_zero_for_the_exact_conditional_field():
    c = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    x1 = c.expand(512, 2).clone()
    g = torch.Generator().manual_seed(0)
    assert flow_matching_loss(PointMassField(c), x1, generator=g).item() < 1e-20
    wrong = flow_matching_loss(LinearField(torch.zeros(2, 2, dtype=torch.float64)), x1, generator=g)
    assert wrong.item() > 1.0  # E|x1 - x0|^2 = |c|^2 + 2


def test_flow_matching_trains_a_density_with_an_exact_likelihood(one_thread):
    """A short flow-matching run on the eight Gaussians: the ODE density of the trained field
    (exact trace) beats every Gaussian (the best Gaussian's KL from the mixture's covariance)."""
    flowlib.seed(0)
    density = flowlib.data.toy("eight_gaussians")
    sigma = (density.centers.T @ density.centers / len(density.centers)
             + density.std ** 2 * torch.eye(2, dtype=density.centers.dtype)).double()
    best_gaussian = 0.5 * torch.logdet(2 * math.pi * math.e * sigma).item() - density.entropy().value
    field = VelocityField(2, hidden=(64, 64))
    flow = continuous_flow(field, 2, steps=16)
    before = flowlib.metrics.kl_to_truth(flow, density, n=2000).value
    hist = fit_flow_matching(field, density, steps=600, batch_size=256, lr=3e-3, dev="cpu",
                             progress=False)
    assert len(hist) == 600 and hist.device == "cpu"
    after = flowlib.metrics.kl_to_truth(flow, density, n=2000)
    assert after.value < before - 0.3, (before, after)
    assert after.value + 3 * after.stderr < best_gaussian, (after, best_gaussian)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="trace"):
        ContinuousFlow(VelocityField(2), 2, trace="exactly")
    with pytest.raises(ValueError, match="ContinuousFlow"):
        ContinuousFlow(VelocityField(2), 2)(torch.randn(3, 3))
    with pytest.raises(ValueError, match="steps"):
        ContinuousFlow(VelocityField(2), 2, steps=0)
