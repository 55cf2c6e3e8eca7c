"""The i-ResNet block: spectral normalisation, the fixed-point inverse and its implicit gradient,
and the stochastic log-determinant tested statistically against the exact one.

The contract checks (round trip, ladj against autograd, ...) run on the exact log-det mode in
``test_bijections.py`` through ``flowlib.testing.examples()``."""

import math

import pytest
import torch

import flowlib
from flowlib.residual import ResidualBlock, SpectralLinear, jacobian_of, logdet_series, residual_flow
from flowlib.testing import perturb


def _block(dim=4, coeff=0.9, seed=0, **kw):
    torch.manual_seed(seed)
    return perturb(ResidualBlock(dim, hidden=(16, 16), coeff=coeff, **kw), 0.3, seed=seed).double()


def test_spectral_norm_is_bounded_exactly():
    torch.manual_seed(0)
    layer = SpectralLinear(7, 5, coeff=0.8)
    with torch.no_grad():
        layer.weight.mul_(10.0)  # far above the bound: normalisation must act
    sigma = torch.linalg.matrix_norm(layer.normalized_weight(), ord=2).item()
    assert sigma == pytest.approx(0.8, rel=1e-6)
    small = SpectralLinear(7, 5, coeff=0.8)
    with torch.no_grad():
        small.weight.mul_(1e-3)  # below the bound: left unchanged
    assert torch.equal(small.normalized_weight(), small.weight)


def test_power_iteration_converges_to_the_spectral_norm():
    torch.manual_seed(1)
    layer = SpectralLinear(12, 9, coeff=0.9, power_iterations=1).double()
    exact = torch.linalg.matrix_norm(layer.weight, ord=2).item()
    layer.refresh(200)
    layer.eval()  # no update in evaluation mode: the estimate is u^T W v
    assert layer.sigma().item() == pytest.approx(exact, rel=1e-8)
    with pytest.raises(ValueError, match="coeff"):
        SpectralLinear(3, 3, coeff=1.0)


