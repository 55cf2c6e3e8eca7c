"""BatchNormFlow: batch statistics in training, running statistics in evaluation, log-dets."""

import pytest
import torch

from flowlib import BatchNormFlow
from flowlib.testing import check_bijection, jacobian, perturb


def _layer(features=3):
    layer = BatchNormFlow(features).double()
    with torch.no_grad():
        layer.log_gamma.copy_(torch.linspace(-0.5, 0.7, features))
        layer.beta.copy_(torch.linspace(1.0, -1.0, features))
    return layer


@pytest.mark.parametrize("shape,dims", [((32, 3), (0,)), ((8, 3, 4, 5), (0, 2, 3))])
def test_training_mode_uses_batch_statistics_and_their_log_det(shape, dims):
    layer = _layer()
    x = 2 * torch.randn(*shape, dtype=torch.float64) + 3
    z, ladj = layer.inverse(x)
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    view = (1, 3) + (1,) * (len(shape) - 2)
    gamma, beta = layer.log_gamma.exp().reshape(view), layer.beta.reshape(view)
    assert torch.allclose(z, gamma * (x - mean) / torch.sqrt(var + layer.eps) + beta)
    pixels = 1 if len(shape) == 2 else shape[2] * shape[3]
    formula = pixels * (layer.log_gamma - 0.5 * torch.log(var.flatten() + layer.eps)).sum()
    assert torch.allclose(ladj, formula.expand(shape[0]))
    # the normalized batch has the mean beta and the standard deviation gamma
    assert torch.allclose(z.mean(dims), layer.beta, atol=1e-10)
    assert torch.allclose(z.var(dims, unbiased=False), layer.log_gamma.exp() ** 2, rtol=1e-4)


def test_training_log_det_is_that_of_each_sample_map_with_frozen_statistics():
    """The batch map's autograd Jacobian has cross-sample terms (through the mean and variance);
    with the statistics held fixed, the per-sample Jacobian is diagonal and its log-det is ladj."""
    layer = _layer()
    x = torch.randn(16, 3, dtype=torch.float64) * 1.5
    _, ladj = layer.inverse(x)
    mean, var = layer.batch_statistics(x)

    def frozen(v):
        return torch.exp(layer.log_gamma) * (v - mean) / torch.sqrt(var + layer.eps) + layer.beta

    J = torch.autograd.functional.jacobian(frozen, x[0])
    assert torch.allclose(torch.linalg.slogdet(J).logabsdet, ladj[0])

    def batch_map(flat):
        return layer.inverse(flat.reshape(16, 3))[0].reshape(-1)

    Jb = torch.autograd.functional.jacobian(batch_map, x.reshape(-1)).reshape(16, 3, 16, 3)
    # its block for one sample is that diagonal times 1 - 1/B - u^2/B, u the normalized value
    u = (x[0] - mean) / torch.sqrt(var + layer.eps)
    block = Jb[0, :, 0, :]
    assert torch.allclose(block, J * (1 - 1 / 16 - u**2 / 16))
    assert Jb[0, :, 1, :].abs().max() > 1e-3, "samples of one batch interact in training mode"


def test_running_statistics_and_eval_mode():
    layer = _layer()
    x = 2 * torch.randn(4000, 3, dtype=torch.float64) + 3
    for chunk in x.split(50):  # 80 updates: the initial (0, 1) is forgotten
        layer.inverse(chunk)
    assert torch.allclose(layer.running_mean, torch.full((3,), 3.0, dtype=torch.float64), atol=0.3)
    assert torch.allclose(layer.running_var, torch.full((3,), 4.0, dtype=torch.float64), atol=0.8)
    layer.eval()
    z, ladj = layer.inverse(x[:5])
    z1, ladj1 = layer.inverse(x[:1])
    assert torch.allclose(z[:1], z1) and torch.allclose(ladj[:1], ladj1), "eval: no batch dependence"
    check_bijection(layer, torch.randn(6, 3, dtype=torch.float64))
    J = jacobian(layer, torch.randn(2, 3, dtype=torch.float64), direction="inverse")
    assert torch.allclose(torch.linalg.slogdet(J).logabsdet, ladj[:2])


def test_forward_uses_running_statistics_in_both_modes():
    layer = perturb(_layer())
    with torch.no_grad():
        layer.running_mean.fill_(1.0)
        layer.running_var.fill_(4.0)
    z = torch.randn(5, 3, dtype=torch.float64)
    x_train, l_train = layer(z)
    layer.eval()
    x_eval, l_eval = layer(z)
    assert torch.equal(x_train, x_eval) and torch.equal(l_train, l_eval)
    assert torch.allclose(layer.inverse(x_eval)[0], z)


def test_errors():
    layer = BatchNormFlow(3)
    with pytest.raises(ValueError, match="3 features"):
        layer.inverse(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 values"):
        layer.inverse(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="momentum"):
        BatchNormFlow(3, momentum=0.0)
