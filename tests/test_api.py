"""flowlib's API keeps one name per idea and its modules talk through public names only.

* The size of a vector event is ``features`` everywhere (factories, layers, data, metrics): in
  PyTorch ``dim`` names an *axis* (``x.sum(dim=1)``), so ``maf(dim=64)`` would read as one.
* No flowlib module imports another's private (underscore) name: extension points are public.
* The deprecated spellings (``couplings=``, ``steps=`` for a layer count) still work but warn.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path

import pytest
import torch

import flowlib

PACKAGE = Path(flowlib.__file__).parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]))


def _public_callables():
    for name in MODULES:
        module = importlib.import_module(f"flowlib.{name}")
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"flowlib.{name}.{attr}", obj


def test_every_module_is_checked():
    assert {"models", "autoregressive", "coupling", "residual", "continuous", "data"} <= set(MODULES)
    assert len(dict(_public_callables())) > 60


@pytest.mark.parametrize("name,obj", sorted(dict(_public_callables()).items()))
def test_event_size_is_called_features(name, obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        pytest.skip("no signature")
    assert "dim" not in params, f"{name} names an event size 'dim'; flowlib calls it 'features'"
    for word in ("input_dim", "in_dim", "size", "latent_size", "num_features"):
        assert word not in params, f"{name} has {word!r}; flowlib calls an event size 'features'"


def test_the_size_properties_use_the_same_word():
    assert flowlib.StandardNormal((1, 8, 8)).features == 64
    assert flowlib.models.maf(3).base.features == 3
    assert flowlib.data.Waveforms(12).features == 12


@pytest.mark.parametrize("module", MODULES)
def test_no_private_name_crosses_a_module(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            for alias in node.names:
                assert not alias.name.startswith("_"), (
                    f"flowlib/{module}.py imports the private name {alias.name} from "
                    f".{node.module}: make it public or keep it in its module")


@pytest.mark.parametrize("factory,old", [("nice", "couplings"), ("realnvp", "couplings"),
                                         ("glow", "steps")])
def test_former_layer_count_names_warn_and_still_work(factory, old):
    make = getattr(flowlib.models, factory)
    with pytest.warns(DeprecationWarning, match="layers="):
        flow = make(4, **{old: 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = make(4, layers=2)
    assert sum(p.numel() for p in flow.parameters()) == sum(p.numel() for p in same.parameters())
    with pytest.raises(TypeError, match="layers= only"):
        make(4, layers=2, **{old: 2})


@pytest.mark.parametrize("factory", flowlib.models.__all__)
def test_no_factory_resets_the_global_random_generator(factory):
    """Building a model draws its initial weights from the global generator (so that
    ``flowlib.seed`` makes a notebook reproducible) but never re-seeds it: after two different
    seeds the next draws still differ."""
    make = getattr(flowlib.models, factory)
    after = []
    for s in (1, 2):
        torch.manual_seed(s)
        make(4)
        after.append(torch.rand(4))
    assert not torch.equal(*after), f"flowlib.models.{factory} re-seeds the global generator"


def test_manual_seed_only_in_seed_or_a_forked_generator():
    """``torch.manual_seed`` appears in flowlib only in ``flowlib.seed`` or inside
    ``torch.random.fork_rng`` (whose state is restored on exit)."""
    for module in MODULES:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf8"))
        forked: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and "fork_rng" in ast.unparse(node.items[0].context_expr):
                forked |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (module, node.name) == ("train", "seed"):
                forked |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("manual_seed")
                    and not ast.unparse(node.func).startswith("torch.Generator")):
                assert id(node) in forked, f"flowlib/{module}.py:{node.lineno} seeds the global generator"
