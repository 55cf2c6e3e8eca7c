#!/usr/bin/env python3
"""Confinement of untrusted student code while it is graded (Linux; no root needed).

Three layers, each applied when the machine allows it and reported by `capabilities()`:

* **resource limits** (`setrlimit`, always): address space (memory), CPU seconds, size of any
  file written, no core dumps. `SIGXFSZ` is ignored so that an oversized write fails with an
  `OSError` instead of killing the process.
* **Landlock** (Linux >= 5.13 with Landlock enabled): the process and everything it starts may
  read only the listed folders and write only the listed ones (`/`, the instructor's home, the
  repository, the gradebook and the hidden tests are simply not listed for the kernel); with
  Landlock ABI >= 4 it may not open TCP connections (and may bind only the kernel's own ports);
  with ABI >= 6 it may not signal processes outside the sandbox nor reach abstract unix sockets.
* **namespaces** (`unshare`, where unprivileged user namespaces are allowed): a private network
  namespace holding only a loopback interface (no network at all), and a private PID
  namespace whose init kills every process left behind when the grader finishes.

Used in two ways (see tools/grade.py):

    sandbox.py run SPEC.json -- CMD...      the per-submission grader process (nbgrader):
                                             limits + namespaces + Landlock (writes confined)
    sandbox.py kernel SPEC.json -- CMD...   the Jupyter kernel that runs the student's code
                                             (its kernelspec's argv): limits + Landlock (reads
                                             and writes confined, no TCP connect), then exec

SPEC.json: {"memory_mb", "cpu_seconds", "file_mb", "read": [...], "write": [...],
"landlock": bool, "namespaces": bool}. A layer the machine lacks is skipped, never an error: `capabilities()`
says what is in force, and tools/grade.py reports it.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import struct
import sys

__all__ = ["capabilities", "landlock_abi", "set_limits", "landlock", "enter_namespaces",
           "run_confined"]

# ----------------------------------------------------------------------------- libc

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

# Landlock access rights (linux/landlock.h)
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_MAKE_SYM = 1 << 12
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR


def _fs_all(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel, 0 when Landlock is unavailable."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(version), 0)


def _userns_ok() -> bool:
    """Whether an unprivileged user + network namespace can be created (probed in a child)."""
    if not sys.platform.startswith("linux"):
        return False
    pid = os.fork()
    if pid == 0:  # child: try, report through the exit status, never return
        ok = _libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID)) == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def capabilities() -> dict:
    """What this machine lets the sandbox do: {"landlock": ABI, "namespaces": bool}."""
    return {"landlock": landlock_abi(), "namespaces": _userns_ok()}


# ----------------------------------------------------------------------------- limits


def set_limits(memory_mb: float | None = None, cpu_seconds: float | None = None,
               file_mb: float | None = None) -> None:
    """Resource limits of this process (inherited by its children and kept across exec)."""
    def cap(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))

    if memory_mb:
        cap(resource.RLIMIT_AS, int(memory_mb * 2**20))
    if cpu_seconds:
        cap(resource.RLIMIT_CPU, int(cpu_seconds))
    if file_mb:
        cap(resource.RLIMIT_FSIZE, int(file_mb * 2**20))
        # an oversized write then fails with EFBIG (an OSError) rather than killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    cap(resource.RLIMIT_CORE, 0)


# ----------------------------------------------------------------------------- landlock


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def landlock(read: list[str], write: list[str], bind_ports: list[int] | None = None,
             deny_tcp: bool = True, scope: bool = True) -> int:
    """Confine this process and its future children: read (and execute) only under `read`
    (plus `write`), write only under `write`; with ABI >= 4 and `deny_tcp`, no TCP connect and
    TCP bind only on `bind_ports`; with ABI >= 6 and `scope`, no signals to, nor abstract unix
    sockets of, processes outside. Missing paths are skipped. Returns the ABI used (0: none)."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    fs_all = _fs_all(abi)
    attr = _RulesetAttr(fs_all, 0, 0)
    size = 8
    if abi >= 4 and deny_tcp:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if abi >= 6 and scope:
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
        size = 24
    fd = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                              ctypes.c_size_t(size), ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        def allow(path: str, rights: int) -> None:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return  # a path that does not exist here: nothing to allow
            try:
                if not os.path.isdir(path):  # files accept file rights only
                    rights &= _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | \
                        _FS_IOCTL_DEV
                rule = _PathBeneath(rights & fs_all, pfd)
                _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(fd),
                                     ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                     ctypes.c_uint32(0)), f"landlock_add_rule {path}")
            finally:
                os.close(pfd)

        for path in read:
            allow(path, _READ)
        for path in write:
            allow(path, fs_all)
        if attr.handled_access_net:
            for port in bind_ports or []:
                rule = _NetPort(_NET_BIND_TCP, int(port))
                _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(fd),
                                     ctypes.c_int(_RULE_NET_PORT), ctypes.byref(rule),
                                     ctypes.c_uint32(0)), f"landlock_add_rule port {port}")
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(fd)
    return abi


