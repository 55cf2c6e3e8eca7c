"""The nice and realnvp factories learn: short trainings on a 2-D density with exact log_prob.

The figure is the KL gap (test NLL minus the true entropy, in nats); the budgets here are a
fraction of the book's, so the bounds are loose but far below an untrained flow's gap.
"""

import pytest
import torch

import flowlib
from flowlib.metrics import kl_to_truth
from flowlib.models import nice, realnvp


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small models: every test of this file runs on one thread (see conftest.one_thread)."""


def _fit(flow, name, steps):
    density = flowlib.data.toy(name)
    before = kl_to_truth(flow, density, n=5000).value
    flowlib.fit(flow, density, steps=steps, batch_size=256, lr=5e-3, dev="cpu")
    return before, kl_to_truth(flow, density, n=10_000).value


def test_realnvp_learns_two_moons():
    before, after = _fit(realnvp(2, layers=6), "two_moons", 300)
    assert before > 1.0 and after < 0.2, (before, after)


def test_nice_needs_its_rescale_to_learn_two_moons():
    _, with_scale = _fit(nice(2, layers=4), "two_moons", 300)
    flowlib.seed(0)
    _, volume_preserving = _fit(nice(2, layers=4, rescale=False), "two_moons", 300)
    assert with_scale < 0.45, with_scale
    # unit determinant everywhere: the flow cannot shrink the base to the moons' small area
    assert volume_preserving > with_scale + 0.5, (with_scale, volume_preserving)
