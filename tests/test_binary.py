"""FVSBN, NADE and the Bernoulli MADE: normalised, autoregressive, exact ancestral sampling."""

from __future__ import annotations

import itertools

import pytest
import torch

import flowlib
from flowlib.binary import (FVSBN, NADE, BernoulliLSTM, BernoulliMADE, BinaryAutoregressive,
                            binarize)
from flowlib.testing import perturb

D = 4


def _models(d=D):
    g = torch.Generator().manual_seed(0)
    return {
        "FVSBN": perturb(FVSBN(d), 1.0).double(),
        "NADE": perturb(NADE(d, hidden=5, generator=g), 1.0).double(),
        # tanh: no dead ReLU units, so every allowed dependency shows at every point
        "MADE": perturb(BernoulliMADE(d, (7, 7), activation="tanh", generator=g), 1.0).double(),
        "MADE-reversed": perturb(BernoulliMADE(d, (7,), order="reversed", activation="tanh"),
                                 1.0).double(),
        "LSTM": perturb(BernoulliLSTM(d, hidden=6), 0.5).double(),
    }


def _all_bits(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)


@pytest.mark.parametrize("name", list(_models()))
def test_normalised(name):
    model = _models()[name]
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(_all_bits(D)), 0)
    assert abs(float(total)) < 1e-10, f"{name}: probabilities of all 2^D vectors sum to e^{total}"


@pytest.mark.parametrize("name", list(_models()))
def test_conditionals_are_autoregressive(name):
    model = _models()[name]
    order = model.made.order if hasattr(model, "made") else torch.arange(D)
    x = _all_bits(D)
    p = model.conditionals(x)
    for j in range(D):
        flipped = x.clone()
        flipped[:, j] = 1 - flipped[:, j]
        changed = (model.conditionals(flipped) - p).abs().amax(0)           # [D]
        later = order > order[j]
        assert (changed[~later] == 0).all(), f"{name}: a conditional depends on a later bit {j}"
        assert (changed[later] > 0).all(), f"{name}: a conditional ignores an earlier bit {j}"


@pytest.mark.parametrize("name", list(_models()))
def test_sampling_matches_probabilities(name):
    model = _models()[name]
    n = 40_000
    x = model.sample(n, generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, D) and ((x == 0) | (x == 1)).all()
    codes = (x * 2 ** torch.arange(D - 1, -1, -1, dtype=x.dtype)).sum(1).long()
    freq = torch.bincount(codes, minlength=2 ** D).double() / n
    p = model.log_prob(_all_bits(D)).exp()
    # 5 binomial standard errors per cell
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all()


@pytest.mark.parametrize("cls", [FVSBN, NADE, BernoulliLSTM])
def test_fast_sampler_equals_generic(cls):
    """The specialised samplers (weight tying for NADE) draw exactly what the generic ancestral
    sampler draws from the same random numbers."""
    model = perturb(cls(6), 1.0).double()
    a = model.sample(200, generator=torch.Generator().manual_seed(5))
    b = BinaryAutoregressive.sample(model, 200, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_nade_weight_tying_equals_explicit_loop():
    model = perturb(NADE(5, hidden=3), 1.0).double()
    x = _all_bits(5)
    logits = model.logits(x)
    for i in range(5):
        h = torch.sigmoid(model.c + x[:, :i] @ model.W[:, :i].T)
        assert torch.allclose(logits[:, i], model.b[i] + h @ model.V[i])


def test_fvsbn_is_logistic_regression_on_the_past():
    model = perturb(FVSBN(5), 1.0).double()
    x = _all_bits(5)
    logits = model.logits(x)
    for i in range(5):
        assert torch.allclose(logits[:, i], model.bias[i] + x[:, :i] @ model.weight[i, :i])


def test_errors_and_binarize():
    v = torch.tensor([[0.0, 7.0, 8.0, 16.0]])
    assert binarize(v).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    model = NADE(4)
    with pytest.raises(ValueError, match="0/1"):
        model.log_prob(v)
    with pytest.raises(ValueError, match="expected binary data"):
        model.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="positive"):
        model.sample(0)
    with pytest.raises(ValueError, match="positive"):
        FVSBN(0)


@pytest.mark.parametrize("cls", [FVSBN, NADE, BernoulliMADE, BernoulliLSTM])
def test_training_with_fit_improves_likelihood(cls):
    flowlib.seed(0)
    x, _ = flowlib.data.digits("train")
    x = binarize(x)[:400]
    model = cls(64, hidden=16) if cls is BernoulliLSTM else cls(64)   # an LSTM step is dear
    with torch.no_grad():
        before = -float(model.log_prob(x).mean())
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flowlib.fit(model, x, steps=40, batch_size=100, lr=1e-2, progress=False,
                    dev=torch.device("cpu"))
    finally:
        torch.set_num_threads(n)
    with torch.no_grad():
        after = -float(model.log_prob(x).mean())
    assert after < before - 5, f"{cls.__name__}: NLL {before:.1f} -> {after:.1f}"
