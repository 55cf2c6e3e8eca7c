"""The sandboxed kernel: runs the student's cells and answers the harness's calls.

Started by :mod:`flowgrade.sandbox` inside bubblewrap as ``python -I -m flowgrade.kernel FD``;
the harness talks to it over the socket ``FD`` (frames of :mod:`flowgrade.wire`). It holds no test,
no instructor notebook and no gradebook: only the student's cells, the course's read-only set-up
cells, and whatever the harness passes in calls.

Requests it serves (besides the generic call/getattr/setattr/op of :mod:`flowgrade.rpc`):

* ``run_cell(source)``: run one cell in an IPython shell (magics such as ``%matplotlib inline``
  and ``%timeit`` work; figures are drawn to nowhere); returns ``{"ok", "error", "stdout",
  "names"}`` where ``names`` lists the global names the cell bound or rebound, with their kind.
* ``lookup(name)``: the value of a global: plain data, or a reference for anything else.
* ``vjp(call, grads, imports)``: vector-Jacobian product of an earlier call's outputs with
  respect to tensors the harness sent in it (see :mod:`flowgrade.harness` for how the harness
  checks it against finite differences before believing it).

Autograd across the boundary: a tensor the harness sends that requires grad there arrives here as
the output of :class:`FromHarness`, a node whose backward asks the harness for the gradient of
its own computation (so a student's ``loss.backward()`` reaches the harness's parameters, and a
gradient flows through a function the test handed over).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

from .rpc import LRU, Endpoint, Proxy, replace_tensors
from .wire import Ref, WireError

__all__ = ["KernelEndpoint", "main"]

_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}
STDOUT_KEEP = 20_000  # characters of a student cell's printed output kept for the feedback


class CourseProxy(Proxy):
    """A proxy of an instance of a course class: ``isinstance(obj, Affine)`` holds as it would
    in one process (``__class__`` is the kernel's class of that name, from the same read-only
    cell)."""

    __slots__ = ()

    @property
    def __class__(self):  # noqa: D401 - isinstance() consults it
        ref = object.__getattribute__(self, "_fg_ref")
        ep = object.__getattribute__(self, "_fg_endpoint")
        klass = ep.shell.user_ns.get(ref.cls) if ep.shell is not None else None
        if isinstance(klass, type) and klass.__module__ == "__main__":
            return klass
        return CourseProxy


class HarnessParameter(torch.nn.Parameter):
    """A parameter of the harness, copied here; ``requires_grad_`` also sets the original's flag
    (the one thing the student's code may change on a harness object: freezing a teacher)."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def requires_grad_(self, requires_grad: bool = True):  # type: ignore[override]
        super().requires_grad_(requires_grad)
        link = getattr(self, "_fg_link", None)
        if link is not None:
            link[0].request("set_requires_grad", link[1], bool(requires_grad))
        return self


class FromHarness(torch.autograd.Function):
    """Tensors from the harness that require grad there. Inputs: an anchor (so the node is in
    every graph), the kernel tensors the harness computed them from (a callback's arguments),
    then the values. Backward sends the output gradients to the harness and returns its answer
    for the arguments."""

    @staticmethod
    def forward(ctx, info: dict, anchor: torch.Tensor, *tensors: torch.Tensor):
        n = info["n_inputs"]
        ctx.info = info
        outs = tuple(v.clone() for v in tensors[n:])
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return outs

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        info = ctx.info
        ep: KernelEndpoint = info["endpoint"]
        if info["cb"] is None:  # a test's argument: its gradient is the harness's own business
            return (None, None, *([None] * info["n_inputs"]), *([None] * len(grads)))
        sent = [g if g is not None else None for g in grads]
        answer = ep.request("cb_backward", info["cb"], info["imports"], sent, not ep.in_vjp)
        n = info["n_inputs"]
        if not isinstance(answer, list) or len(answer) != n:
            raise RuntimeError("the grader sent a malformed gradient")
        return (None, None, *answer, *([None] * len(grads)))


class KernelEndpoint(Endpoint):
    side = "k"

    def __init__(self, rfd: int, wfd: int):
        super().__init__(rfd, wfd)
        self.shell = None
        self.imports = LRU(100_000)  # harness import id -> tensor here
        self.calls = LRU(512)        # harness request number -> output tensors of that call
        self.in_vjp = False
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._sent_stack: list[list[torch.Tensor]] = []
        self._encoded: list[torch.Tensor] | None = None
        self._cb: Any = None

    def make_proxy(self, ref: Ref) -> Proxy:
        return CourseProxy(self, ref) if ref.cls else Proxy(self, ref)

    # ------------------------------------------------------------------ autograd link
    def tensor_meta(self, t: torch.Tensor) -> dict:
        if self._encoded is not None:
            self._encoded.append(t)
        if t.requires_grad and t.is_floating_point():
            if self._sent_stack:
                self._sent_stack[-1].append(t)
            return {"rg": True}
        return {}

    def on_tensor(self, t: torch.Tensor, record: dict) -> torch.Tensor:
        if record.get("param") is not None:
            p = HarnessParameter(t, bool(record.get("rg")) and t.is_floating_point())
            p._fg_link = (self, record["param"])
            if type(record.get("imp")) is int:
                self.imports.put(record["imp"], p)
                self._hook_parameter(p, record["imp"], record.get("cb"))
            return p
        if type(record.get("imp")) is int and t.is_floating_point():
            self._pending.append((record["imp"], t))
            self._cb = record.get("cb")
        return t

    def _hook_parameter(self, p: torch.Tensor, imp: int, cb: Any) -> None:
        def send(grad: torch.Tensor) -> None:
            if not self.in_vjp and cb is not None:  # a student's backward reaches the parameter
                self.request("cb_backward", cb, [imp], [grad], True)
        p.register_hook(send)

    def after_decode(self, value: Any, context: str) -> Any:
        pending, self._pending = self._pending, []
        cb, self._cb = self._cb, None
        if not pending:
            return value
        if context.startswith("request"):
            self._had_imports = True
        inputs = self._sent_stack[-1] if context == "reply" and self._sent_stack else []
        inputs = [t for t in inputs if t.requires_grad]
        info = {"endpoint": self, "cb": cb, "imports": [i for i, _ in pending],
                "n_inputs": len(inputs)}
        anchor = torch.zeros((), requires_grad=True)
        with torch.enable_grad():
            outs = FromHarness.apply(info, anchor, *inputs, *[t for _, t in pending])
        swap = {id(t): o for (_, t), o in zip(pending, outs)}
        for (imp, _), o in zip(pending, outs):
            self.imports.put(imp, o)
        return replace_tensors(value, swap)

    def request(self, op: str, *args: Any) -> Any:
        self._sent_stack.append([])
        try:
            return super().request(op, *args)
        finally:
            self._sent_stack.pop()

    # ------------------------------------------------------------------ serving
    def serve(self, header: dict, buffers: list[bytes]) -> None:
        self._serving = header.get("n")
        self._had_imports = False
        super().serve(header, buffers)

    def decode(self, tree: Any, buffers: list[bytes], context: str) -> Any:
        value = super().decode(tree, buffers, context)
        if context.startswith("request"):
            # read by handle() right after: did this request bring tensors with grad?
            self._request_imports = self._had_imports
        return value

    def handle(self, op: str, args: list) -> Any:
        if op == "call" and len(args) == 4:
            state = args[3]
            if isinstance(state, bytes):
                with contextlib.suppress(RuntimeError, ValueError):
                    torch.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
            n, self._had_imports = self._serving, False
            had = getattr(self, "_request_imports", False)
            result = super().handle("call", args[:3])
            return _Recorded(self, n, result, had)
        if op == "run_cell" and len(args) == 1 and type(args[0]) is str:
            return self.run_cell(args[0])
        if op == "lookup" and len(args) == 1 and type(args[0]) is str:
            return self.shell.user_ns[args[0]]
        if op == "vjp" and len(args) == 3:
            return self.vjp(*args)
        return super().handle(op, args)

    def encode(self, value: Any):
        if type(value) is _Recorded:
            self._encoded = []
            try:
                out = super().encode(value.value)
            finally:
                outs, self._encoded = self._encoded, None
            # kept for a later VJP when the harness sent tensors with grad (a detached output
            # must answer "zero", which the harness then checks) or an output needs grad
            if value.had_imports or any(t.requires_grad for t in outs):
                self.calls.put(value.n, outs)
            return out
        return super().encode(value)

    def vjp(self, n: Any, grads: Any, imports: Any) -> list:
        outs = self.calls.get(n)
        if outs is None or not isinstance(grads, list) or len(grads) != len(outs):
            raise WireError("gradient of an unknown call")
        inputs = [self.imports.get(i) if type(i) is int else None for i in imports]
        wanted = [k for k, t in enumerate(inputs) if t is not None and t.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grads)
                 if isinstance(g, torch.Tensor) and o.requires_grad and g.shape == o.shape]
        result: list = [None] * len(inputs)
        if not wanted or not pairs:
            return result
        self.in_vjp = True
        try:
            got = torch.autograd.grad([o for o, _ in pairs],
                                      [inputs[k] for k in wanted],
                                      [g.to(o.dtype) for o, g in pairs],
                                      retain_graph=True, allow_unused=True)
        finally:
            self.in_vjp = False
        for k, g in zip(wanted, got):
            result[k] = g
        return result

    # ------------------------------------------------------------------ cells
    def run_cell(self, source: str) -> dict:
        ns = self.shell.user_ns
        before = {k: id(v) for k, v in ns.items()}
        out = _Capped(STDOUT_KEEP)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = self.shell.run_cell(source, store_history=False, silent=False)
        error = result.error_before_exec or result.error_in_exec
        names = []
        for k, v in list(ns.items()):
            if k.startswith("_") or k in _IPYTHON_NAMES or before.get(k) == id(v):
                continue
            kind = ("module" if isinstance(v, types.ModuleType) else
                    "class" if isinstance(v, type) else
                    "function" if callable(v) else "data")
            names.append([k, kind])
        return {"ok": error is None,
                "error": type(error).__name__ if error is not None else "",
                "stdout": out.getvalue(), "names": names}


