"""The trusted harness: runs every test cell in the grader's own process, with the student's
definitions as proxies to the sandboxed kernel.

Verdicts come from here only. A test calls ``student_fn(x)``: the arguments are encoded as plain
data (a function or object of the test travels as a reference the student's code can call back),
the student's code runs in the kernel, and plain data comes back. What the student's code can do
to harness objects is limited by :meth:`HarnessEndpoint.allow`: call what it was handed, read
public data attributes, iterate, and set ``requires_grad`` of a parameter it was handed
(freezing a teacher); never reach ``_private`` or ``__dunder__`` attributes, modules, or the
module-level machinery of ``torch.nn.Module`` (hooks, ``apply``, ``load_state_dict``...).

**Autograd across the boundary.** When a test differentiates through a student's function (an
autograd Jacobian, ``loss.backward()``), the call's outputs are produced by :class:`RemoteCall`,
whose backward asks the kernel for the vector-Jacobian product ``v^T J`` and *checks it* against
central finite differences of value calls along a random direction ``u`` the kernel never sees:

    v^T (f(x + eps u) - f(x - eps u)) / (2 eps)  ~=  (J^T v) . u

A detached or forged gradient fails that check, and the test fails with a clear message.
Gradients with respect to values a test's callbacks produced (a teacher's log-density of the
student's samples, the parameters of a student flow the test holds) flow back into the harness's
own graph, where the test checks them against values it computes itself.

Global randomness: before each call the kernel's CPU generator is set to the harness's state, so
``torch.manual_seed(s); student_fn()`` draws what it would draw in one process. The kernel's
state never flows back: the student cannot choose the harness's next random test inputs.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import itertools
import math
import os
import time
import types
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch

from .rpc import LRU, AccessDenied, Endpoint, RemoteError, replace_tensors
from .sandbox import Kernel, SandboxLimits, connect_zygote, start_kernel
from .wire import Limits, WireError, read_frame

__all__ = ["Harness", "HarnessEndpoint", "RemoteCall", "TestResult", "GradientMismatch"]

# torch.nn.Module's own methods a student's code may use on a module the test handed over: the
# ones that only read. Hooks, apply, load_state_dict, to(), register_* ... stay out of reach.
_MODULE_READERS = {"parameters", "named_parameters", "buffers", "named_buffers", "children",
                   "named_children", "modules", "named_modules", "state_dict", "forward",
                   "training", "extra_repr"}


def _course_class(obj: Any) -> bool:
    """An instance of a class the course's own cells define (run as ``__main__``): its single
    underscore helpers are part of what the assignment hands the student."""
    return not isinstance(obj, type) and type(obj).__module__ == "__main__"


class GradientMismatch(AssertionError):
    """The gradient the student's code reported disagrees with finite differences."""


@dataclass
class _Frame:
    """One request of the harness: what it sent and got that autograd needs."""
    op: str
    serve_depth: int
    n: int | None = None
    imports: list = field(default_factory=list)     # (import id, harness tensor, explicit)
    outputs: list = field(default_factory=list)     # tensors decoded from the reply


