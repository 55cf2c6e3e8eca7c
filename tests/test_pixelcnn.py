"""PixelCNN: masks A and B, the autoregressive property in raster order (and across colours), by
autograd."""

import pytest
import torch

from flowlib.pixelcnn import BernoulliPixelCNN, MaskedConv2d, conv_mask
from flowlib.testing import perturb


def test_masks_a_and_b():
    a = conv_mask("A", 1, 1, 3)[0, 0]
    b = conv_mask("B", 1, 1, 3)[0, 0]
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="mask_type"):
        conv_mask("C", 1, 1, 3)


def test_pixelcnn_is_autoregressive_in_raster_order():
    torch.manual_seed(0)
    model = perturb(BernoulliPixelCNN((5, 6), channels=8, layers=3), 0.3).double()
    x = torch.bernoulli(torch.full((1, 30), 0.5, dtype=torch.float64))
    J = torch.autograd.functional.jacobian(lambda v: model.logits(v[None])[0], x[0])
    later = torch.ones(30, 30, dtype=torch.bool).triu()  # (i, j) with j >= i
    assert (J[later] == 0).all()
    assert (J[1:, 0] != 0).any()  # the first pixel is seen by later ones
    assert torch.allclose(model.log_prob(x), model.log_prob(x.clone()))


def test_colour_masks_order_r_g_b_inside_a_pixel():
    torch.manual_seed(0)
    net = torch.nn.Sequential(MaskedConv2d(3, 6, 3, "A", colors=3), torch.nn.Tanh(),
                              MaskedConv2d(6, 3, 3, "B", colors=3)).double()
    perturb(net, 0.5)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x[0])  # [3,4,4, 3,4,4]
    i, j = 2, 1                                   # one pixel: how its outputs see its own inputs
    centre = J[:, i, j, :, i, j]                  # [out colour, in colour]
    assert (centre.triu() == 0).all()             # R sees nothing of its pixel, G sees R, B sees R, G
    assert all(centre[a, b] != 0 for a, b in ((1, 0), (2, 0), (2, 1)))
    assert (J[:, i, j, :, i + 1:, :] == 0).all() and (J[:, i, j, :, i, j + 1:] == 0).all()


def test_sampling_gives_bits_of_the_right_shape():
    model = BernoulliPixelCNN((4, 4), channels=4, layers=1)
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 16) and ((s == 0) | (s == 1)).all()
