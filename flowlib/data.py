r"""Data the course trains on, all made here or shipped by a package (nothing is downloaded).

* 2-D toy densities that can both **sample** and give their **exact** ``log_prob``, so a flow's
  test NLL can be compared with the true entropy: the gap is :math:`\mathrm{KL}(p\,\|\,q)` in nats.
* The 8x8 digits of scikit-learn (1797 images, 17 grey levels) with uniform dequantization.
* A loader for MNIST in its IDX format from a local file (``.gz`` or raw).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Estimate", "ToyDensity", "EightGaussians", "Rings", "TwoMoons", "Checkerboard",
           "TOYS", "toy", "digits", "dequantize", "load_mnist", "DIGIT_LEVELS",
           "Waveforms", "waveforms"]

DIGIT_LEVELS = 17  # the 8x8 digits take the integer values 0..16


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its standard error."""

    value: float
    stderr: float

    def __str__(self) -> str:
        return f"{self.value:.4f} ± {self.stderr:.4f}"


def _as2d(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"{name}.log_prob: expected shape [N, 2], got {tuple(x.shape)}")
    return x


def _truncnorm_logpdf(r: Tensor, mu: float, sigma: float) -> Tensor:
    """log density of N(mu, sigma^2) truncated to r > 0 (and -inf for r <= 0)."""
    z = (r - mu) / sigma
    log_mass = math.log(0.5 * math.erfc(-mu / (sigma * math.sqrt(2))))  # P(r > 0)
    lp = -0.5 * z * z - math.log(sigma) - 0.5 * math.log(2 * math.pi) - log_mass
    return torch.where(r > 0, lp, torch.full_like(lp, -math.inf))


def _truncnorm_sample(n: int, mu: float, sigma: float, g: torch.Generator | None) -> Tensor:
    out = torch.empty(0, dtype=torch.float64)
    while len(out) < n:  # rejection: the mass below 0 is tiny for the radii used here
        r = mu + sigma * torch.randn(2 * n, dtype=torch.float64, generator=g)
        out = torch.cat([out, r[r > 0]])
    return out[:n]


