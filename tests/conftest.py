"""Shared test settings: quiet progress bars, a fixed seed per test, float64 where asked."""

import os

import pytest
import torch

os.environ.setdefault("FLOWLIB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def one_thread():
    """One torch thread for the test. Small networks gain nothing from a second thread, and two
    pytest workers with two threads each on two cores make OpenMP spin (steps 5-20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    import flowlib

    flowlib.seed(0)
    yield
