"""The trust boundary piece by piece: the wire's strict decoder, and the harness against a real
sandboxed kernel (proxies, callbacks, autograd checked by finite differences, the policy on
harness objects, time limits, the sandbox's view of the machine)."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from flowgrade.harness import GradientMismatch, Harness
from flowgrade.rpc import RemoteError
from flowgrade.wire import Decoder, Encoder, Limits, Ref, WireError, read_frame, write_frame

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the wire

def _roundtrip(value):
    refs = []
    enc = Encoder(lambda obj: refs.append(obj) or Ref("h", len(refs), "object"))
    tree = enc.encode(value)
    r, w = os.pipe()
    write_frame(w, {"v": tree}, enc.buffers)
    header, buffers = read_frame(r)
    os.close(r), os.close(w)
    return Decoder(buffers, lambda ref: ("ref", ref.id)).decode(header["v"]), refs


def test_plain_data_crosses_exactly():
    value = {"t": torch.randn(3, 4, dtype=torch.float64), "i": torch.arange(5),
             "b": torch.tensor([True, False]), "h": torch.randn(2).half(),
             "a": np.arange(6.0).reshape(2, 3), "s": "text", "y": b"\x00\xff",
             "n": [1, 2.5, None, True, (3, "x")], "z": torch.Size([2, 3]),
             "d": torch.float32, "sl": slice(1, None, 2), "c": 1 + 2j, "e": ...}
    back, refs = _roundtrip(value)
    assert not refs
    for key in ("t", "i", "b", "h"):
        assert torch.equal(back[key], value[key]) and back[key].dtype == value[key].dtype
    assert np.array_equal(back["a"], value["a"])
    assert {k: back[k] for k in ("s", "y", "n", "z", "d", "sl", "c", "e")} == \
        {k: value[k] for k in ("s", "y", "n", "z", "d", "sl", "c", "e")}


def test_anything_else_travels_as_a_reference():
    fn = lambda x: x  # noqa: E731
    back, refs = _roundtrip([fn, object])
    assert refs == [fn, object] and back == [("ref", 1), ("ref", 2)]


@pytest.mark.parametrize("tree, buffers", [
    (["pickle", "x"], []),
    (["T", {"dtype": "object", "shape": [1], "buf": 0}], [b"\0" * 8]),
    (["T", {"dtype": "float64", "shape": [2], "buf": 0}], [b"\0" * 8]),   # buffer too short
    (["T", {"dtype": "float64", "shape": [-1], "buf": 0}], [b""]),
    (["T", {"dtype": "float64", "shape": [1], "buf": 3}], [b"\0" * 8]),   # no such buffer
    (["N", {"dtype": "O", "shape": [1], "buf": 0}], [b"\0" * 8]),
    (["d", [[["l", []], ["n"]]]], []),                                   # unhashable key
    (["R", "x", 1, "object", ""], []),
    (["R", "h", 1, "object", "not a name!"], []),
    (["f", "1" * 100], []),
    ("not a list", []),
])
def test_the_decoder_refuses_malformed_values(tree, buffers):
    with pytest.raises(WireError):
        Decoder(buffers, lambda ref: None).decode(tree)


def test_the_decoder_bounds_depth_and_size():
    deep = ["n"]
    for _ in range(100):
        deep = ["l", [deep]]
    with pytest.raises(WireError):
        Decoder([], lambda ref: None).decode(deep)
    r, w = os.pipe()
    os.write(w, struct.pack("<I", 2**30))
    with pytest.raises(WireError):
        read_frame(r, Limits())
    os.close(r), os.close(w)
    r, w = os.pipe()
    data = json.dumps({"buffers": [2**40]}).encode()
    os.write(w, struct.pack("<I", len(data)) + data)
    with pytest.raises(WireError):
        read_frame(r)
    os.close(r), os.close(w)


# ----------------------------------------------------------------------------- the harness

@pytest.fixture(scope="module")
def harness():
    h = Harness(cell_timeout=60)
    h.run_instructor_cell("import torch\ntorch.set_default_dtype(torch.float64)")
    out = h.run_student_cell('''
import torch
def double(x):
    return 2 * x
def detached(x):
    return 2 * x.detach()
def via_item(x):
    return torch.tensor([2 * v.item() for v in x])
def through(x, h):
    return 2 * h(x)
def train_step(model):
    loss = model(torch.ones(3, 2)).sum()
    loss.backward()
    return loss.item()
def freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
def poke(model, what):
    return getattr(model, what)
def draw():
    return torch.randn(4)
def spin():
    while True:
        pass
class Box:
    def __init__(self, v):
        self.v = v
    def get(self):
        return self.v
''')
    assert out["ok"], out
    yield h
    h.close()


def test_a_call_sends_and_returns_plain_data(harness):
    x = torch.randn(5)
    assert torch.equal(harness.ns["double"](x), 2 * x)
    box = harness.ns["Box"](torch.arange(3))
    assert torch.equal(box.get(), torch.arange(3)) and torch.equal(box.v, torch.arange(3))


def test_autograd_through_the_students_function_is_checked(harness):
    x = torch.randn(4)
    J = torch.autograd.functional.jacobian(harness.ns["double"], x)
    assert torch.allclose(J, 2 * torch.eye(4))
    for cut in ("detached", "via_item"):
        with pytest.raises((GradientMismatch, RuntimeError)):
            torch.autograd.functional.jacobian(harness.ns[cut], x, strict=True)
        x2 = x.clone().requires_grad_(True)
        y = harness.ns[cut](x2)
        if y.requires_grad:  # detached: the kernel reports zero, finite differences disagree
            with pytest.raises(GradientMismatch):
                y.sum().backward()


def test_gradients_flow_through_the_tests_callbacks(harness):
    x = torch.randn(6)
    J = torch.autograd.functional.jacobian(lambda v: harness.ns["through"](v, torch.sin), x)
    assert torch.allclose(J, torch.diag(2 * torch.cos(x)), atol=1e-10)


def test_a_students_backward_reaches_the_harness_parameters(harness):
    model = torch.nn.Linear(2, 1)
    loss = harness.ns["train_step"](model)
    assert isinstance(loss, float)
    assert torch.allclose(model.weight.grad, torch.full((1, 2), 3.0))
    assert torch.allclose(model.bias.grad, torch.full((1,), 3.0))
    harness.ns["freeze"](model)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("what", ["register_forward_hook", "apply", "load_state_dict",
                                  "_parameters", "__dict__", "to"])
def test_the_students_code_cannot_reach_harness_machinery(harness, what):
    with pytest.raises(RemoteError):
        harness.ns["poke"](torch.nn.Linear(2, 1), what)


def test_the_kernel_draws_what_one_process_would(harness):
    torch.manual_seed(3)
    a = harness.ns["draw"]()
    torch.manual_seed(3)
    assert torch.equal(a, torch.randn(4))


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_the_sandbox_sees_nothing_of_the_course():
    h = Harness(cell_timeout=60)
    try:
        out = h.run_student_cell(
            f"import os\nprint(os.getuid(), len(os.listdir('/proc')) < 80,"
            f" os.path.exists({str(REPO / 'solutions')!r}),"
            f" os.path.exists({str(REPO / 'nbgrader_config.py')!r}))")
        uid, few, solutions, config = out["stdout"].split()
        assert int(uid) != 0 and few == "True" and solutions == config == "False"
    finally:
        h.close()


def test_past_the_time_limit_the_kernel_restarts_with_the_cells_replayed():
    h = Harness(cell_timeout=3)
    try:
        h.run_student_cell("def spin():\n    while True:\n        pass\nanswer = 42")
        result = h.run_test_cell("spin()", "loop")
        assert not result.ok and result.error == "TimeoutError"
        assert h.run_test_cell("assert answer == 42", "later").ok
        assert not h.run_student_cell("spin()")["ok"]      # a cell that loops: dropped
        assert h.run_test_cell("assert answer == 42", "again").ok and h.restarts == 2
        for _ in range(3):
            h.run_test_cell("spin()", "loop")
        assert h.dead and not h.run_test_cell("assert True", "last").ok   # at most 3 restarts
    finally:
        h.close()


# ----------------------------------------------------------------------------- red-team cases

@pytest.fixture(scope="module")
def course_harness():
    h = Harness(cell_timeout=60, student_names={"chain", "square", "probe", "draw"})
    h.run_instructor_cell('''import torch
torch.set_default_dtype(torch.float64)
class Affine:
    def __init__(self, a):
        self.a = a
    def _scale(self):
        return self.a
    def forward(self, z):
        return self.a * z
''')
    out = h.run_student_cell('''
import torch
abs = lambda v: 0.0          # shadowing builtins must not reach the tests
range = lambda *a: []
kl_helper = lambda: 0.0      # not a name the assignment asks for
def chain(z, layers):
    for layer in layers:
        assert isinstance(layer, Affine), type(layer)
        z = layer.forward(z) * layer._scale() / layer.a
    return z
class _Forge(torch.autograd.Function):
    calls = 0
    @staticmethod
    def forward(ctx, x):
        _Forge.calls += 1
        if _Forge.calls > 1:      # every call after the first: poison finite differences
            return x * float("nan")
        return torch.zeros_like(x)
    @staticmethod
    def backward(ctx, g):
        return 2 * g
def square(x):
    return _Forge.apply(x)
def probe(fn):
    try:
        fn("not a tensor")
    except Exception as exc:
        return str(exc)
def draw():
    return torch.rand(3)
''')
    assert out["ok"], out
    yield h
    h.close()


def test_student_cells_cannot_shadow_what_the_tests_use(course_harness):
    r = course_harness.run_test_cell("assert abs(-2) == 2 and list(range(2)) == [0, 1]\n"
                                     "assert 'kl_helper' not in globals()", "builtins")
    assert r.ok, r


def test_a_test_helper_cannot_be_replaced_by_a_later_student_cell(course_harness):
    assert course_harness.run_test_cell("def check():\n    return 1", "define").ok
    course_harness.student_names.add("check")
    course_harness.run_student_cell("def check():\n    return 0")
    assert course_harness.run_test_cell("assert check() == 1", "use").ok


def test_course_classes_behave_as_in_one_process(course_harness):
    r = course_harness.run_test_cell(
        "z = torch.ones(3)\nassert torch.equal(chain(z, [Affine(2.0), Affine(3.0)]), 6 * z)",
        "isinstance")
    assert r.ok, r


def test_poisoned_finite_differences_fail_the_gradient(course_harness):
    r = course_harness.run_test_cell(
        "x = torch.randn(3, requires_grad=True)\nsquare(x).sum().backward()", "forge")
    assert not r.ok and r.error == "GradientMismatch", r


def test_harness_errors_reach_the_kernel_without_their_text(course_harness):
    r = course_harness.run_test_cell(
        "secret = torch.tensor([1.0])\n"
        "msg = probe(lambda v: torch.asinh(v) + secret)\n"
        "assert 'asinh' not in msg and 'secret' not in msg, msg", "leak")
    assert r.ok, r


def test_randomness_moves_on_between_calls(course_harness):
    r = course_harness.run_test_cell(
        "torch.manual_seed(0)\na, b = draw(), draw()\nassert not torch.equal(a, b)\n"
        "torch.manual_seed(0)\nassert torch.equal(draw(), a)", "rng")
    assert r.ok, r


def test_a_time_out_costs_one_test_only():
    h = Harness(cell_timeout=20, student_names={"slow", "fast"})
    try:
        h.run_instructor_cell("import torch")
        h.run_student_cell("def fast(x):\n    return x + 1\n"
                           "def slow(n):\n    while True:\n        pass")
        r = h.run_test_cell("from flowgrade.probes import time_limit\n"
                            "with time_limit(1):\n    slow(3)", "limited")
        assert not r.ok and r.error == "TimeoutError"
        later = h.run_test_cell("assert fast(torch.ones(1)).item() == 2", "after")
        assert later.ok and h.restarts == 1, later
    finally:
        h.close()


def test_time_limit_works_without_a_harness():
    from flowgrade.probes import time_limit

    with pytest.raises(TimeoutError):
        with time_limit(0.2):
            while True:
                pass
    with time_limit(5):
        assert sum(range(10)) == 45
