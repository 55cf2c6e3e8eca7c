"""fit, budget, seed and the metrics."""

import math

import pytest
import torch

import flowlib
from flowlib import Compose, Flow, StandardNormal
from flowlib.data import Estimate
from flowlib.metrics import bits_per_dim, kl_to_truth, nll


class CorrelatedGaussian:
    """A 2-D Gaussian with exact log_prob: the target a linear flow can learn exactly."""

    bounds = (-4, 4)

    def __init__(self):
        self.cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64) * 2
        self.mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
        self.dist = torch.distributions.MultivariateNormal(self.mean, self.cov)

    def sample(self, n, generator=None):
        L = torch.linalg.cholesky(self.cov)
        e = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.mean + e @ L.T).float()

    def log_prob(self, x):
        return self.dist.log_prob(x.double()).to(x.dtype)


def test_fit_learns_a_gaussian_with_a_linear_flow():
    target = CorrelatedGaussian()
    flow = Flow(flowlib.Linear(2), StandardNormal(2))
    hist = flowlib.fit(flow, target, steps=600, batch_size=256, lr=2e-2, dev="cpu")
    assert len(hist) == 600 and hist.seconds > 0 and hist.device == "cpu"
    assert sum(hist[-50:]) / 50 < sum(hist[:50]) / 50
    kl = kl_to_truth(flow, target, n=20_000)
    assert kl.value < 0.01, kl


def test_fit_on_a_tensor_with_validation():
    x = CorrelatedGaussian().sample(2000)
    flow = Flow(Compose(flowlib.ElementwiseAffine(2), flowlib.Linear(2)), StandardNormal(2))
    hist = flowlib.fit(flow, x[:1500], steps=200, batch_size=128, lr=1e-2, val_data=x[1500:],
                       eval_every=50, dev="cpu")
    assert hist.val_steps == [50, 100, 150, 200]
    assert hist.val_loss[-1] < hist.val_loss[0]
    assert hist.val_loss[-1] == pytest.approx(nll(flow, x[1500:]))


def test_fit_rejects_bad_data():
    flow = Flow(flowlib.ElementwiseAffine(2), StandardNormal(2))
    with pytest.raises(ValueError, match="NaN"):
        flowlib.fit(flow, torch.tensor([[0.0, float("nan")]] * 4), steps=2, dev="cpu")
    with pytest.raises(TypeError, match="data must be"):
        flowlib.fit(flow, [1, 2, 3], steps=2, dev="cpu")
    with pytest.raises(ValueError, match="positive"):
        flowlib.fit(flow, torch.zeros(4, 2), steps=0, dev="cpu")


def test_fit_stops_on_a_non_finite_loss_and_keeps_parameters():
    flow = Flow(flowlib.ElementwiseAffine(2), StandardNormal(2))
    calls = {"n": 0}

    def data(n):
        calls["n"] += 1
        return torch.full((n, 2), 1e30 if calls["n"] == 5 else 0.5)

    before = None
    with pytest.raises(FloatingPointError, match="step 4"):
        flowlib.fit(flow, data, steps=10, batch_size=8, dev="cpu")
    before = [p.detach().clone() for p in flow.parameters()]
    assert all(torch.isfinite(p).all() for p in before)


def test_budget_and_device(monkeypatch):
    monkeypatch.setenv("FLOWLIB_DEVICE", "cpu")
    assert flowlib.device().type == "cpu"
    assert flowlib.budget(cpu=10, gpu=1000) == 10
    monkeypatch.setenv("FLOWLIB_DEVICE", "cuda")
    assert flowlib.budget(cpu=10, gpu=1000) == 1000


def test_seed_makes_runs_identical():
    def run():
        flowlib.seed(7)
        flow = Flow(flowlib.Linear(2), StandardNormal(2))
        flowlib.fit(flow, CorrelatedGaussian(), steps=20, batch_size=32, dev="cpu")
        return flow.sample(5)

    assert torch.equal(run(), run())


def test_bits_per_dim():
    assert bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)
    # a uniform model on [0,1)^D of 17-level data costs exactly log2(17) bits per dimension
    assert bits_per_dim(0.0, 64, levels=17) == pytest.approx(math.log2(17))


def test_kl_to_truth_matches_the_closed_form():
    """KL(N(0, I) || N(mu, s^2 I)) in 2-D has a closed form."""
    class StdNormal2D:
        def sample(self, n, generator=None):
            return torch.randn(n, 2, generator=generator)

        def log_prob(self, x):
            return StandardNormal(2).double().log_prob(x.double())

    aff = flowlib.ElementwiseAffine(2)
    with torch.no_grad():
        aff.shift.fill_(0.5)
        aff.log_scale.fill_(math.log(1.5))
    flow = Flow(aff, StandardNormal(2))
    s2, mu = 1.5**2, 0.5
    exact = 2 * (0.5 * (1 / s2 + mu**2 / s2 - 1 + math.log(s2)))
    est = kl_to_truth(flow, StdNormal2D(), n=200_000)
    assert isinstance(est, Estimate)
    assert abs(est.value - exact) < 4 * est.stderr + 1e-3
