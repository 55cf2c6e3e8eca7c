"""Toy densities are normalised and agree with their samplers; digits and MNIST loading."""

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from flowlib import data
from flowlib.viz import grid2d


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toy_density_integrates_to_one(name):
    d = data.toy(name)
    pts, _, _ = grid2d(d.bounds, 700)
    cell = ((d.bounds[1] - d.bounds[0]) / 699) ** 2
    total = float(d.log_prob(pts.double()).exp().sum() * cell)
    assert abs(total - 1) < 0.01, total


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_samples_follow_the_density(name):
    """Histogram of samples against the density integrated over the same bins."""
    d = data.toy(name)
    x = d.sample(200_000, generator=torch.Generator().manual_seed(1)).double()
    assert torch.isfinite(d.log_prob(x)).all(), "a sample has zero density"
    lo, hi = d.bounds
    bins = 12
    hist = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=bins, range=[[lo, hi]] * 2)[0]
    hist /= len(x)
    sub = 30  # integrate the density on a finer grid inside each bin
    pts, _, _ = grid2d((lo + (hi - lo) / (2 * bins * sub), hi - (hi - lo) / (2 * bins * sub)), bins * sub)
    p = d.log_prob(pts.double()).exp().reshape(bins * sub, bins * sub) * ((hi - lo) / (bins * sub)) ** 2
    expected = p.reshape(bins, sub, bins, sub).sum((1, 3)).T.numpy()  # rows: x, cols: y
    assert np.abs(hist - expected).max() < 0.006


def test_entropy_estimates():
    assert data.toy("checkerboard").entropy().value == pytest.approx(math.log(8))
    e = data.toy("eight_gaussians").entropy(n=100_000)
    # 8 well-separated Gaussians: H = log 8 + log(2 pi e sigma^2)
    assert e.value == pytest.approx(math.log(8) + math.log(2 * math.pi * math.e * 0.04), abs=4 * e.stderr + 1e-3)


def test_toy_errors():
    with pytest.raises(KeyError, match="unknown toy"):
        data.toy("spiral")
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        data.toy("rings").log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="positive"):
        data.toy("rings").sample(0)


def test_digits_split_is_fixed_and_disjoint():
    xtr, ytr = data.digits("train")
    xte, yte = data.digits("test")
    xall, _ = data.digits("all")
    assert xtr.shape == (1500, 64) and xte.shape == (297, 64) and len(xall) == 1797
    assert xtr.min() == 0 and xtr.max() == 16
    assert torch.equal(data.digits("test")[0], xte)
    rows = {tuple(r.tolist()) for r in xte}
    assert sum(tuple(r.tolist()) in rows for r in xtr) < 20  # only true duplicates in the data
    with pytest.raises(ValueError):
        data.digits("valid")


def test_dequantize():
    v = torch.tensor([[0.0, 16.0, 3.0]])
    x = data.dequantize(v.expand(1000, 3))
    assert (x >= 0).all() and (x < 1).all()
    assert torch.equal(torch.floor(x * 17), v.expand(1000, 3))
    with pytest.raises(ValueError, match="0..16"):
        data.dequantize(torch.tensor([[17.0]]))


def _write_idx(path, arr, code=0x08, compress=False):
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_local_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28))
    labels = rng.integers(0, 10, size=5)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"img{suffix}", imgs, compress=compress)
    _write_idx(tmp_path / f"lab{suffix}", labels, compress=compress)
    x, y = data.load_mnist(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0].long(), torch.from_numpy(imgs))
    assert torch.equal(y, torch.from_numpy(labels))


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        data.load_mnist(tmp_path / "missing.gz")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="magic"):
        data.load_mnist(tmp_path / "junk")
    _write_idx(tmp_path / "img", np.zeros((3, 4, 4)))
    (tmp_path / "short").write_bytes((tmp_path / "img").read_bytes()[:-5])
    with pytest.raises(ValueError, match="bytes"):
        data.load_mnist(tmp_path / "short")
    _write_idx(tmp_path / "lab", np.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        data.load_mnist(tmp_path / "img", tmp_path / "lab")