class _Recorded:
    """A call's result, marked so that encoding it records the output tensors for a VJP."""

    __slots__ = ("endpoint", "n", "value", "had_imports")

    def __init__(self, endpoint: KernelEndpoint, n: Any, value: Any, had_imports: bool):
        self.endpoint, self.n, self.value, self.had_imports = endpoint, n, value, had_imports


class _Capped(io.StringIO):
    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap
        self.dropped = False

    def write(self, s: str) -> int:
        room = self.cap - self.tell()
        if room > 0:
            super().write(s[:room])
        elif not self.dropped:
            self.dropped = True
        return len(s)


def _make_shell():
    os.environ.setdefault("MPLBACKEND", "Agg")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(colors="NoColor")
    shell.enable_gui = lambda gui=None: None  # %matplotlib inline: no GUI loop to start here
    shell.showtraceback = lambda *a, **k: None  # the student's traceback is not sent anywhere
    shell.showsyntaxerror = lambda *a, **k: None
    return shell


def _quiet_output() -> None:
    # C-level prints of the student's code go nowhere: the channel is the only way out
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def serve(fd: int) -> int:
    """Be the kernel on the socket ``fd`` until the harness hangs up."""
    from .wire import write_frame

    endpoint = KernelEndpoint(fd, fd)
    endpoint.shell = _make_shell()
    write_frame(fd, {"t": "ready"}, [])
    while True:
        try:
            header, buffers = endpoint._read()
        except EOFError:
            return 0
        if header.get("t") == "req":
            endpoint.serve(header, buffers)


