r"""The image data of the image chapters: 28x28 MNIST on a GPU when a local copy is configured,
the 8x8 digits otherwise.

MNIST cannot be downloaded here, so it is used only when the environment variable
``FLOWLIB_MNIST`` names a folder holding the four IDX files of the original distribution
(``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``, with or without ``.gz``; the label
files are optional) **and** the device is a GPU: on a CPU the chapters' budget is far too small
for 784-dimensional images, and they keep the 8x8 digits. Pixels are integer levels
:math:`0 \dots L-1` (:math:`L = 256` for MNIST, 17 for the digits), dequantized as
:math:`x = (v + u)/L`, so bits per dimension are :math:`(\text{NLL}_x + D \log L)/(D \log 2)`
for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .data import DIGIT_LEVELS, digits, load_mnist

__all__ = ["ImageData", "image_data", "mnist_files"]


@dataclass
class ImageData:
    """Integer-level images ``train``/``test`` ``[N, 1, H, W]`` with ``levels`` levels."""

    name: str
    train: Tensor
    test: Tensor
    levels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])

    @property
    def features(self) -> int:
        return int(self.train[0].numel())


def mnist_files(folder: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """``(train images, test images)`` in ``folder`` (default: ``$FLOWLIB_MNIST``), or ``None``
    when it is not configured or a file is missing."""
    folder = folder if folder is not None else os.environ.get("FLOWLIB_MNIST")
    if not folder:
        return None
    found = []
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        paths = [Path(folder) / stem, Path(folder) / f"{stem}.gz"]
        hit = next((p for p in paths if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def image_data(device: torch.device | str | None = None, folder: str | os.PathLike | None = None,
               force_mnist: bool = False) -> ImageData:
    """MNIST (28x28, 256 levels) when :func:`mnist_files` finds it and ``device`` is CUDA (or
    ``force_mnist``), else the 8x8 digits (17 levels) as ``[N, 1, 8, 8]``."""
    files = mnist_files(folder)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if files is not None and (on_gpu or force_mnist):
        train, _ = load_mnist(files[0])
        test, _ = load_mnist(files[1])
        return ImageData("MNIST 28x28", train, test, 256)
    train, _ = digits("train")
    test, _ = digits("test")
    return ImageData("digits 8x8", train.reshape(-1, 1, 8, 8), test.reshape(-1, 1, 8, 8), DIGIT_LEVELS)