class ToyDensity:
    """A 2-D density with exact ``log_prob`` and ``sample``; ``bounds`` frames its plots.

    ``log_prob`` and ``sample`` work in float64 and return tensors on the input's device/dtype
    (``sample`` returns float32 on the CPU unless told otherwise).
    """

    name: str = "toy"
    bounds: tuple[float, float] = (-4.0, 4.0)
    features: int = 2

    def _log_prob64(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _sample64(self, n: int, g: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        x = _as2d(x, type(self).__name__)
        return self._log_prob64(x.detach().to("cpu", torch.float64)).to(x.device, x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        if int(n) < 1:
            raise ValueError(f"{type(self).__name__}.sample: n must be positive, got {n}")
        return self._sample64(int(n), generator).to(dtype)

    def entropy(self, n: int = 200_000, seed: int = 12345) -> Estimate:
        r"""Monte Carlo estimate of :math:`H(p) = -\mathbb E_p[\log p(x)]` in nats."""
        g = torch.Generator().manual_seed(seed)
        lp = self._log_prob64(self._sample64(n, g))
        return Estimate(float(-lp.mean()), float(lp.std() / math.sqrt(n)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EightGaussians(ToyDensity):
    r"""An equal mixture of 8 isotropic Gaussians, std ``std``, centred on a circle of radius
    ``radius``: :math:`p(x) = \tfrac18 \sum_k \mathcal N(x; \mu_k, \sigma^2 I)`."""

    name = "eight_gaussians"

    def __init__(self, radius: float = 2.0, std: float = 0.2):
        self.radius, self.std = float(radius), float(std)
        a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        self.centers = self.radius * torch.stack([a.cos(), a.sin()], 1)
        b = self.radius + 4 * self.std + 0.5
        self.bounds = (-b, b)

    def _log_prob64(self, x: Tensor) -> Tensor:
        d2 = ((x[:, None, :] - self.centers[None]) ** 2).sum(-1)
        comp = -0.5 * d2 / self.std**2 - 2 * math.log(self.std) - math.log(2 * math.pi)
        return torch.logsumexp(comp, 1) - math.log(8)

    def _sample64(self, n: int, g: torch.Generator | None) -> Tensor:
        k = torch.randint(0, 8, (n,), generator=g)
        return self.centers[k] + self.std * torch.randn(n, 2, dtype=torch.float64, generator=g)


class Rings(ToyDensity):
    r"""Concentric rings: pick ring :math:`k` with probability :math:`w_k \propto R_k`, an angle
    uniformly, and a radius from :math:`\mathcal N(R_k, \sigma^2)` truncated to :math:`r>0`.
    In polar coordinates the area element is :math:`r\,dr\,d\theta`, so

    .. math:: p(x) = \frac{1}{2\pi r} \sum_k w_k\, \mathcal N^+(r; R_k, \sigma^2), \quad r = \|x\|.
    """

    name = "rings"

    def __init__(self, radii: tuple[float, ...] = (0.75, 1.5, 2.25, 3.0), std: float = 0.1):
        self.radii, self.std = tuple(float(r) for r in radii), float(std)
        w = torch.tensor(self.radii, dtype=torch.float64)
        self.weights = w / w.sum()
        b = max(self.radii) + 4 * self.std + 0.3
        self.bounds = (-b, b)

    def _log_prob64(self, x: Tensor) -> Tensor:
        r = x.norm(dim=1)
        comp = torch.stack([_truncnorm_logpdf(r, R, self.std) for R in self.radii], 1)
        lp_r = torch.logsumexp(comp + self.weights.log(), 1)
        return lp_r - torch.log(r) - math.log(2 * math.pi)

    def _sample64(self, n: int, g: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        r = torch.empty(n, dtype=torch.float64)
        for i, R in enumerate(self.radii):
            m = k == i
            if m.any():
                r[m] = _truncnorm_sample(int(m.sum()), R, self.std, g)
        theta = 2 * math.pi * torch.rand(n, dtype=torch.float64, generator=g)
        return torch.stack([r * theta.cos(), r * theta.sin()], 1)


class TwoMoons(ToyDensity):
    r"""Two interleaved half rings with an exact density.

    Each moon is a half ring of radius 1 around its centre :math:`c_m`: the angle is
    :math:`\theta = \theta_m + \pi u`, :math:`u \sim \mathrm{Beta}(2,2)` (so the density fades to
    zero at the tips instead of stopping at a hard edge), the radius
    :math:`r \sim \mathcal N^+(1, \sigma^2)`. With polar coordinates about :math:`c_m`,

    .. math:: p(x) = \tfrac12 \sum_{m=1}^2 \frac{\mathcal N^+(r_m; 1, \sigma^2)\,
              f_{\mathrm{Beta}(2,2)}\big((\theta_m(x) - \theta_m)/\pi\big)}{\pi\, r_m}.

    The upper moon is centred at :math:`(-0.5, -0.25)` with angles :math:`[0, \pi]`, the lower one
    at :math:`(0.5, 0.25)` with angles :math:`[\pi, 2\pi]`.
    """

    name = "two_moons"
    bounds = (-2.25, 2.25)

    def __init__(self, std: float = 0.1):
        self.std = float(std)
        self.centers = torch.tensor([[-0.5, -0.25], [0.5, 0.25]], dtype=torch.float64)
        self.start = (0.0, math.pi)

    def _log_prob64(self, x: Tensor) -> Tensor:
        comps = []
        for c, t0 in zip(self.centers, self.start):
            d = x - c
            r = d.norm(dim=1)
            theta = torch.atan2(d[:, 1], d[:, 0]) % (2 * math.pi)
            u = (theta - t0) / math.pi
            inside = (u > 0) & (u < 1)
            uc = u.clamp(1e-12, 1 - 1e-12)
            lp_u = math.log(6.0) + torch.log(uc) + torch.log1p(-uc)  # Beta(2, 2) density 6u(1-u)
            lp = _truncnorm_logpdf(r, 1.0, self.std) + lp_u - math.log(math.pi) - torch.log(r)
            comps.append(torch.where(inside, lp, torch.full_like(lp, -math.inf)))
        return torch.logsumexp(torch.stack(comps, 1), 1) - math.log(2)

    def _sample64(self, n: int, g: torch.Generator | None) -> Tensor:
        m = torch.randint(0, 2, (n,), generator=g)
        # Beta(2, 2) as the median of three uniforms.
        u = torch.rand(n, 3, dtype=torch.float64, generator=g).median(1).values
        theta = torch.tensor(self.start, dtype=torch.float64)[m] + math.pi * u
        r = _truncnorm_sample(n, 1.0, self.std, g)
        return self.centers[m] + torch.stack([r * theta.cos(), r * theta.sin()], 1)


class Checkerboard(ToyDensity):
    r"""Uniform on the 8 dark squares of a 4x4 board on :math:`[-2, 2]^2`:
    :math:`\log p = -\log 8` on the dark squares, :math:`-\infty` elsewhere; :math:`H = \log 8`."""

    name = "checkerboard"
    bounds = (-2.5, 2.5)

    def _log_prob64(self, x: Tensor) -> Tensor:
        i = torch.floor(x[:, 0] + 2)
        j = torch.floor(x[:, 1] + 2)
        inside = (x.abs() < 2).all(1) & ((i + j) % 2 == 0)
        return torch.where(inside, torch.full_like(i, -math.log(8)), torch.full_like(i, -math.inf))

    def _sample64(self, n: int, g: torch.Generator | None) -> Tensor:
        cell = torch.randint(0, 8, (n,), generator=g)
        row = cell // 2
        col = 2 * (cell % 2) + (row % 2)  # dark squares: (row + col) even
        u = torch.rand(n, 2, dtype=torch.float64, generator=g)
        return torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2


TOYS: dict[str, type[ToyDensity]] = {
    c.name: c for c in (EightGaussians, Rings, TwoMoons, Checkerboard)
}


def toy(name: str, **kwargs) -> ToyDensity:
    """A toy density by name: ``eight_gaussians``, ``rings``, ``two_moons``, ``checkerboard``."""
    if name not in TOYS:
        raise KeyError(f"unknown toy density {name!r}; choose from {sorted(TOYS)}")
    return TOYS[name](**kwargs)


# ---------------------------------------------------------------------------- digits


def digits(split: str = "train", test_size: int = 297, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The 8x8 digits of scikit-learn as integer levels ``0..16`` (float tensor ``[N, 64]``) and
    labels. The split is a fixed permutation (``seed``), the same on every machine; ``"all"``
    returns all 1797 images.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32)
    y = torch.as_tensor(d.target, dtype=torch.long)
    if split == "all":
        return x, y
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    idx = {"test": perm[:test_size], "train": perm[test_size:]}.get(split)
    if idx is None:
        raise ValueError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
    return x[idx], y[idx]


def dequantize(v: Tensor, levels: int = DIGIT_LEVELS,
               generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantization to :math:`[0, 1)`: :math:`x = (v + u)/L`, :math:`u \sim U[0,1)^D`.

    A continuous density :math:`q` on :math:`x` then lower-bounds the discrete log-likelihood:
    :math:`\log P(v) \ge \mathbb E_u[\log q((v+u)/L)] - D \log L`.
    """
    if v.min() < 0 or v.max() > levels - 1:
        raise ValueError(f"dequantize: values must lie in 0..{levels - 1}, "
                         f"got range [{float(v.min())}, {float(v.max())}]")
    u = torch.rand(v.shape, generator=generator, dtype=torch.float32).to(v.device, v.dtype)
    return (v + u) / levels


# ---------------------------------------------------------------------------- MNIST

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file. MNIST cannot be downloaded here; place the IDX files "
            "(e.g. train-images-idx3-ubyte.gz) there yourself.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {shape}, "
                         f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_mnist(images: str | os.PathLike, labels: str | os.PathLike | None = None
               ) -> tuple[Tensor, Tensor | None]:
    """Load MNIST-format images ``[N, 1, H, W]`` (levels 0..255, float32) and optional labels
    from local IDX files (``.gz`` or uncompressed)."""
    x = _read_idx(images)
    if x.ndim != 3:
        raise ValueError(f"{images}: expected a 3-D image array [N, H, W], got shape {x.shape}")
    xt = torch.from_numpy(x.astype(np.float32))[:, None]
    if labels is None:
        return xt, None
    y = _read_idx(labels)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{labels}: expected {len(x)} labels, got shape {y.shape}")
    return xt, torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------- waveforms


class Waveforms:
    r"""Short noisy "waveforms" with an exact density: a mixture of stationary Gaussian AR(2)
    processes, one per pitch.

    A window of ``features`` samples picks a period :math:`T_k` uniformly from ``periods`` and follows
    the damped resonator :math:`x_t = a_1 x_{t-1} + a_2 x_{t-2} + \varepsilon_t`,
    :math:`a_1 = 2r\cos(2\pi/T_k)`, :math:`a_2 = -r^2`, :math:`\varepsilon_t \sim
    \mathcal N(0, s_k^2)`, started in its stationary law (unit variance, lag-one correlation
    :math:`\rho_1 = a_1/(1-a_2)`): a noisy oscillation of random phase and amplitude. Each
    component is Gaussian autoregressive with exact conditionals, so

    .. math:: \log p(x) = \log \tfrac1K \sum_k \Big[\log\mathcal N(x_1; 0, 1)
              + \log\mathcal N(x_2; \rho_1 x_1, 1-\rho_1^2)
              + \sum_{t\ge3} \log\mathcal N(x_t; a_1 x_{t-1} + a_2 x_{t-2}, s_k^2)\Big]

    is exact (``log_prob``) and the entropy is a Monte Carlo estimate of :math:`-\mathbb E
    \log p` (``entropy``). Same interface as :class:`ToyDensity`.
    """

    name = "waveforms"

    def __init__(self, features: int = 64, periods: tuple[float, ...] = (16.0, 8.0, 5.0),
                 damping: float = 0.95):
        if int(features) < 2 or not periods or not 0 < damping < 1:
            raise ValueError(f"Waveforms: need features >= 2, at least one period and 0 < damping < 1, "
                             f"got {features}, {periods}, {damping}")
        self.features = int(features)
        self.periods = tuple(float(p) for p in periods)
        self.damping = float(damping)
        r = self.damping
        self.a1 = torch.tensor([2 * r * math.cos(2 * math.pi / p) for p in self.periods],
                               dtype=torch.float64)
        self.a2 = torch.full_like(self.a1, -r * r)
        self.rho1 = self.a1 / (1 - self.a2)
        # innovation variance giving a unit stationary variance
        self.s2 = (1 + self.a2) * ((1 - self.a2) ** 2 - self.a1 ** 2) / (1 - self.a2)

    def _component_log_prob(self, x: Tensor) -> Tensor:
        """``[N, K]``: the log-density of each AR(2) component."""
        a1, a2, rho1, s2 = self.a1, self.a2, self.rho1, self.s2
        c = 0.5 * math.log(2 * math.pi)
        lp = -0.5 * x[:, :1] ** 2 - c                                       # x_1 ~ N(0, 1)
        v2 = 1 - rho1 ** 2
        lp = lp - 0.5 * (x[:, 1:2] - rho1 * x[:, :1]) ** 2 / v2 - 0.5 * torch.log(v2) - c
        if self.features > 2:
            pred = a1[None, :, None] * x[:, None, 1:-1] + a2[None, :, None] * x[:, None, :-2]
            res = x[:, None, 2:] - pred                                     # [N, K, D-2]
            lp = lp + (-0.5 * res ** 2 / s2[None, :, None]
                       - 0.5 * torch.log(s2)[None, :, None] - c).sum(2)
        return lp

    def log_prob(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"Waveforms.log_prob: expected shape [N, {self.features}], "
                             f"got {tuple(x.shape)}")
        lp = self._component_log_prob(x.detach().cpu().double())
        out = torch.logsumexp(lp, 1) - math.log(len(self.periods))
        return out.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        n = int(n)
        if n < 1:
            raise ValueError(f"Waveforms.sample: n must be positive, got {n}")
        k = torch.randint(0, len(self.periods), (n,), generator=generator)
        a1, a2, rho1, s2 = self.a1[k], self.a2[k], self.rho1[k], self.s2[k]
        e = torch.randn(n, self.features, dtype=torch.float64, generator=generator)
        x = torch.empty(n, self.features, dtype=torch.float64)
        x[:, 0] = e[:, 0]
        x[:, 1] = rho1 * x[:, 0] + torch.sqrt(1 - rho1 ** 2) * e[:, 1]
        for t in range(2, self.features):
            x[:, t] = a1 * x[:, t - 1] + a2 * x[:, t - 2] + torch.sqrt(s2) * e[:, t]
        return x.to(dtype)

    def entropy(self, n: int = 100_000, seed: int = 12345) -> Estimate:
        r"""Monte Carlo :math:`H(p) = -\mathbb E_p \log p` in nats, with its standard error."""
        x = self.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
        lp = self.log_prob(x)
        return Estimate(-lp.mean().item(), (lp.std() / math.sqrt(n)).item())

    def __repr__(self) -> str:
        return f"Waveforms(features={self.features}, periods={self.periods}, damping={self.damping})"


def waveforms(n: int, features: int = 64, generator: torch.Generator | None = None) -> Tensor:
    """``n`` windows ``[n, features]`` (float32) from :class:`Waveforms` with its default pitches."""
    return Waveforms(features).sample(n, generator)