def main(argv: list[str]) -> int:
    _quiet_output()
    torch.set_num_threads(1)
    return serve(int(argv[1]))


# ----------------------------------------------------------------------------- zygote

_PR_SET_DUMPABLE = 4


def zygote(listen_fd: int, cpu_seconds: int) -> int:
    """A warm kernel factory for one grading slot, inside that slot's sandbox: it imports torch
    and IPython once, then for each connection on ``listen_fd`` (one at a time) forks a kernel,
    waits for it to end or for the harness to hang up, and wipes what it left behind: every
    other process of the sandbox is killed, ``/tmp`` and ``/dev/shm`` are emptied. It is not
    dumpable, so a kernel (same uid) can neither ptrace it nor read its memory; a kernel that
    kills or stops it only makes the harness start a fresh sandbox instead."""
    import ctypes
    import resource
    import select
    import signal
    import socket

    ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    _quiet_output()
    torch.set_num_threads(1)
    import IPython.core.interactiveshell  # noqa: F401 - imported once, before any fork
    listener = socket.socket(fileno=listen_fd)
    me = os.getpid()
    while True:
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            listener.close()
            os.setsid()
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
            os.makedirs("/tmp/work", exist_ok=True)
            os.chdir("/tmp/work")
            os._exit(serve(conn.detach()))
        _watch(conn, pid, select, signal)
        conn.close()
        _wipe(me, signal)


def _watch(conn, pid: int, select, signal) -> None:
    """Wait until the kernel ``pid`` exits or the harness hangs up (then kill it)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLHUP | select.POLLRDHUP | select.POLLERR)
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        if poller.poll(200):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(pid, 0)
            return


def _wipe(me: int, signal) -> None:
    for _ in range(1000):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
        if not others:
            break
        for p in others:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
    from .submissions import remove_tree

    for top in ("/tmp", "/dev/shm"):
        for name in os.listdir(top):
            path = os.path.join(top, name)
            if name in ("work", "home") and top == "/tmp":
                for inner in os.listdir(path):
                    remove_tree(Path(path) / inner)
            else:
                remove_tree(Path(path))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--zygote":
        sys.exit(zygote(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit(main(sys.argv))
