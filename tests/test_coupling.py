"""Coupling layers (NICE, RealNVP): masks, Jacobian structure, volume preservation, context."""

import math

import pytest
import torch

import flowlib
from flowlib.coupling import (MLP, AdditiveCoupling, AffineCoupling, ConvNet, Rescale,
                              alternating_mask, channel_mask, checkerboard_mask, half_mask)
from flowlib.testing import check_bijection, jacobian, perturb


def _z(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------- masks


def test_vector_masks():
    assert half_mask(5).tolist() == [True, True, True, False, False]
    assert half_mask(4, flip=True).tolist() == [False, False, True, True]
    assert alternating_mask(5).tolist() == [True, False, True, False, True]
    assert alternating_mask(4, flip=True).tolist() == [False, True, False, True]
    for fn in (half_mask, alternating_mask):
        for d in (2, 3, 8):
            assert torch.equal(fn(d, flip=True), ~fn(d)), "flip gives the complement"
        with pytest.raises(ValueError, match="at least 2"):
            fn(1)


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 5, 6), (8, 8)])
def test_checkerboard_mask_alternates_and_complements(shape):
    m = checkerboard_mask(shape)
    c, h, w = (1, *shape) if len(shape) == 2 else shape
    assert m.shape == (c, h, w) and m.dtype == torch.bool
    assert bool(m[:, 0, 0].all()), "the top-left pixel is in the conditioning part"
    # neighbours differ horizontally and vertically, diagonal neighbours agree
    assert bool((m[:, :, 1:] != m[:, :, :-1]).all())
    assert bool((m[:, 1:, :] != m[:, :-1, :]).all())
    assert bool((m[:, 1:, 1:] == m[:, :-1, :-1]).all())
    assert bool((m == m[:1]).all()), "the same pattern in every channel"
    assert torch.equal(checkerboard_mask(shape, flip=True), ~m)
    assert abs(int(m.sum()) - m.numel() / 2) <= c / 2 + 1e-9  # half of the pixels


def test_channel_mask():
    m = channel_mask((4, 3, 2))
    assert m.shape == (4, 3, 2)
    assert bool(m[:2].all()) and not bool(m[2:].any())
    assert torch.equal(channel_mask((4, 3, 2), flip=True), ~m)
    assert channel_mask((3, 1, 1))[:, 0, 0].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_mask((1, 4, 4))


@pytest.mark.parametrize("mask,mode", [
    (half_mask(6), "first"), (half_mask(6, flip=True), "last"), (alternating_mask(6), "index"),
    (channel_mask((4, 2, 2)), "first"), (channel_mask((4, 2, 2), flip=True), "last"),
    (checkerboard_mask((2, 4, 4)), "mask"),
])
def test_partition_mode_follows_the_mask(mask, mode):
    layer = AffineCoupling(mask, hidden=4 if mask.dim() == 3 else (4,))
    assert layer.mode == mode
    assert torch.equal(layer.mask_tensor, mask)


