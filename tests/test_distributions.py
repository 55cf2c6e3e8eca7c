"""Base distributions and Flow: densities, sampling, temperature, errors."""

import math

import pytest
import torch
from torch import distributions as D

import flowlib
from flowlib import Compose, DiagonalGaussian, Flow, StandardLogistic, StandardNormal
from flowlib.testing import perturb


def test_standard_normal_matches_torch():
    z = torch.randn(7, 3, 2)
    ref = D.Normal(0, 1).log_prob(z).sum((1, 2))
    assert torch.allclose(StandardNormal((3, 2)).log_prob(z), ref, atol=1e-5)


def test_diagonal_gaussian_matches_torch_and_temperature():
    base = perturb(DiagonalGaussian(4))
    z = torch.randn(5, 4)
    ref = D.Normal(base.loc, base.log_scale.exp()).log_prob(z).sum(1)
    assert torch.allclose(base.log_prob(z), ref, atol=1e-5)
    assert torch.allclose(base.sample(3, temperature=0.0), base.loc.expand(3, 4))
    s = base.sample(200_000, temperature=0.5)
    assert torch.allclose(s.std(0), 0.5 * base.log_scale.exp(), rtol=0.02)


def test_logistic_matches_torch():
    z = torch.randn(6, 5)
    ref = D.TransformedDistribution(D.Uniform(0, 1), [D.SigmoidTransform().inv]).log_prob(z).sum(1)
    assert torch.allclose(StandardLogistic(5).log_prob(z), ref, atol=1e-5)
    s = StandardLogistic(1).sample(200_000)
    assert abs(float(s.var()) - math.pi**2 / 3) < 0.05


def _flow2d():
    return Flow(Compose(perturb(flowlib.ElementwiseAffine(2)), perturb(flowlib.SinhArcsinh(2), 0.1),
                        perturb(flowlib.Linear(2), 0.1)), StandardNormal(2)).double()


def test_flow_density_integrates_to_one():
    flow = _flow2d()
    t = torch.linspace(-12, 12, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp()
    assert abs(float(p.sum() * (t[1] - t[0]) ** 2) - 1) < 1e-3


def test_sample_and_log_prob_agrees_with_log_prob():
    flow = _flow2d()
    with torch.no_grad():
        x, lp = flow.sample_and_log_prob(100)
        assert torch.allclose(lp, flow.log_prob(x), atol=1e-9)


def test_temperature_zero_is_the_image_of_the_mode():
    flow = _flow2d()
    with torch.no_grad():
        x = flow.sample(4, temperature=0.0)
        x0 = flow.bijection(torch.zeros(1, 2, dtype=torch.float64))[0]
    assert torch.allclose(x, x0.expand(4, 2))


def test_trace_lengths_and_ends():
    flow = _flow2d()
    x = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        tr = flow.trace(x)
        ts = flow.trace_samples(10)
    assert len(tr) == 4 and len(ts) == 4 and torch.equal(tr[0], x)
    assert torch.allclose(tr[-1], flow.bijection.inverse(x)[0])


def test_flow_errors_are_clear():
    flow = _flow2d()
    with pytest.raises(ValueError, match=r"expected shape \[B, 2\]"):
        flow.log_prob(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        flow.sample(0)
    with pytest.raises(TypeError):
        Flow(torch.nn.Linear(2, 2), StandardNormal(2))


def test_flow_moves_with_its_base():
    flow = _flow2d().float()
    assert flow.sample(3).dtype == torch.float32
    assert flow.log_prob(torch.zeros(2, 2)).dtype == torch.float32
