"""Every factory of flowlib.models: gradients reach every parameter, the state dict round-trips,
sample and log_prob have the right shapes, in float64 and float32."""

from __future__ import annotations

import pytest
import torch

import flowlib
from flowlib import models
from flowlib.testing import perturb

# name -> (factory call, event shape, context size); every factory needs at least one entry
CONFIGS = {
    "maf": (lambda: models.maf(3, layers=2, hidden=(8,)), (3,), 0),
    "maf/context": (lambda: models.maf(3, layers=2, hidden=(8,), context=2), (3,), 2),
    "iaf": (lambda: models.iaf(3, layers=2, hidden=(8, 8), permutation="random"), (3,), 0),
    "nice": (lambda: models.nice(4, layers=2, hidden=(8,)), (4,), 0),
    "realnvp": (lambda: models.realnvp(4, layers=2, hidden=(8,)), (4,), 0),
    "realnvp/image": (lambda: models.realnvp(shape=(1, 4, 4), layers=1, hidden=4), (1, 4, 4), 0),
    "glow": (lambda: models.glow(4, layers=2, hidden=(8,)), (4,), 0),
    "glow/image": (lambda: models.glow(shape=(1, 4, 4), layers=1, hidden=4), (1, 4, 4), 0),
    "nsf": (lambda: models.nsf(3, layers=2, hidden=(8,), bins=4), (3,), 0),
    "nsf/coupling": (lambda: models.nsf(3, layers=2, hidden=(8,), bins=4, kind="coupling"),
                     (3,), 0),
}


def test_every_factory_is_tested():
    covered = {name.split("/")[0] for name in CONFIGS}
    assert set(models.__all__) <= covered, set(models.__all__) - covered


def _build(name: str, dtype: torch.dtype, seed: int = 0):
    make, shape, ctx = CONFIGS[name]
    flowlib.seed(seed)
    flow = perturb(make(), 0.2, seed).to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, *shape, generator=g).to(dtype)
    c = torch.randn(5, ctx, generator=g).to(dtype) if ctx else None
    flow.log_prob(x, c)        # data-dependent initialisations (ActNorm) happen here
    return flow, x, c


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_factory(name, dtype):
    flow, x, c = _build(name, dtype)
    shape = tuple(x.shape[1:])
    # log_prob and sample: shapes, dtype, finiteness
    lp = flow.log_prob(x, c)
    assert lp.shape == (5,) and lp.dtype == dtype and torch.isfinite(lp).all()
    s = flow.sample(5, context=c)
    assert s.shape == (5, *shape) and s.dtype == dtype and torch.isfinite(s).all()
    xs, lq = flow.sample_and_log_prob(5, context=c)
    assert xs.shape == (5, *shape) and lq.shape == (5,)
    # a gradient reaches every parameter
    flow.zero_grad()
    (-flow.log_prob(x, c).mean()).backward()
    dead = [n for n, p in flow.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"
    # the state dict round-trips into a fresh model built by the same call
    other, _, _ = _build(name, dtype, seed=1)
    assert not torch.allclose(other.log_prob(x, c), lp)
    other.load_state_dict(flow.state_dict())
    with torch.no_grad():
        assert torch.allclose(other.log_prob(x, c), flow.log_prob(x, c),
                              atol=1e-10 if dtype == torch.float64 else 1e-4)