def test_bad_masks_are_rejected():
    with pytest.raises(ValueError, match="some but not all"):
        AffineCoupling(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="event shape"):
        AffineCoupling(torch.ones(2, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------- structure


def _layers():
    torch.manual_seed(0)
    yield "affine/alternating", perturb(AffineCoupling(alternating_mask(5), hidden=(8,))).double(), _z(4, 5)
    yield "affine/checkerboard", perturb(AffineCoupling(checkerboard_mask((1, 4, 4)), hidden=4)).double(), _z(3, 1, 4, 4)
    yield "affine/channel", perturb(AffineCoupling(channel_mask((4, 2, 2), flip=True), hidden=4)).double(), _z(3, 4, 2, 2)
    yield "additive/half", perturb(AdditiveCoupling(half_mask(5), hidden=(8,))).double(), _z(4, 5)
    yield "additive/checkerboard", perturb(AdditiveCoupling(checkerboard_mask((2, 4, 4)), hidden=4)).double(), _z(3, 2, 4, 4)


@pytest.mark.parametrize("name,layer,z", list(_layers()), ids=[n for n, _, _ in _layers()])
def test_coupling_jacobian_is_triangular_with_identity_on_the_conditioning_part(name, layer, z):
    """Ordered A first, the Jacobian is [[I, 0], [*, diag]]: x_A = z_A, and x_B depends on z_B
    only through its own coordinate."""
    J = jacobian(layer, z)  # [B, D, D], every non-batch dim flattened
    a = layer.mask_tensor.flatten()
    b = ~a
    eye = torch.eye(int(a.sum()), dtype=J.dtype)
    assert torch.allclose(J[:, a][:, :, a], eye.expand_as(J[:, a][:, :, a]), atol=1e-12)
    assert J[:, a][:, :, b].abs().max() < 1e-12, "x_A must not depend on z_B"
    JBB = J[:, b][:, :, b]
    off = JBB - torch.diag_embed(torch.diagonal(JBB, dim1=1, dim2=2))
    assert off.abs().max() < 1e-12, "dx_B/dz_B must be diagonal"
    assert J[:, b][:, :, a].abs().max() > 1e-3, "x_B must depend on z_A (the conditioner)"
    _, ladj = layer(z)
    assert torch.allclose(ladj, torch.diagonal(JBB, dim1=1, dim2=2).abs().log().sum(1), atol=1e-10)


def test_additive_coupling_preserves_volume():
    torch.manual_seed(1)
    flow = flowlib.Compose(*[perturb(AdditiveCoupling(alternating_mask(4, flip=k % 2 == 1),
                                                      hidden=(16,)), 0.5) for k in range(4)]).double()
    z = _z(5, 4) * 2
    x, ladj = flow(z)
    assert torch.equal(ladj, torch.zeros(5, dtype=torch.float64))
    det = torch.linalg.det(jacobian(flow, z))
    assert torch.allclose(det, torch.ones(5, dtype=torch.float64), atol=1e-10)
    assert (x - z).abs().max() > 0.1, "the layers are not the identity"


def test_rescale_log_det_is_log_product_of_scales():
    layer = Rescale(3).double()
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.5, -1.0, 2.0]))
    z = _z(4, 3)
    x, ladj = layer(z)
    assert torch.allclose(x, z * torch.tensor([0.5, -1.0, 2.0]).exp())
    assert torch.allclose(ladj, torch.full((4,), math.log(math.exp(0.5) * math.exp(-1) * math.exp(2.0)),
                                           dtype=torch.float64))


def test_affine_coupling_starts_as_the_identity_and_log_scale_is_bounded():
    z = torch.randn(7, 6)
    for layer in (AffineCoupling(half_mask(6)), AffineCoupling(checkerboard_mask((2, 4, 4)))):
        v = z if layer.mode != "mask" else torch.randn(7, 2, 4, 4)
        x, ladj = layer(v)
        assert torch.equal(x, v) and torch.equal(ladj, torch.zeros(7))
    layer = AffineCoupling(half_mask(4), hidden=(8,), log_scale_bound=1.5)
    with torch.no_grad():
        layer.conditioner.net[-1].bias.fill_(100.0)  # a huge raw log-scale
    _, ladj = layer(torch.randn(3, 4))
    assert torch.all(ladj <= 2 * 1.5 + 1e-5), "|s| <= bound for each of the 2 transformed values"


def test_additive_coupling_starts_near_the_identity_and_can_be_exact():
    z = torch.randn(64, 4)
    x, _ = AdditiveCoupling(half_mask(4))(z)
    assert 0 < (x - z).abs().mean() < 1.0
    x, _ = AdditiveCoupling(half_mask(4), init_std=0.0)(z)
    assert torch.equal(x, z)


