"""The wire between the trusted harness and the sandboxed kernel: framing and a strict codec.

Only *plain data* crosses: ``None``, booleans, integers, floats, complex numbers, strings, bytes,
slices, ``Ellipsis``, torch dtypes, devices and sizes, tensors, NumPy arrays, torch generators (by
their state) and tuples, lists and dicts of these. Anything else travels as a *reference*: a
number naming an object that stays on the side that owns it; the receiver gets a proxy whose every
use is a new request. Nothing is pickled, imported or evaluated by the decoder, so a hostile peer
can send wrong data but never code.

A frame is ``u32 header length | header (JSON, UTF-8) | buffers``; the header lists the buffer
lengths. Values are JSON trees of tagged lists (``["T", {...}]`` for a tensor, ``["l", [...]]`` for
a list, ...), with tensor and byte payloads in the buffers. The decoder checks every tag, every
dtype against an allowlist, every shape against its buffer's length, and bounds the header size,
the total payload, the nesting depth and the number of nodes (:class:`Limits`).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["Limits", "WireError", "Ref", "Encoder", "Decoder", "write_frame", "read_frame",
           "TENSOR_DTYPES"]


class WireError(Exception):
    """A frame or value the peer sent breaks the protocol (malformed, too big, unknown type)."""


@dataclass(frozen=True)
class Limits:
    header_bytes: int = 8 * 2**20
    payload_bytes: int = 512 * 2**20
    depth: int = 40
    nodes: int = 200_000
    tensor_dims: int = 16


TENSOR_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d for d in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
        torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
        torch.bool)}
NUMPY_DTYPES = {"float16", "float32", "float64", "complex64", "complex128", "int8", "int16",
                "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}


@dataclass(frozen=True)
class Ref:
    """A reference to an object on one side: ``owner`` is "h" (harness) or "k" (kernel)."""

    owner: str
    id: int
    kind: str = "object"  # "function", "class", "object": how the proxy presents itself
    cls: str = ""         # the name of the course class it is an instance of ("" if none)


# ----------------------------------------------------------------------------- framing

def write_frame(fd: int, header: dict, buffers: list[bytes]) -> None:
    header = dict(header, buffers=[len(b) for b in buffers])
    data = json.dumps(header, separators=(",", ":")).encode()
    chunks = [struct.pack("<I", len(data)), data, *buffers]
    view = memoryview(b"".join(chunks))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the channel")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_frame(fd: int, limits: Limits = Limits()) -> tuple[dict, list[bytes]]:
    (size,) = struct.unpack("<I", _read_exact(fd, 4))
    if size > limits.header_bytes:
        raise WireError(f"header of {size} bytes (limit {limits.header_bytes})")
    try:
        header = json.loads(_read_exact(fd, size))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise WireError("header is not an object")
    lengths = header.get("buffers", [])
    if (not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths)
            or sum(lengths) > limits.payload_bytes):
        raise WireError("bad buffer lengths")
    return header, [_read_exact(fd, n) for n in lengths]


# ----------------------------------------------------------------------------- encoding

class Encoder:
    """Turn a value into (tree, buffers). ``export(obj) -> Ref`` is called for what is not plain
    data; ``tensor_meta(t) -> dict`` may add fields to a tensor's record (the autograd link)."""

    def __init__(self, export: Callable[[Any], Ref],
                 tensor_meta: Callable[[torch.Tensor], dict] | None = None,
                 as_ref: Callable[[Any], Ref | None] | None = None):
        self.export = export
        self.tensor_meta = tensor_meta
        self.as_ref = as_ref  # a proxy of the peer's object encodes as the peer's reference
        self.buffers: list[bytes] = []

    def _buffer(self, data: bytes) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def encode(self, value: Any, depth: int = 0) -> Any:
        if depth > 40:
            raise WireError("value nested too deeply")
        if value is None:
            return ["n"]
        if value is Ellipsis:
            return ["E"]
        if isinstance(value, bool):
            return ["b", value]
        if type(value) is int or isinstance(value, np.integer):
            return ["i", int(value)]
        if isinstance(value, (float, np.floating)):
            return ["f", repr(float(value))]
        if isinstance(value, complex):
            return ["c", repr(value.real), repr(value.imag)]
        if type(value) is str:
            return ["s", value]
        if type(value) in (bytes, bytearray):
            return ["y", self._buffer(bytes(value))]
        if type(value) is Ref:
            return ["R", value.owner, value.id, value.kind, value.cls]
        if self.as_ref is not None:
            ref = self.as_ref(value)
            if ref is not None:
                return ["R", ref.owner, ref.id, ref.kind, ref.cls]
        if isinstance(value, torch.Tensor) and type(value) in _TENSOR_TYPES:
            return self._tensor(value)
        if type(value) is np.ndarray and value.dtype.name in NUMPY_DTYPES:
            arr = np.ascontiguousarray(value)
            return ["N", {"dtype": arr.dtype.name, "shape": list(arr.shape),
                          "buf": self._buffer(arr.tobytes())}]
        if type(value) is torch.Size:
            return ["S", [int(d) for d in value]]
        if type(value) is torch.dtype:
            return ["D", str(value).removeprefix("torch.")]
        if type(value) is torch.device:
            return ["V", str(value)]
        if type(value) is torch.Generator:
            return ["G", {"device": str(value.device),
                          "buf": self._buffer(value.get_state().numpy().tobytes())}]
        if type(value) is slice:
            return ["sl", self.encode(value.start, depth + 1), self.encode(value.stop, depth + 1),
                    self.encode(value.step, depth + 1)]
        if type(value) in (list, tuple):
            return ["l" if type(value) is list else "t",
                    [self.encode(v, depth + 1) for v in value]]
        if type(value) is dict:
            return ["d", [[self.encode(k, depth + 1), self.encode(v, depth + 1)]
                          for k, v in value.items()]]
        ref = self.export(value)
        return ["R", ref.owner, ref.id, ref.kind, ref.cls]

    def _tensor(self, t: torch.Tensor) -> list:
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in TENSOR_DTYPES or t.layout != torch.strided or t.is_quantized:
            raise WireError(f"cannot send a tensor of dtype {t.dtype} / layout {t.layout}")
        data = t.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            raw = data.view(torch.int16).numpy().tobytes()
        else:
            raw = data.numpy().tobytes() if data.numel() else b""
        record = {"dtype": dtype, "shape": list(t.shape), "buf": self._buffer(raw),
                  "device": str(t.device)}
        if self.tensor_meta is not None:
            record.update(self.tensor_meta(t))
        return ["T", record]


