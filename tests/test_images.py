"""The image chapters' data switch: MNIST from local IDX files on a GPU, else the 8x8 digits."""

import gzip
import struct

import numpy as np
import torch

from flowlib.images import image_data, mnist_files


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_digits_without_mnist(monkeypatch):
    monkeypatch.delenv("FLOWLIB_MNIST", raising=False)
    data = image_data("cuda")
    assert data.name.startswith("digits") and data.shape == (1, 8, 8) and data.levels == 17
    assert data.train.max() <= 16 and data.dim == 64


def test_mnist_only_when_configured_and_on_a_gpu(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (3, 28, 28)))
    monkeypatch.setenv("FLOWLIB_MNIST", str(tmp_path))
    assert mnist_files() is not None
    assert image_data("cpu").name.startswith("digits")          # CPU budget: keep the digits
    data = image_data("cuda")                                     # a GPU and the files: MNIST
    assert data.name.startswith("MNIST") and data.shape == (1, 28, 28) and data.levels == 256
    assert data.train.shape == (5, 1, 28, 28) and data.test.shape == (3, 1, 28, 28)
    assert float(data.train.max()) <= 255
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()             # a missing file: not configured
    assert mnist_files() is None and image_data("cuda").name.startswith("digits")