def test_lipschitz_bound_and_contraction():
    block = _block(coeff=0.9)
    assert block.lipschitz_bound() <= 0.9 ** 3 + 1e-9
    x, y = torch.randn(200, 4, dtype=torch.float64), torch.randn(200, 4, dtype=torch.float64)
    with torch.no_grad():
        ratio = (block.g(x) - block.g(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert ratio.max().item() < block.lipschitz_bound() + 1e-12


def test_fixed_point_converges_at_the_contraction_rate():
    block = _block(coeff=0.9)
    z = torch.randn(16, 4, dtype=torch.float64)
    with torch.no_grad():
        x, _ = block(z)
        assert torch.allclose(x + block.g(x), z, atol=1e-10)
    # error <= c^k |g(z)| / (1 - c) reaches the tolerance in about log(tol) / log(c) steps
    c = block.lipschitz_bound()
    assert block.last_iterations <= math.ceil(math.log(1e-13) / math.log(c)) + 5


def test_non_contractive_residual_raises():
    block = ResidualBlock(3, hidden=(4,), max_iter=50).double()
    block.g = torch.nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        block.g.weight.copy_(-2.0 * torch.eye(3))  # x = z - g(x) = z + 2x diverges
    with pytest.raises(RuntimeError, match="did not converge"):
        block(torch.randn(2, 3, dtype=torch.float64))


def test_implicit_gradient_matches_unrolled_iterations():
    """The hook's gradient w.r.t. the parameters equals backpropagation through many unrolled
    fixed-point iterations (which converges to the same implicit gradient)."""
    block = _block(coeff=0.8, seed=2)
    z = torch.randn(5, 4, dtype=torch.float64)
    x, _ = block(z)
    (x ** 2).sum().backward()
    implicit = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    xu = z
    for _ in range(200):
        xu = z - block.g(xu)
    (xu ** 2).sum().backward()
    for a, p in zip(implicit, block.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-10), (a - p.grad).abs().max()


def test_truncated_series_is_within_its_bound():
    block = _block(coeff=0.9, seed=3)
    x = torch.randn(8, 4, dtype=torch.float64)
    with torch.no_grad():
        exact = torch.linalg.slogdet(torch.eye(4, dtype=x.dtype) + jacobian_of(block.g, x)).logabsdet
        c = block.lipschitz_bound()
        errors = []
        for n in (1, 2, 4, 8, 16):
            series = logdet_series(block.g, x, terms=n, probes=None)
            bound = 4 * c ** (n + 1) / ((n + 1) * (1 - c))
            err = (series - exact).abs().max().item()
            assert err <= bound, (n, err, bound)
            errors.append(err)
    assert errors[-1] < errors[0] / 10


def test_hutchinson_estimator_is_unbiased_for_the_truncated_series():
    """Mean of many independent estimates within 5 standard errors of the exact truncated series;
    their spread shrinks like 1/sqrt(probes)."""
    block = _block(coeff=0.9, seed=4)
    x = torch.randn(3, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        target = logdet_series(block.g, x, terms=6, probes=None)
        # each row draws its own probe: 4000 copies of the batch are 4000 independent estimates
        one = logdet_series(block.g, x.repeat(4000, 1), terms=6, probes=1, generator=g).reshape(4000, 3)
        many = logdet_series(block.g, x.repeat(400, 1), terms=6, probes=16, generator=g).reshape(400, 3)
    se = one.std(0) / math.sqrt(len(one))
    assert ((one.mean(0) - target).abs() < 5 * se).all(), (one.mean(0), target, se)
    assert (one.std(0) > 0).all()
    ratio = (many.std(0) / one.std(0))
    assert ((ratio > 0.15) & (ratio < 0.4)).all(), ratio  # about 1/sqrt(16) = 0.25


def test_estimate_mode_trains_and_is_close_to_exact():
    block = _block(coeff=0.7, seed=5, logdet="estimate", terms=12, probes=8)
    exact = _block(coeff=0.7, seed=5)
    x = torch.randn(64, 4, dtype=torch.float64)
    z, ladj = block.inverse(x)
    z2, ladj_exact = exact.inverse(x)
    assert torch.equal(z, z2)
    assert (ladj - ladj_exact).abs().mean().item() < 0.05
    (-ladj.mean()).backward()  # the estimator is differentiable (i-ResNet trains through it)
    weights = [p for name, p in block.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights)


def test_bad_input_is_named():
    block = ResidualBlock(3, hidden=(4,))
    with pytest.raises(ValueError, match="ResidualBlock"):
        block(torch.randn(2, 4))
    with pytest.raises(ValueError, match="non-finite"):
        block.inverse(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="logdet"):
        ResidualBlock(3, logdet="power")


def test_residual_flow_learns_a_2d_density(one_thread):
    """A short maximum-likelihood run with the exact log-det beats every Gaussian on the eight
    Gaussians (the best Gaussian's KL is computed from the mixture's exact covariance)."""
    flowlib.seed(0)
    density = flowlib.data.toy("eight_gaussians")
    sigma = (density.centers.T @ density.centers / len(density.centers)
             + density.std ** 2 * torch.eye(2, dtype=density.centers.dtype)).double()
    best_gaussian = 0.5 * torch.logdet(2 * math.pi * math.e * sigma).item() - density.entropy().value
    flow = residual_flow(2, blocks=4, hidden=(32, 32), coeff=0.9)
    before = flowlib.metrics.kl_to_truth(flow, density, n=4000).value
    flowlib.fit(flow, density, steps=300, batch_size=128, lr=3e-3, dev="cpu", progress=False)
    after = flowlib.metrics.kl_to_truth(flow, density, n=4000)
    assert after.value < before - 0.3
    assert after.value + 3 * after.stderr < best_gaussian, (after, best_gaussian)
