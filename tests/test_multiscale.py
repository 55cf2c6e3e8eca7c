"""Squeeze, FactorOut, the logit pre-processing and the multi-scale RealNVP built from them."""

import math

import pytest
import torch

import flowlib
from flowlib import FactorOut, LogitPreprocess, Squeeze
from flowlib.coupling import AffineCoupling, checkerboard_mask
from flowlib.testing import check_bijection, perturb


def test_squeeze_places_each_2x2_block_into_channels():
    z = torch.arange(2 * 4 * 6, dtype=torch.float64).reshape(1, 2, 4, 6)
    x, ladj = Squeeze()(z)
    assert x.shape == (1, 8, 2, 3) and torch.equal(ladj, torch.zeros(1, dtype=torch.float64))
    for c in range(2):
        for h in range(2):
            for w in range(3):
                for i in range(2):
                    for j in range(2):
                        assert x[0, 4 * c + 2 * i + j, h, w] == z[0, c, 2 * h + i, 2 * w + j]
    back, _ = Squeeze().inverse(x)
    assert torch.equal(back, z)


def test_squeeze_round_trip_and_inverse_layer():
    z = torch.randn(5, 3, 8, 4)
    x, _ = Squeeze()(z)
    assert torch.equal(Squeeze().inverse(x)[0], z)
    assert torch.equal(Squeeze().inv(x)[0], z)
    assert torch.equal(Squeeze().inv.inverse(z)[0], x)


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(2, 1, 5, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        Squeeze().inverse(torch.zeros(2, 6, 2, 2))
    with pytest.raises(ValueError, match="4-D"):
        Squeeze()(torch.zeros(2, 16))


def test_factor_out_leaves_the_factored_half_alone():
    torch.manual_seed(0)
    inner = perturb(AffineCoupling(checkerboard_mask((2, 4, 4)), hidden=4)).double()
    layer = FactorOut(inner)
    z = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    x, ladj = layer(z)
    assert torch.equal(x[:, 2:], z[:, 2:])
    x1, l1 = inner(z[:, :2])
    assert torch.equal(x[:, :2], x1) and torch.equal(ladj, l1)
    check_bijection(layer, z)
    vec = FactorOut(perturb(flowlib.ElementwiseAffine(2)).double(), keep=2)
    check_bijection(vec, torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot keep"):
        FactorOut(inner, keep=4)(z)


def test_logit_preprocess_matches_sigmoid_inv_and_an_affine_map():
    alpha = 0.05
    x = torch.rand(6, 5, dtype=torch.float64)
    z, ladj = LogitPreprocess(alpha).inverse(x)
    y = alpha + (1 - 2 * alpha) * x
    z_ref, ladj_ref = flowlib.Sigmoid().inv(y)
    assert torch.allclose(z, z_ref)
    assert torch.allclose(ladj, ladj_ref + 5 * math.log(1 - 2 * alpha))
    check_bijection(LogitPreprocess(alpha).inv, x)
    assert torch.isfinite(LogitPreprocess(alpha).inverse(torch.tensor([[0.0, 1.0]]))[0]).all()
    with pytest.raises(ValueError, match="must lie in"):
        LogitPreprocess(alpha).inverse(torch.tensor([[0.5, 1.2]]))
    with pytest.raises(ValueError, match="alpha"):
        LogitPreprocess(0.5)


def test_realnvp_image_is_multiscale_and_shape_preserving():
    torch.manual_seed(0)
    flow = flowlib.models.realnvp(shape=(1, 8, 8), hidden=4, blocks=0, logit=0.05)
    kinds = [type(m).__name__ for m in flow.modules()]
    assert kinds.count("Squeeze") == 2 and kinds.count("FactorOut") == 1
    assert kinds.count("AffineCoupling") == 3 + 3 + 4
    perturb(flow, 0.05)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    check_bijection(flow.bijection.double(), x, jacobian_samples=2)
    flow = flow.float()
    assert flow.sample(3).shape == (3, 1, 8, 8)
    # the factored-out half skips the second scale: changing the inner scale leaves it alone
    outer = [m for m in flow.modules() if isinstance(m, FactorOut)][0]
    z = torch.randn(2, 1, 8, 8)
    squeezed = Squeeze()(z)[0]
    inner_x = outer(squeezed)[0]
    assert torch.equal(inner_x[:, 2:], squeezed[:, 2:])


def test_realnvp_vector_factory_arguments():
    flow = flowlib.models.realnvp(64, logit=0.05, batch_norm=True)
    kinds = [type(m).__name__ for m in flow.bijection.layers]
    assert kinds.count("AffineCoupling") == 8 and kinds.count("BatchNormFlow") == 7
    assert kinds[-1] == "LogitPreprocess"
    mask = checkerboard_mask((1, 8, 8)).flatten()
    flow = flowlib.models.realnvp(64, mask=mask)
    first = flow.bijection.layers[-1]  # the first coupling in the normalizing direction
    assert torch.equal(first.mask_tensor, mask)
    with pytest.raises(ValueError, match="either features"):
        flowlib.models.realnvp(2, shape=(1, 2, 2))
    with pytest.raises(ValueError, match="mask"):
        flowlib.models.realnvp(4, mask="diagonal")


def test_nice_factory_is_volume_preserving_without_rescale():
    flow = flowlib.models.nice(6, rescale=False)
    perturb(flow, 0.3)
    x = torch.randn(8, 6)
    z, ladj = flow.bijection.inverse(x)
    assert torch.equal(ladj, torch.zeros(8))
    flow = flowlib.models.nice(6, base="logistic", logit=0.05)
    assert isinstance(flow.base, flowlib.StandardLogistic)
    assert isinstance(flow.bijection.layers[0], flowlib.Rescale)  # next to the base, as in NICE
