"""The image chapters' data switch: MNIST from local IDX files on a GPU, else the 8x8 digits; and
the image cells of chapters 3 and 4, run from the notebooks on the MNIST path a GPU takes."""

import contextlib
import gzip
import io
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import flowlib
import flowlib.images
import flowlib.models
from flowlib.images import image_data, mnist_files


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_digits_without_mnist(monkeypatch):
    monkeypatch.delenv("FLOWLIB_MNIST", raising=False)
    data = image_data("cuda")
    assert data.name.startswith("digits") and data.shape == (1, 8, 8) and data.levels == 17
    assert data.train.max() <= 16 and data.features == 64


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


# ------------------------------------------- the image cells of chapters 3 and 4, on MNIST

BOOK = Path(__file__).resolve().parent.parent / "book"
# The cells' training is cut to this many steps of at most this batch (the cells ask for 4000
# steps of 256: one step of 256 28x28 images costs RealNVP about 10 s on one CPU core).
CELL_STEPS, CELL_BATCH = 2, 64


def _fake_mnist(n: int, seed: int) -> np.ndarray:
    """``n`` deterministic 28x28 uint8 "digits": soft strokes (a ring, a bar, a seven) at random
    positions, sizes and slants on a black background, like MNIST's ink on paper."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(float)
    out = np.zeros((n, 28, 28))
    for k in range(n):
        cy, cx = 14 + rng.normal(0, 1.5, 2)
        width = rng.uniform(1.0, 2.0)
        kind = k % 3
        if kind == 0:                                   # a "0": an ellipse's outline
            ry, rx = rng.uniform(7, 10), rng.uniform(4, 7)
            d = np.abs(np.hypot((yy - cy) / ry, (xx - cx) / rx) - 1) * min(ry, rx)
        elif kind == 1:                                 # a "1": a slanted bar
            slant = rng.uniform(-0.4, 0.4)
            d = np.abs((xx - cx) - slant * (yy - cy)) / math.hypot(1, slant)
            d = np.where(np.abs(yy - cy) < rng.uniform(8, 10), d, 99)
        else:                                           # a "7": a top bar and a diagonal
            top = cy - 8
            bar = np.where((xx > cx - 6) & (xx < cx + 6), np.abs(yy - top), 99)
            diag = np.abs((xx - (cx + 6)) + 0.55 * (yy - top)) / math.hypot(1, 0.55)
            diag = np.where((yy >= top) & (yy < cy + 9), diag, 99)
            d = np.minimum(bar, diag)
        out[k] = np.clip(1.5 - d / width, 0, 1)
    return np.round(255 * out).astype(np.uint8)


def _image_cell(notebook: str) -> tuple[str, int]:
    """The source and index of the one code cell of ``notebook`` that loads the image data."""
    cells = json.loads((BOOK / notebook).read_text(encoding="utf8"))["cells"]
    hits = [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(cells) if c["cell_type"] == "code"]
    hits = [(i, src) for i, src in hits if "image_data(dev)" in src]
    assert len(hits) == 1, f"{notebook}: expected one cell with image_data(dev), found {len(hits)}"
    return hits[0][1], hits[0][0]


@pytest.mark.parametrize("notebook, model", [("03_realnvp.ipynb", "realnvp"),
                                             ("04_glow.ipynb", "glow")])
def test_image_cell_on_mnist(notebook, model, tmp_path, monkeypatch, one_thread):
    """The chapter's image cell, its real source, on the path it takes on a GPU with a local
    MNIST: 28x28, 256 levels, the GPU architecture (hidden 64, one block per coupling). Only the
    training (2 steps of 64 instead of 4000 of 256) and the data (a small fake MNIST) are cut, so
    it runs on a CPU in seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", _fake_mnist(300, seed=1))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", _fake_mnist(32, seed=2))
    monkeypatch.setenv("FLOWLIB_MNIST", str(tmp_path))
    monkeypatch.setenv("FLOWLIB_DEVICE", "cpu")          # fit trains where the cell's dev is

    loaded, fits, built = [], [], []

    def mnist_on_cpu(device=None, folder=None, force_mnist=False):
        data = image_data(device, folder, force_mnist=True)
        loaded.append(data)
        return data

    real_fit = flowlib.fit

    def short_fit(flow, data, steps=1000, batch_size=256, *args, **kwargs):
        hist = real_fit(flow, data, min(steps, CELL_STEPS), min(batch_size, CELL_BATCH),
                        *args, **kwargs)
        fits.append((steps, batch_size, hist))
        return hist

    real_model = getattr(flowlib.models, model)

    def recorded_model(*args, **kwargs):
        built.append(kwargs)
        return real_model(*args, **kwargs)

    monkeypatch.setattr(flowlib.images, "image_data", mnist_on_cpu)
    monkeypatch.setattr(flowlib, "budget", lambda cpu, gpu: gpu)
    monkeypatch.setattr(flowlib, "fit", short_fit)

    # The names the chapter's earlier cells define (its import cell), with dev on the CPU.
    namespace = {"__name__": "__main__", "math": math, "np": np, "plt": plt, "torch": torch,
                 "flowlib": flowlib, "realnvp": flowlib.models.realnvp,
                 "glow": flowlib.models.glow, "dev": torch.device("cpu")}
    namespace[model] = recorded_model
    source, index = _image_cell(notebook)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"{notebook}[cell {index}]", "exec"), namespace)
    finally:
        plt.close("all")
    printed = out.getvalue()

    # The MNIST branch: 28x28 images with 256 integer levels.
    assert len(loaded) == 1
    data = loaded[0]
    assert data.name.startswith("MNIST") and data.shape == (1, 28, 28) and data.levels == 256
    assert data.train.shape == (300, 1, 28, 28) and data.test.shape == (32, 1, 28, 28)
    assert 0 <= float(data.train.min()) and float(data.train.max()) <= 255
    assert torch.equal(data.train, data.train.round())
    # The GPU architecture and budget, trained (2 of the 4000 steps): two finite losses.
    assert built == [{"shape": (1, 28, 28), "logit": 0.05, "hidden": 64, "blocks": 1}]
    assert len(fits) == 1
    requested, batch, hist = fits[0]
    assert (requested, batch) == (4000, 256)
    assert len(hist) == CELL_STEPS == 2 and all(math.isfinite(loss) for loss in hist)
    # The printed test bits/dim is a finite number.
    found = re.findall(r"(\S+) bits/dim", printed)
    assert len(found) == 1 and "MNIST" in printed, printed
    bpd = float(found[0])
    assert math.isfinite(bpd) and bpd > 0, printed
    if model == "glow":                                  # samples at T = 0.7, drawn as a grid
        s_img = namespace["s_img"]
        assert s_img.shape == (24, 1, 28, 28) and torch.isfinite(s_img).all()