class HarnessEndpoint(Endpoint):
    side = "h"

    def __init__(self, rfd: int, wfd: int):
        # what one reply from the kernel may carry (the grader's memory is bounded too)
        super().__init__(rfd, wfd, Limits(payload_bytes=256 * 2**20))
        self.grad_exports = LRU(100_000)   # import id -> harness tensor sent with grad
        self.callbacks = LRU(100_000)      # callback id -> leaves made of the kernel's tensors
        self._imp_ids = itertools.count(1)
        self._cb_ids = itertools.count(1)
        self._frames: list[_Frame] = []
        self._serving: list[dict] = []
        self._decoding: str = ""
        self.generator = torch.Generator().manual_seed(20261201)  # finite-difference directions

    # ------------------------------------------------------------------ policy
    def class_name(self, obj: Any) -> str:
        # an instance of a course class (Affine, ...): the kernel's proxy answers isinstance
        # with the kernel's class of that name, defined by the same read-only cell
        return type(obj).__qualname__ if _course_class(obj) and \
            type(obj).__qualname__.isidentifier() else ""

    def allow(self, op: str, obj: Any, name: str | None = None) -> None:
        if op == "call":
            if not callable(obj):
                raise AccessDenied("not callable")
            return
        if op == "op":
            return
        if op == "getattr":
            if name is None or name.startswith("__") or (
                    name.startswith("_") and not _course_class(obj)):
                raise AccessDenied("private attribute")
            if isinstance(obj, (types.ModuleType, torch.Tensor)):
                raise AccessDenied("attributes of this object are not shared")
            if isinstance(obj, torch.nn.Module) and name not in _MODULE_READERS:
                for klass in type(obj).__mro__:
                    if name in vars(klass):
                        if klass is torch.nn.Module:
                            raise AccessDenied(f"{name} of a module is not shared")
                        break
            return
        raise AccessDenied(f"{op} is not allowed on the grader's objects")

    # ------------------------------------------------------------------ autograd link
    def on_request(self, n: int, op: str) -> None:
        frame = self._frames[-1] if self._frames else None
        if frame is not None and frame.n is None:
            frame.n = n

    def request(self, op: str, *args: Any) -> Any:
        frame = _Frame(op, len(self._serving))
        self._frames.append(frame)
        try:
            result = super().request(op, *args)
        finally:
            self._frames.pop()
        self._last_frame = frame
        return result

    def tensor_meta(self, t: torch.Tensor) -> dict:
        meta: dict = {}
        if isinstance(t, torch.nn.Parameter):
            meta["param"] = self.export(t).id
            meta["rg"] = t.requires_grad
        if t.requires_grad and t.is_floating_point() and torch.is_grad_enabled():
            imp = next(self._imp_ids)
            self.grad_exports.put(imp, t)
            meta["imp"] = imp
            if self._serving:
                meta["cb"] = self._serving[-1]["cb"]
                self._serving[-1]["imports"].add(imp)
            if self._frames:
                frame = self._frames[-1]
                frame.imports.append((imp, t, len(self._serving) == frame.serve_depth))
        return meta

    def decode(self, tree: Any, buffers: list[bytes], context: str) -> Any:
        previous, self._decoding = self._decoding, context
        try:
            return super().decode(tree, buffers, context)
        finally:
            self._decoding = previous

    def on_tensor(self, t: torch.Tensor, record: dict) -> torch.Tensor:
        if self._decoding == "reply":
            if self._frames:
                self._frames[-1].outputs.append(t)
        elif self._serving and record.get("rg") is True and t.is_floating_point():
            t.requires_grad_(True)
            self._serving[-1]["leaves"].append(t)
        return t

    def serve(self, header: dict, buffers: list[bytes]) -> None:
        state = {"cb": next(self._cb_ids), "leaves": [], "imports": set()}
        self.callbacks.put(state["cb"], state)
        self._serving.append(state)
        try:
            with torch.enable_grad():
                super().serve(header, buffers)
        finally:
            self._serving.pop()

    def describe(self, exc: BaseException) -> dict:
        # the kernel learns that its callback failed and the exception's type, never its text
        # (a message can quote a hidden test's values or code)
        return {"type": type(exc).__name__, "message": ""}

    def handle(self, op: str, args: list) -> Any:
        if op == "cb_backward" and len(args) == 4:
            return self._cb_backward(*args)
        if op == "set_requires_grad" and len(args) == 2 and type(args[1]) is bool:
            param = self.resolve_own(args[0]) if not isinstance(args[0], int) else \
                self.exports.get(args[0])
            if not isinstance(param, torch.nn.Parameter):
                raise AccessDenied("only a parameter's requires_grad may be set")
            param.requires_grad_(args[1])
            return None
        return super().handle(op, args)

    def _cb_backward(self, cb: Any, imports: Any, grads: Any, accumulate: Any) -> list:
        """The gradient of what a callback returned, for the kernel's backward: only for that
        callback's own results (the kernel cannot push gradients into other test tensors)."""
        state = self.callbacks.get(cb) if type(cb) is int else None
        if state is None or not isinstance(imports, list) or not isinstance(grads, list) \
                or len(imports) != len(grads) or not set(imports) <= state["imports"]:
            raise WireError("malformed gradient request")
        leaves = state["leaves"]
        outs, gs = [], []
        for imp, g in zip(imports, grads):
            t = self.grad_exports.get(imp) if type(imp) is int else None
            if t is None or not isinstance(g, torch.Tensor) or g.shape != t.shape:
                continue
            if t.requires_grad:
                outs.append(t)
                gs.append(g.to(t.dtype))
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        if not outs:
            return [None] * len(leaves)
        if accumulate is True:
            for leaf in wanted:
                leaf.grad = None
            torch.autograd.backward(outs, gs, retain_graph=True)
            got = [leaf.grad for leaf in leaves]
            for leaf in wanted:
                leaf.grad = None
            return got
        if not wanted:
            return [None] * len(leaves)
        res = torch.autograd.grad(outs, wanted, gs, retain_graph=True, allow_unused=True)
        by_id = {id(leaf): g for leaf, g in zip(wanted, res)}
        return [by_id.get(id(leaf)) for leaf in leaves]

    # ------------------------------------------------------------------ calls
    def call(self, ref, args: tuple, kwargs: dict) -> Any:
        rng = torch.get_rng_state().numpy().tobytes()
        result = self.request("call", ref, args, kwargs, rng)
        frame = self._last_frame
        _advance_generators(args, kwargs)
        if not (torch.is_grad_enabled() and frame.imports):
            return result
        outputs = [t for t in frame.outputs]
        if not any(t.is_floating_point() for t in outputs):
            return result
        info = _CallInfo(self, frame.n, ref, args, kwargs, frame.imports, outputs)
        new = RemoteCall.apply(info, *[t for _, t, _ in frame.imports], *outputs)
        swap = {id(old): fresh for old, fresh in zip(outputs, new)}
        return replace_tensors(result, swap)


