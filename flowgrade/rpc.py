"""One end of the harness <-> kernel channel: requests, replies, references and proxies.

Both sides run the same loop. A side that sends a request keeps reading frames until the reply
to it arrives, serving the peer's nested requests meanwhile (a student's function calling back a
function the test handed it, which may call the student's code again...). Replies therefore come
back in stack order.

What each side may do to the other's objects is decided by the *owner* (:meth:`Endpoint.allow`):
the kernel lets the harness do anything to the student's objects; the harness lets the kernel call
the callables a test handed over, read their public data and little else (see ``harness.py``).
"""
from __future__ import annotations

import collections
import itertools
import os
import select
import time
from typing import Any

import torch

from .wire import Decoder, Encoder, Limits, Ref, WireError, read_frame, write_frame

__all__ = ["LRU", "replace_tensors", "RemoteError", "AccessDenied", "Proxy", "Endpoint", "ITER_LIMIT"]

import builtins

_BUILTIN_EXCEPTIONS = frozenset(
    n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
) | {"WireError", "AccessDenied", "RemoteError", "GradientMismatch"}
ITER_LIMIT = 1_000_000  # items of one iteration over a remote object (sent as one list)
EXPORT_LIMIT = 200_000  # objects one side may hand the other in one notebook


class LRU(collections.OrderedDict):
    """A dict that forgets its oldest entries past ``size`` (what one side keeps for the
    other's later gradient requests)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class RemoteError(Exception):
    """The peer raised ``type_name`` while serving a request (its message stays over there
    unless the owner chose to send it)."""

    def __init__(self, type_name: str, message: str = ""):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


class AccessDenied(Exception):
    """The owner of an object refused what the peer asked to do with it (not an OSError: the
    channel's own errors are those)."""


class Proxy:
    """A stand-in for an object of the peer: every use is a request."""

    __slots__ = ("_fg_endpoint", "_fg_ref", "__weakref__")

    def __init__(self, endpoint: "Endpoint", ref: Ref):
        object.__setattr__(self, "_fg_endpoint", endpoint)
        object.__setattr__(self, "_fg_ref", ref)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._fg_endpoint.request("getattr", self._fg_ref, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._fg_endpoint.request("setattr", self._fg_ref, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fg_endpoint.call(self._fg_ref, args, kwargs)

    def __getitem__(self, key: Any) -> Any:
        return self._fg_endpoint.request("op", self._fg_ref, "getitem", key)

    def __len__(self) -> int:
        n = self._fg_endpoint.request("op", self._fg_ref, "len", None)
        if type(n) is not int or n < 0:
            raise TypeError("len() of a remote object must be a non-negative int")
        return n

    def __iter__(self):
        items = self._fg_endpoint.request("op", self._fg_ref, "iter", None)
        if type(items) is not list:
            raise TypeError("iteration over a remote object must give a list")
        return iter(items)

    def __contains__(self, item: Any) -> bool:
        return bool(self._fg_endpoint.request("op", self._fg_ref, "contains", item) is True)

    def __repr__(self) -> str:  # never asks the peer: its text stays its own
        ref = self._fg_ref
        return f"<{'student' if ref.owner == 'k' else 'harness'} {ref.kind} #{ref.id}>"


class Endpoint:
    """The channel on one side. Subclasses supply the policy (:meth:`allow`) and the autograd
    link (:meth:`tensor_meta`, :meth:`on_tensor`, :meth:`after_decode`, :meth:`handle`)."""

    side = "?"

    def __init__(self, rfd: int, wfd: int, limits: Limits = Limits()):
        self.rfd, self.wfd, self.limits = rfd, wfd, limits
        self.exports: dict[int, Any] = {}
        self._export_ids: dict[int, int] = {}
        self._proxies: dict[int, Proxy] = {}
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self.deadline: float | None = None  # monotonic time past which a wait fails
        self.closed = False

    # ------------------------------------------------------------------ references
    def export(self, obj: Any) -> Ref:
        key = id(obj)
        if key in self._export_ids and self.exports.get(self._export_ids[key]) is obj:
            n = self._export_ids[key]
        else:
            if len(self.exports) >= EXPORT_LIMIT:
                raise WireError("too many objects handed over")
            n = next(self._ids)
            self.exports[n] = obj
            self._export_ids[key] = n
        kind = "class" if isinstance(obj, type) else "function" if callable(obj) else "object"
        return Ref(self.side, n, kind, self.class_name(obj))

    def class_name(self, obj: Any) -> str:
        """The name under which the peer knows ``obj``'s class ("": none)."""
        return ""

    def make_proxy(self, ref: Ref) -> "Proxy":
        return Proxy(self, ref)

    def resolve(self, ref: Ref) -> Any:
        if ref.owner == self.side:
            try:
                return self.exports[ref.id]
            except KeyError:
                raise WireError("reference to an unknown object") from None
        proxy = self._proxies.get(ref.id)
        if proxy is None:
            proxy = self._proxies[ref.id] = self.make_proxy(ref)
        return proxy

    def as_ref(self, value: Any) -> Ref | None:
        if isinstance(value, Proxy) and object.__getattribute__(value, "_fg_endpoint") is self:
            return object.__getattribute__(value, "_fg_ref")
        return None

    # ------------------------------------------------------------------ hooks
    def tensor_meta(self, t: torch.Tensor) -> dict:
        return {}

    def on_tensor(self, t: torch.Tensor, record: dict) -> torch.Tensor:
        return t

    def after_decode(self, value: Any, context: str) -> Any:
        return value

    def on_request(self, n: int, op: str) -> None:
        """Called with the number of each request this side sends, before its arguments are
        encoded."""

    def allow(self, op: str, obj: Any, name: str | None = None) -> None:
        """Raise AccessDenied when the peer may not do ``op`` on our ``obj``."""

    # ------------------------------------------------------------------ encoding
    def encode(self, value: Any) -> tuple[Any, list[bytes]]:
        enc = Encoder(self.export, self.tensor_meta, self.as_ref)
        return enc.encode(value), enc.buffers

    def decode(self, tree: Any, buffers: list[bytes], context: str) -> Any:
        dec = Decoder(buffers, self.resolve, self.on_tensor, self.limits)
        return self.after_decode(dec.decode(tree), context)

    # ------------------------------------------------------------------ requests
    def call(self, ref: Ref, args: tuple, kwargs: dict) -> Any:
        return self.request("call", ref, args, kwargs)

    def request(self, op: str, *args: Any) -> Any:
        if self.closed:
            raise RuntimeError("this object lived in a kernel that was restarted")
        n = next(self._seq)
        self.on_request(n, op)
        tree, buffers = self.encode(list(args))
        write_frame(self.wfd, {"t": "req", "n": n, "op": op, "v": tree}, buffers)
        return self.wait_reply(n)

    def wait_reply(self, n: int) -> Any:
        while True:
            header, buffers = self._read()
            kind = header.get("t")
            if kind == "req":
                self.serve(header, buffers)
                continue
            if header.get("n") != n or kind not in ("ok", "err"):
                raise WireError("reply out of order")
            if kind == "err":
                err = header.get("e", {})
                name = err.get("type") if isinstance(err, dict) else None
                msg = err.get("message", "") if isinstance(err, dict) else ""
                if not isinstance(name, str) or name not in _BUILTIN_EXCEPTIONS:
                    name = "Exception"  # a class name of the peer's choosing could carry data
                raise RemoteError(name, msg if isinstance(msg, str) else "")
            return self.decode(header.get("v", ["n"]), buffers, "reply")

    def _read(self) -> tuple[dict, list[bytes]]:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError("no answer from the student's code in time")
        return read_frame(self.rfd, self.limits)

    def serve(self, header: dict, buffers: list[bytes]) -> None:
        """Answer one request of the peer."""
        n = header.get("n")
        try:
            op = header.get("op")
            args = self.decode(header.get("v", ["l", []]), buffers, f"request:{op}")
            if not isinstance(args, list) or not isinstance(op, str):
                raise WireError("malformed request")
            result = self.handle(op, args)
            tree, out = self.encode(result)
            write_frame(self.wfd, {"t": "ok", "n": n, "v": tree}, out)
        except (TimeoutError, EOFError, OSError):
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) and self.side == "h":
                raise
            write_frame(self.wfd, {"t": "err", "n": n, "e": self.describe(exc)}, [])

    def describe(self, exc: BaseException) -> dict:
        return {"type": type(exc).__name__, "message": str(exc)[:2000]}

    def handle(self, op: str, args: list) -> Any:
        if op == "call" and len(args) == 3:
            obj = self.resolve_own(args[0])
            self.allow("call", obj)
            if not isinstance(args[1], (list, tuple)) or not isinstance(args[2], dict):
                raise WireError("malformed call")
            if not all(type(k) is str for k in args[2]):
                raise WireError("keyword names must be strings")
            return self.invoke(obj, tuple(args[1]), args[2])
        if op == "getattr" and len(args) == 2 and type(args[1]) is str:
            obj = self.resolve_own(args[0])
            self.allow("getattr", obj, args[1])
            return getattr(obj, args[1])
        if op == "setattr" and len(args) == 3 and type(args[1]) is str:
            obj = self.resolve_own(args[0])
            self.allow("setattr", obj, args[1])
            setattr(obj, args[1], args[2])
            return None
        if op == "op" and len(args) == 3 and args[1] in _OPS:
            obj = self.resolve_own(args[0])
            self.allow("op", obj, args[1])
            return _OPS[args[1]](obj, args[2])
        raise WireError(f"unknown request {op!r}")

    def invoke(self, obj: Any, args: tuple, kwargs: dict) -> Any:
        return obj(*args, **kwargs)

    def resolve_own(self, value: Any) -> Any:
        """The peer names one of our objects: it arrives decoded as the object itself; a proxy
        (the peer's own object) or plain data cannot be the target of a request."""
        if isinstance(value, Proxy):
            raise WireError("a request must name an object of this side")
        if not any(obj is value for obj in (self.exports.get(k) for k in self._target_ids(value))):
            raise WireError("not an object handed over")
        return value

    def _target_ids(self, value: Any) -> list[int]:
        n = self._export_ids.get(id(value))
        return [n] if n is not None else []

    def close(self) -> None:
        for fd in {self.rfd, self.wfd}:
            try:
                os.close(fd)
            except OSError:
                pass


def replace_tensors(value: Any, swap: dict) -> Any:
    """``value`` with each tensor whose id is in ``swap`` replaced (lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor):
        return swap.get(id(value), value)
    if type(value) is list:
        return [replace_tensors(v, swap) for v in value]
    if type(value) is tuple:
        return tuple(replace_tensors(v, swap) for v in value)
    if type(value) is dict:
        return {k: replace_tensors(v, swap) for k, v in value.items()}
    return value


def _iterate(obj: Any, _: Any) -> list:
    items = list(itertools.islice(iter(obj), ITER_LIMIT + 1))
    if len(items) > ITER_LIMIT:
        raise ValueError(f"more than {ITER_LIMIT} items")
    return items


_OPS = {
    "getitem": lambda obj, key: obj[key],
    "len": lambda obj, _: len(obj),
    "iter": _iterate,
    "contains": lambda obj, item: item in obj,
}