# ----------------------------------------------------------------------------- namespaces


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _loopback_up() -> None:
    """Bring `lo` up in a fresh network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifreq)[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b""))  # IFF_UP


def enter_namespaces() -> bool:
    """Move this process into new user + network namespaces and make its next child the init
    of a new PID namespace. Returns False (and changes nothing) where that is not allowed."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID)) != 0:
        return False
    # Map our own ids (and nothing else), so that files keep their owner.
    try:
        _write("/proc/self/setgroups", "deny")
    except OSError:
        pass
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    _loopback_up()
    return True


def _forward_signals(pid: int) -> None:
    def handler(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def _wait_exit(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


def _init(target) -> int:
    """PID 1 of the new PID namespace: run `target` in a child, reap orphans, return the
    child's exit status. When this returns, the kernel kills every process left in the
    namespace."""
    child = os.fork()
    if child == 0:
        os._exit(_call(target))
    _forward_signals(child)
    code = None
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            break  # leaving kills the rest of the namespace
    return 1 if code is None else code


# ----------------------------------------------------------------------------- CLI


def _load_spec(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _connection_ports(argv: list[str]) -> list[int]:
    """The TCP ports of a Jupyter kernel, read from the connection file in its argv."""
    if "-f" in argv:
        path = argv[argv.index("-f") + 1]
        try:
            with open(path) as fh:
                info = json.load(fh)
            return [int(info[k]) for k in
                    ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
                    if info.get(k)]
        except (OSError, ValueError, KeyError):
            return []
    return []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[0] not in ("run", "kernel") or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    mode, spec, cmd = argv[0], _load_spec(argv[1]), argv[3:]
    if mode == "kernel":
        set_limits(spec.get("memory_mb"), spec.get("cpu_seconds"), spec.get("file_mb"))
        conn = cmd[cmd.index("-f") + 1] if "-f" in cmd else None
        read = list(spec.get("read", [])) + ([os.path.dirname(conn)] if conn else [])
        if spec.get("landlock", True):
            landlock(read, list(spec.get("write", [])), bind_ports=_connection_ports(cmd))
        os.execvp(cmd[0], cmd)
    return run_confined(spec, lambda: os.execvp(cmd[0], cmd))


def run_confined(spec: dict, target) -> int:
    """Confine this process as `spec` says (limits already set by the caller or here), then run
    `target()` (a function returning an exit status, or exec-ing). With namespaces, `target`
    runs as PID 2 under a PID-1 init, so that everything it leaves behind dies with it.
    Call in a process of its own (a fresh fork): it changes the process for good."""
    set_limits(spec.get("memory_mb"), spec.get("cpu_seconds"), spec.get("file_mb"))
    # namespaces first (they need /proc writes), then Landlock, then the PID-1 init
    in_ns = bool(spec.get("namespaces", True)) and enter_namespaces()
    if spec.get("landlock", True):
        landlock(["/"], list(spec.get("write", [])), deny_tcp=False, scope=True)
    if not in_ns:
        return _call(target)
    init = os.fork()
    if init == 0:  # PID 1 of the new namespace; dies (and takes the namespace) with its parent
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os._exit(_init(target))
    _forward_signals(init)
    return _wait_exit(init)


def _call(target) -> int:
    try:
        code = target()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the status says it failed; the log has the rest
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - closed or broken: nothing to flush
                pass
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