@dataclass
class _CallInfo:
    endpoint: HarnessEndpoint
    n: int | None
    ref: Any
    args: tuple
    kwargs: dict
    imports: list
    outputs: list


class RemoteCall(torch.autograd.Function):
    """The outputs of a call into the sandbox, as a node of the harness's graph. Inputs: the
    harness tensors the call sent with requires_grad (its arguments and its callbacks'
    results), then the outputs' values."""

    @staticmethod
    def forward(ctx, info: _CallInfo, *tensors: torch.Tensor):
        ctx.info = info
        outs = tuple(t.clone() for t in tensors[len(info.imports):])
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return outs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        info: _CallInfo = ctx.info
        ep = info.endpoint
        sent = [g if g is not None else torch.zeros_like(o) for g, o in zip(grads, info.outputs)]
        with torch.no_grad():
            answer = ep.request("vjp", info.n, sent, [imp for imp, _, _ in info.imports])
        if not isinstance(answer, list) or len(answer) != len(info.imports):
            raise GradientMismatch("the student's code sent a malformed gradient")
        got = []
        for (imp, t, _), g in zip(info.imports, answer):
            if g is None:
                got.append(torch.zeros_like(t))
            elif isinstance(g, torch.Tensor) and g.shape == t.shape:
                got.append(g.to(t.dtype))
            else:
                raise GradientMismatch("the student's code sent a gradient of the wrong shape")
        _check_by_finite_differences(info, sent, got)
        return (None, *got, *([None] * len(info.outputs)))


def _advance_generators(args: tuple, kwargs: dict) -> None:
    """The kernel drew from copies: the harness's generators move on by one draw of their own
    (the kernel's state never flows back, so it cannot choose the tests' next inputs)."""
    torch.randint(2**62, (1,))
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Generator):
            torch.randint(2**62, (1,), generator=value)


def _check_by_finite_differences(info: _CallInfo, v: list, grads: list) -> None:
    explicit = [(t, g) for (_, t, is_arg), g in zip(info.imports, grads) if is_arg]
    if not explicit:
        return
    ep = info.endpoint
    dirs = []
    for t, _ in explicit:
        u = torch.randn(t.shape, generator=ep.generator, dtype=torch.float64).to(t.dtype)
        dirs.append(u / max(u.norm().item(), 1e-30))
    double = all(t.dtype == torch.float64 for t, _ in explicit)
    scale = max(1.0, max(t.detach().abs().max().item() if t.numel() else 0.0
                         for t, _ in explicit))
    eps = (1e-6 if double else 1e-2) * scale

    def at(sign: float) -> list:
        # the shifted inputs require grad like the first call's: the kernel cannot tell a
        # finite-difference call from a test's own
        swap = {id(t): (t.detach() + sign * eps * u).requires_grad_(True)
                for (t, _), u in zip(explicit, dirs)}
        args = replace_tensors(info.args, swap)
        kwargs = replace_tensors(info.kwargs, swap)
        with torch.enable_grad():
            ep.request("call", info.ref, args, kwargs, torch.get_rng_state().numpy().tobytes())
        return [t.detach() for t in ep._last_frame.outputs]

    plus, minus = at(1.0), at(-1.0)
    if len(plus) != len(info.outputs) or len(minus) != len(info.outputs):
        raise GradientMismatch("the student's function gave outputs of another structure when "
                               "called again (is it deterministic?)")
    fd, size = 0.0, 0.0
    for vk, o, p, m in zip(v, info.outputs, plus, minus):
        if not o.is_floating_point():
            continue
        if p.shape != o.shape or m.shape != o.shape:
            raise GradientMismatch("the student's function changed its output shape")
        diff = (p.double() - m.double()) / (2 * eps)
        fd += float((vk.double() * diff).sum())
        size += float(vk.double().abs().sum()) * (1.0 + float(o.detach().double().abs().max())
                                                 if o.numel() else 1.0)
    claimed = sum(float((g.double() * u.double()).sum()) for (_, g), u in zip(explicit, dirs))
    rtol, atol = (1e-4, 1e-7 * size) if double else (5e-2, 1e-3 * size)
    if not (math.isfinite(claimed) and math.isfinite(fd)) \
            or abs(claimed - fd) > rtol * (abs(claimed) + abs(fd)) + atol:
        raise GradientMismatch(
            "the gradient through your function does not match finite differences of its values "
            "(a .detach(), .item(), .numpy() or an in-place write cuts autograd)")