_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


# ----------------------------------------------------------------------------- decoding

class Decoder:
    """Turn (tree, buffers) back into a value. ``resolve(ref) -> object`` maps a reference to
    the local object (own refs) or to a proxy (the peer's); ``on_tensor(t, record) -> tensor``
    may attach the autograd link."""

    def __init__(self, buffers: list[bytes], resolve: Callable[[Ref], Any],
                 on_tensor: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
                 limits: Limits = Limits(), device: str | None = None):
        self.buffers = buffers
        self.resolve = resolve
        self.on_tensor = on_tensor
        self.limits = limits
        self.nodes = 0
        self.device = device

    def _buf(self, index: Any) -> bytes:
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise WireError("bad buffer index")
        return self.buffers[index]

    def decode(self, node: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if depth > self.limits.depth or self.nodes > self.limits.nodes:
            raise WireError("value too deep or too large")
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise WireError("malformed value")
        tag, args = node[0], node[1:]
        if tag == "n":
            return None
        if tag == "E":
            return Ellipsis
        if tag == "b" and len(args) == 1 and type(args[0]) is bool:
            return args[0]
        if tag == "i" and len(args) == 1 and type(args[0]) is int:
            return args[0]
        if tag == "f" and len(args) == 1 and type(args[0]) is str:
            return _float(args[0])
        if tag == "c" and len(args) == 2:
            return complex(_float(args[0]), _float(args[1]))
        if tag == "s" and len(args) == 1 and type(args[0]) is str:
            return args[0]
        if tag == "y" and len(args) == 1:
            return self._buf(args[0])
        if tag in ("l", "t") and len(args) == 1 and isinstance(args[0], list):
            items = [self.decode(v, depth + 1) for v in args[0]]
            return items if tag == "l" else tuple(items)
        if tag == "d" and len(args) == 1 and isinstance(args[0], list):
            out = {}
            for pair in args[0]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise WireError("malformed dict entry")
                key = self.decode(pair[0], depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise WireError("unhashable dict key") from None
                out[key] = self.decode(pair[1], depth + 1)
            return out
        if tag == "sl" and len(args) == 3:
            parts = [self.decode(a, depth + 1) for a in args]
            if not all(p is None or type(p) is int for p in parts):
                raise WireError("slice bounds must be integers")
            return slice(*parts)
        if tag == "S" and len(args) == 1 and isinstance(args[0], list):
            if not all(type(d) is int and d >= 0 for d in args[0]):
                raise WireError("bad size")
            return torch.Size(args[0])
        if tag == "D" and len(args) == 1 and args[0] in TENSOR_DTYPES:
            return TENSOR_DTYPES[args[0]]
        if tag == "V" and len(args) == 1 and type(args[0]) is str:
            return torch.device(self._device(args[0]))
        if tag == "T" and len(args) == 1 and isinstance(args[0], dict):
            return self._tensor(args[0])
        if tag == "N" and len(args) == 1 and isinstance(args[0], dict):
            rec = args[0]
            if rec.get("dtype") not in NUMPY_DTYPES:
                raise WireError("numpy dtype not allowed")
            shape = _shape(rec.get("shape"), self.limits)
            dtype = np.dtype(rec["dtype"])
            raw = self._buf(rec.get("buf"))
            if len(raw) != math.prod(shape) * dtype.itemsize:
                raise WireError("array buffer does not match its shape")
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if tag == "G" and len(args) == 1 and isinstance(args[0], dict):
            raw = self._buf(args[0].get("buf"))
            gen = torch.Generator(device="cpu")
            try:
                gen.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
            except (RuntimeError, ValueError):
                raise WireError("bad generator state") from None
            return gen
        if tag == "R" and len(args) == 4 and args[0] in ("h", "k") and type(args[1]) is int \
                and args[2] in ("function", "class", "object") and type(args[3]) is str \
                and (args[3] == "" or args[3].isidentifier()):
            return self.resolve(Ref(args[0], args[1], args[2], args[3]))
        raise WireError(f"unknown or malformed tag {tag!r}")

    def _device(self, name: str) -> str:
        # a tensor lives where the receiver computes: the peer's device name is advisory
        return self.device or ("cuda" if name.startswith("cuda") and torch.cuda.is_available()
                               else "cpu")

    def _tensor(self, rec: dict) -> torch.Tensor:
        dtype_name = rec.get("dtype")
        if dtype_name not in TENSOR_DTYPES:
            raise WireError("tensor dtype not allowed")
        dtype = TENSOR_DTYPES[dtype_name]
        shape = _shape(rec.get("shape"), self.limits)
        raw = self._buf(rec.get("buf"))
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != math.prod(shape) * itemsize:
            raise WireError("tensor buffer does not match its shape")
        if not raw:
            t = torch.empty(shape, dtype=dtype)
        elif dtype == torch.bfloat16:
            t = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(bytearray(raw), dtype=dtype)
        t = t.reshape(shape)
        device = self._device(str(rec.get("device", "cpu")))
        if device != "cpu":
            t = t.to(device)
        return self.on_tensor(t, rec) if self.on_tensor is not None else t


def _float(text: str) -> float:
    if len(text) > 40:
        raise WireError("bad float")
    try:
        return float(text)
    except ValueError:
        raise WireError("bad float") from None


def _shape(shape: Any, limits: Limits) -> list[int]:
    if (not isinstance(shape, list) or len(shape) > limits.tensor_dims
            or not all(type(d) is int and 0 <= d < 2**40 for d in shape)):
        raise WireError("bad shape")
    return shape
