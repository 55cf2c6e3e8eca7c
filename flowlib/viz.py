"""Figures the chapters share: density heat maps, samples, image grids and training curves."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["grid2d", "plot_density", "plot_samples", "compare_densities", "image_grid",
           "plot_history"]


def _plt():
    import matplotlib.pyplot as plt  # imported late so that importing flowlib stays light

    return plt


def _square_panel(ax, title: str | None):
    """Equal axes without ticks: a 2-D density panel."""
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def grid2d(bounds: tuple[float, float], n: int = 200) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """An ``n x n`` grid over ``bounds`` as points ``[n*n, 2]`` plus the mesh for plotting."""
    t = np.linspace(bounds[0], bounds[1], n)
    xx, yy = np.meshgrid(t, t)
    pts = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)
    return pts, xx, yy


@torch.no_grad()
def plot_density(log_prob: Callable[[Tensor], Tensor], bounds: tuple[float, float] = (-4, 4),
                 n: int = 200, ax=None, title: str | None = None, cmap: str = "viridis"):
    """Heat map of ``exp(log_prob)`` on a grid. ``log_prob`` is a density's or a flow's
    ``log_prob`` (for a flow on a GPU, pass ``lambda x: flow.log_prob(x.to(dev)).cpu()``)."""
    plt = _plt()
    ax = ax or plt.gca()
    pts, xx, yy = grid2d(bounds, n)
    lp = torch.cat([log_prob(p).float().cpu() for p in pts.split(20_000)])
    dens = torch.exp(lp).nan_to_num(0.0).reshape(n, n).numpy()
    ax.pcolormesh(xx, yy, dens, cmap=cmap, shading="auto")
    return _square_panel(ax, title)


def plot_samples(x: Tensor, bounds: tuple[float, float] = (-4, 4), ax=None,
                 title: str | None = None, bins: int = 200, cmap: str = "viridis"):
    """2-D histogram of samples ``[N, 2]`` (better than a scatter for many points)."""
    plt = _plt()
    ax = ax or plt.gca()
    x = x.detach().float().cpu().numpy()
    ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[bounds, bounds], cmap=cmap)
    return _square_panel(ax, title)


def compare_densities(density, flow, n_samples: int = 20_000, n: int = 200, title: str = "",
                      dev: torch.device | None = None):
    """Three panels: the true density, the flow's density and the flow's samples."""
    plt = _plt()
    dev = dev or next(flow.parameters()).device
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    b = density.bounds
    plot_density(density.log_prob, b, n, axes[0], "true density")
    was_training = flow.training
    flow.eval()
    plot_density(lambda p: flow.log_prob(p.to(dev)).cpu(), b, n, axes[1], "flow density")
    with torch.no_grad():
        plot_samples(flow.sample(n_samples).cpu(), b, axes[2], "flow samples")
    flow.train(was_training)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid(x: Tensor, shape: Sequence[int] = (8, 8), nrow: int = 10, ax=None,
               title: str | None = None, vmin: float = 0.0, vmax: float = 1.0):
    """Tile images (``[N, H*W]``, ``[N, H, W]`` or ``[N, 1, H, W]``) into one grey picture."""
    plt = _plt()
    ax = ax or plt.gca()
    x = x.detach().float().cpu().reshape(-1, *shape).numpy()
    n, (h, w) = len(x), shape
    ncol = int(np.ceil(n / nrow))
    canvas = np.full((ncol * (h + 1) - 1, nrow * (w + 1) - 1), np.nan)
    for k, img in enumerate(x):
        r, c = divmod(k, nrow)
        canvas[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = img
    ax.imshow(np.clip(canvas, vmin, vmax), cmap="gray_r", vmin=vmin, vmax=vmax,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_history(*histories, labels: Sequence[str] | None = None, ax=None, smooth: int = 50,
                 reference: float | None = None, ylabel: str = "NLL (nats)"):
    """Training curves (moving average over ``smooth`` steps) and, if given, a reference line
    such as the true entropy."""
    plt = _plt()
    ax = ax or plt.gca()
    labels = labels or [None] * len(histories)
    for h, label in zip(histories, labels):
        y = np.asarray(list(h), dtype=float)
        k = max(1, min(smooth, len(y) // 5 or 1))
        ys = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(ys)) + k, ys, label=label)
        if getattr(h, "val_loss", None):
            ax.plot(h.val_steps, h.val_loss, "o--", ms=3, label=f"{label} (test)" if label else "test")
    if reference is not None:
        ax.axhline(reference, color="k", ls=":", label="true entropy")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if any(labels) or reference is not None:
        ax.legend()
    return ax