def test_zero_initialised_additive_stack_is_stationary_on_symmetric_data():
    """Why AdditiveCoupling is not started at exactly the identity: on data symmetric under
    x_B -> -x_B given x_A, every coupling parameter gets zero gradient there."""
    torch.manual_seed(0)
    layers = [AdditiveCoupling(half_mask(2, flip=k % 2 == 1), init_std=0.0) for k in range(2)]
    flow = flowlib.Flow(flowlib.Compose(*layers), flowlib.StandardNormal(2))
    x = flowlib.data.toy("rings").sample(4096)
    x = torch.cat([x, -x, x * torch.tensor([1.0, -1.0]), x * torch.tensor([-1.0, 1.0])])
    (-flow.log_prob(x).mean()).backward()
    assert max(p.grad.abs().max().item() for p in flow.parameters()) < 1e-6
    layers = [AdditiveCoupling(half_mask(2, flip=k % 2 == 1)) for k in range(2)]  # default init
    flow = flowlib.Flow(flowlib.Compose(*layers), flowlib.StandardNormal(2))
    (-flow.log_prob(x).mean()).backward()
    assert max(p.grad.abs().max().item() for p in flow.parameters()) > 1e-4


# ---------------------------------------------------------------------------- conditioners


def test_context_changes_the_map_and_round_trips():
    torch.manual_seed(0)
    layer = perturb(AffineCoupling(half_mask(4), hidden=(8,), context=3)).double()
    z, c1, c2 = _z(5, 4), _z(5, 3, seed=1), _z(5, 3, seed=2)
    check_bijection(layer, z, c1)
    assert not torch.allclose(layer(z, c1)[0], layer(z, c2)[0])
    with pytest.raises(ValueError, match="context"):
        layer(z)
    img = perturb(AffineCoupling(checkerboard_mask((1, 4, 4)), hidden=4, context=2)).double()
    check_bijection(img, _z(3, 1, 4, 4), _z(3, 2, seed=3))


def test_custom_conditioner_is_used():
    class Const(torch.nn.Module):
        def forward(self, h):
            return torch.cat([torch.full_like(h, math.log(2.0)), torch.ones_like(h)], 1)

    layer = AffineCoupling(half_mask(4), Const(), log_scale_bound=None)
    z = torch.randn(3, 4)
    x, ladj = layer(z)
    assert torch.allclose(x[:, 2:], 2 * (z[:, 2:] - 1)) and torch.equal(x[:, :2], z[:, :2])  # (z - t) e^s
    assert torch.allclose(ladj, torch.full((3,), 2 * math.log(2.0)))
    # with the default clamp the same raw log-scale goes through soft_clamp: (2c/pi) atan(pi r / 2c)
    clamped = AffineCoupling(half_mask(4), Const(), log_scale_bound=0.5)
    x, ladj = clamped(z)
    s = (1.0 / math.pi) * math.atan(math.pi * math.log(2.0))
    assert torch.allclose(ladj, torch.full((3,), 2 * s))
    assert torch.allclose(x[:, 2:], (z[:, 2:] - 1) * math.exp(s))
    assert torch.allclose(flowlib.soft_clamp(torch.tensor([math.log(2.0)]), 0.5), torch.tensor([s]))


def test_conditioner_last_layers_start_at_zero():
    mlp = MLP(3, 4, (8,))
    assert torch.equal(mlp(torch.randn(2, 3)), torch.zeros(2, 4))
    net = ConvNet(2, 4, hidden=8, blocks=1)
    assert torch.equal(net(torch.randn(2, 2, 4, 4)), torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="activation"):
        MLP(3, 4, activation="swish!")


@pytest.mark.parametrize("layer,bad", [
    (AffineCoupling(half_mask(4)), torch.zeros(3, 5)),
    (AdditiveCoupling(checkerboard_mask((1, 4, 4))), torch.zeros(3, 1, 4, 5)),
    (Rescale(3), torch.zeros(2, 4)),
])
def test_wrong_shapes_are_named(layer, bad):
    with pytest.raises(ValueError, match="expected"):
        layer(bad)
    with pytest.raises(ValueError, match="expected"):
        layer.inverse(bad)


def test_float32_gradients_flow_to_every_conditioner_parameter():
    flow = flowlib.models.realnvp(4, layers=2)
    loss = -flow.log_prob(torch.randn(16, 4)).mean()
    loss.backward()
    last = [m.conditioner.net[-1].weight for m in flow.modules() if isinstance(m, AffineCoupling)]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in last)