# ============================================================================ notebook runner

_BUILTIN_NAMES = frozenset(dir(builtins))


def _plain_python(source: str) -> str:
    """The course's cells as Python: IPython syntax (``%pip`` in the install cell) becomes
    ``get_ipython()`` calls, reached only where flowlib is missing, never in the harness."""
    if "%" not in source and "!" not in source:
        return source
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)
MAX_RESTARTS = 3  # new kernels after time-outs, per notebook

@dataclass
class TestResult:
    ok: bool
    stdout: str = ""
    error: str = ""       # exception type shown to the student
    message: str = ""     # the harness's own message


class Harness:
    """One submission: a sandboxed kernel plus the harness namespace the tests run in."""

    def __init__(self, slot: int = 0, limits: SandboxLimits = SandboxLimits(),
                 cell_timeout: float = 60.0, start_timeout: float = 180.0,
                 student_names: set[str] | None = None):
        """``student_names``: the only names a student cell may bind in the tests' namespace
        (the functions the assignment asks for); None: any name not bound by the course."""
        self.cell_timeout = cell_timeout
        self.student_names = student_names
        self.slot, self.limits, self.start_timeout = slot, limits, start_timeout
        self._dtype = torch.get_default_dtype()  # the course's cells change it in this process
        self.dead = ""
        self.kernel: Kernel | None = None
        self.history: list[str] = []   # the cells the kernel ran, to replay after a restart
        self.restarts = 0
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.owned: set[str] = set()   # names the instructor's cells bound in the harness
        self.student_bound: set[str] = set()   # names bound to the student's objects
        if not self._start():
            self._die("the sandboxed kernel did not start")

    def _start(self) -> bool:
        zygotes = os.environ.get("FLOWGRADE_ZYGOTES")
        if zygotes:  # a warm kernel from this slot's zygote; a fresh sandbox if it fails
            self.kernel = connect_zygote(Path(zygotes), self.slot)
            if self.kernel is not None and self._ready(30.0):
                return True
            if self.kernel is not None:
                self.kernel.kill()
        self.kernel = start_kernel(self.slot, self.limits)
        return self._ready(self.start_timeout)

    def _restart(self, why: str) -> None:
        """After a time-out: a new kernel, the cells so far replayed (a cell that times out
        again is dropped), the student's names bound again; the tests after it still run.
        At most ``MAX_RESTARTS`` per notebook, then the kernel stays dead."""
        self.ep.closed = True  # proxies of the old kernel now fail cleanly
        if self.kernel is not None:
            self.kernel.kill()
            self.kernel = None
        self.restarts += 1
        if self.restarts > MAX_RESTARTS or not self._start():
            self._die(why)
            return
        kept = []
        for source in self.history:
            try:
                with self._deadline():
                    out = self.ep.request("run_cell", source)
            except TimeoutError:
                self.kernel.kill()
                self.kernel = None
                if not self._start():
                    self._die(why)
                    return
                continue
            except (EOFError, OSError, WireError):
                self._die(why)
                return
            kept.append(source)
            self._bind(out)
        self.history = kept

    def _ready(self, timeout: float) -> bool:
        self.ep = HarnessEndpoint(self.kernel.fd, self.kernel.fd)
        self.ep.deadline = time.monotonic() + timeout
        try:
            header, _ = self.ep._read()
            return header.get("t") == "ready"
        except (TimeoutError, EOFError, WireError, OSError):
            return False
        finally:
            self.ep.deadline = None

    def _die(self, why: str) -> None:
        self.dead = self.dead or why
        if self.kernel is not None:
            self.kernel.kill()
            self.kernel = None

    @contextlib.contextmanager
    def _deadline(self):
        self.ep.deadline = time.monotonic() + self.cell_timeout
        try:
            yield
        finally:
            self.ep.deadline = None

    def _kernel(self, op: str, *args: Any) -> Any:
        if self.dead:
            raise RuntimeError(self.dead)
        try:
            with self._deadline():
                return self.ep.request(op, *args)
        except TimeoutError:
            self._restart(f"a cell ran past the time limit of {self.cell_timeout:g} s")
            raise
        except (EOFError, OSError, WireError) as exc:
            self._die(f"the student's kernel stopped ({type(exc).__name__})")
            raise

    def run_instructor_cell(self, source: str) -> TestResult:
        """A read-only cell of the course: in the harness (the tests use its names) and in the
        kernel (the student's code may too)."""
        before = {k: id(v) for k, v in self.ns.items()}
        res = self._exec(source, "setup")
        self.owned |= {k for k, v in self.ns.items() if before.get(k) != id(v)}
        if not self.dead:
            self.history.append(source)
            try:
                self._kernel("run_cell", source)
            except Exception:  # noqa: BLE001 - reported by the next test that needs it
                pass
        return res

    def run_student_cell(self, source: str) -> dict:
        if self.dead:
            return {"ok": False, "error": "NotRun", "stdout": "", "names": []}
        try:
            out = self._kernel("run_cell", source)
        except Exception as exc:  # noqa: BLE001 - a cell that timed out is not replayed
            return {"ok": False, "error": type(exc).__name__, "stdout": "", "names": []}
        self.history.append(source)
        if not isinstance(out, dict):
            return {"ok": False, "error": "ProtocolError", "stdout": "", "names": []}
        self._bind(out)
        return {"ok": out.get("ok") is True,
                "error": out.get("error") if isinstance(out.get("error"), str) else "",
                "stdout": out.get("stdout") if isinstance(out.get("stdout"), str) else "",
                "names": []}

    def _bind(self, out: Any) -> None:
        """Bind the names a student cell defined that the tests may use, as proxies."""
        if not isinstance(out, dict):
            return
        for entry in out.get("names", []) if isinstance(out.get("names"), list) else []:
            if (not isinstance(entry, list) or len(entry) != 2 or type(entry[0]) is not str
                    or not entry[0].isidentifier() or entry[0] in self.owned
                    or entry[1] == "module" or entry[0] in _BUILTIN_NAMES
                    or (self.student_names is not None
                        and entry[0] not in self.student_names)):
                continue
            try:
                with self._deadline():
                    self.ns[entry[0]] = self.ep.request("lookup", entry[0])
                self.student_bound.add(entry[0])
            except Exception:  # noqa: BLE001 - the name stays unbound; tests using it fail
                self.ns.pop(entry[0], None)

    def run_test_cell(self, source: str, name: str) -> TestResult:
        if self.dead:
            return TestResult(False, "", "CellNotRun", f"not run: {self.dead}")
        return self._exec(source, name)

    def _exec(self, source: str, name: str) -> TestResult:
        out = io.StringIO()
        before = {k: id(v) for k, v in self.ns.items()}
        try:
            return self._exec_checked(source, name, out)
        finally:
            # what a test cell binds (a helper a later hidden test uses) is the course's too;
            # not what a kernel restart bound again for the student
            self.owned |= {k for k, v in self.ns.items() if before.get(k) != id(v)
                           and k not in self.student_bound
                           and (self.student_names is None or k not in self.student_names)}

    def _exec_checked(self, source: str, name: str, out: io.StringIO) -> TestResult:
        from . import probes

        try:
            code = compile(_plain_python(source), f"<{name}>", "exec")
            probes._harness = self
            with contextlib.redirect_stdout(out), self._deadline():
                exec(code, self.ns)  # noqa: S102 - the instructor's own test code
        except RemoteError as exc:
            return TestResult(False, out.getvalue(), "StudentCodeError",
                              f"your code raised {exc.type_name}")
        except TimeoutError:
            why = "a call ran past its time limit"
            self._restart(why)
            return TestResult(False, out.getvalue(), "TimeoutError", why)
        except (EOFError, WireError, OSError) as exc:
            self._die(f"the student's kernel stopped ({type(exc).__name__})")
            return TestResult(False, out.getvalue(), "KernelDied", self.dead)
        except GradientMismatch as exc:
            return TestResult(False, out.getvalue(), "GradientMismatch", str(exc)[:500])
        except AssertionError as exc:
            return TestResult(False, out.getvalue(), "AssertionError", str(exc)[:500])
        except Exception as exc:  # noqa: BLE001 - any failure of the test fails it
            return TestResult(False, out.getvalue(), type(exc).__name__, str(exc)[:500])
        finally:
            probes._harness = None
        return TestResult(True, out.getvalue())

    def close(self) -> None:
        self._die("closed")
        torch.set_default_dtype(self._dtype)
