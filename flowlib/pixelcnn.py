r"""PixelCNN: an autoregressive model of images built from masked convolutions.

The chain rule in **raster order** (row by row, left to right),
:math:`p(x) = \prod_i p(x_i \mid x_{<i})`, computed for every pixel at once by a convolutional
network whose kernels are masked so that the output at pixel :math:`i` never sees pixel
:math:`i` or any later one (van den Oord et al., 2016):

* **mask A** (first layer): a :math:`k \times k` kernel keeps the rows above the centre and the
  taps left of the centre in the centre row; the centre itself is cut, so the output at
  :math:`i` does not see :math:`x_i`;
* **mask B** (every later layer): the same plus the centre tap. A hidden feature at :math:`i`
  already summarises :math:`x_{<i}` only, so passing it on keeps the property.

**Colour.** For RGB pixels the chain rule continues *inside* a pixel,
:math:`p(x_i) = p(x_{i,R} \mid x_{<i})\, p(x_{i,G} \mid x_{<i}, x_{i,R})\,
p(x_{i,B} \mid x_{<i}, x_{i,R}, x_{i,G})`. With ``colors=3`` the input and output channels of
every layer are split into three groups (R, G, B, in that order of the channels); at the centre
tap, mask A connects input group :math:`g` to output group :math:`g'` only if :math:`g < g'`, and
mask B if :math:`g \le g'`. Off-centre taps are unchanged.

A stack of such layers has a "blind spot" (pixels up and to the right that never enter the
receptive field); the gated PixelCNN (van den Oord et al., 2016b) removes it with separate vertical
and horizontal stacks. For the 8x8 digits the plain stack suffices to show the idea.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binary import BinaryAutoregressive

__all__ = ["MaskedConv2d", "BernoulliPixelCNN", "conv_mask"]


def _groups(channels: int, colors: int) -> Tensor:
    """The colour group (0 .. colors-1) of each of ``channels`` channels: contiguous blocks."""
    if channels % colors:
        raise ValueError(f"PixelCNN: {channels} channels do not split into {colors} colour groups")
    return torch.arange(channels) * colors // channels


def conv_mask(mask_type: str, in_channels: int, out_channels: int, kernel_size: int,
              colors: int = 1) -> Tensor:
    """The 0/1 mask ``[out, in, k, k]`` of a masked convolution (module docstring)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"conv_mask: mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size % 2 != 1:
        raise ValueError(f"conv_mask: kernel_size must be odd, got {kernel_size}")
    k, c = kernel_size, kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, k, k)
    mask[:, :, :c, :] = 1          # every row above the centre
    mask[:, :, c, :c] = 1          # left of the centre in the centre row
    g_in, g_out = _groups(in_channels, colors), _groups(out_channels, colors)
    allowed = g_in[None, :] < g_out[:, None] if mask_type == "A" else g_in[None, :] <= g_out[:, None]
    mask[:, :, c, c] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    r"""A same-padded convolution whose kernel is multiplied by :func:`conv_mask` at every call:
    output at pixel :math:`i` depends on inputs at pixels :math:`< i` in raster order (and, at
    pixel :math:`i`, on earlier colour groups: mask A strictly, mask B inclusively)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str,
                 colors: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type, self.colors = mask_type, int(colors)
        self.register_buffer("mask", conv_mask(mask_type, in_channels, out_channels, kernel_size, colors))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask={self.mask_type}, colors={self.colors}"


class BernoulliPixelCNN(BinaryAutoregressive):
    r"""A PixelCNN for binary images of shape ``(H, W)`` given as flat vectors ``[B, H*W]`` in
    raster order: a :math:`7 \times 7` mask-A convolution, ``layers`` residual blocks of
    :math:`3 \times 3` mask-B convolutions with ReLU, and a :math:`1 \times 1` convolution to one
    logit per pixel. One pass gives all :math:`H W` conditionals (training and the likelihood);
    sampling takes :math:`H W` passes (inherited ancestral sampler)."""

    def __init__(self, shape: tuple[int, int] = (8, 8), channels: int = 32, layers: int = 4,
                 first_kernel: int = 7):
        h, w = map(int, shape)
        super().__init__(h * w)
        self.shape = (h, w)
        self.first = MaskedConv2d(1, channels, first_kernel, "A")
        self.blocks = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B") for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), MaskedConv2d(channels, channels, 1, "B"), nn.ReLU(),
                                  MaskedConv2d(channels, 1, 1, "B"))

    def logits(self, x: Tensor) -> Tensor:
        h = self.first(x.reshape(-1, 1, *self.shape))
        for conv in self.blocks:
            h = h + conv(F.relu(h))
        return self.head(h).reshape(len(x), -1)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
