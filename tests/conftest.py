"""Shared test settings: quiet progress bars, a fixed seed per test, float64 where asked."""

import os

import pytest
import torch

os.environ.setdefault("FLOWLIB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    import flowlib

    flowlib.seed(0)
    yield
