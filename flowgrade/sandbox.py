"""Start the student's kernel in a bubblewrap sandbox (Debian's ``bubblewrap``).

What the kernel gets (everything else does not exist for it):

* a private mount namespace with, read-only: ``/usr`` (and the ``/bin``, ``/lib`` links), ``/etc``,
  the Python installation, the course's virtual environment, and the two package folders it
  imports (``flowlib/`` and ``flowgrade/``); read-write: a size-limited tmpfs ``/tmp`` (its working
  folder, home and caches) and ``/dev/shm``;
* private PID, network (loopback only: no network), IPC, UTS and cgroup namespaces, a private
  ``/proc`` and a minimal ``/dev``; all capabilities dropped; a new session; killed with its parent;
* an unprivileged uid/gid of its own (one per grading slot, so a process limit of one sandbox never
  counts another's processes);
* resource limits set before bubblewrap starts it: address space (memory), CPU seconds, file size
  (this also caps every memfd), open files, and processes (per uid, hence per slot).

Without bubblewrap (``shutil.which("bwrap")`` is None) the kernel still runs in its own process,
holding no hidden test, but with the rlimits only: :func:`capabilities` says so, the driver prints
it, and ``docs_grading.md`` lists what is then not enforced.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import importlib.util

__all__ = ["SandboxLimits", "capabilities", "start_kernel", "Kernel", "Zygote",
           "connect_zygote", "zygote_path"]

UID_BASE = 61000  # uid of grading slot k: UID_BASE + k (no such user exists on a normal system)


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 4096
    cpu_seconds: int = 600
    file_mb: int = 64
    tmp_mb: int = 256
    processes: int = 64
    open_files: int = 256


def capabilities() -> dict:
    bwrap = shutil.which("bwrap")
    return {"bwrap": bwrap, "rlimits": True,
            "summary": ("bubblewrap sandbox (namespaces, unprivileged uid, read-only system, "
                        "tmpfs, no network) + rlimits") if bwrap else
                       "NO bubblewrap: rlimits only (install the `bubblewrap` package)"}


def _read_only_paths() -> list[str]:
    paths = {"/usr", "/etc", sys.base_prefix, sys.prefix, os.path.realpath(sys.base_prefix),
             sysconfig.get_paths()["purelib"]}
    for package in ("flowlib", "flowgrade"):  # found, not imported: the grader needs neither
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            paths.add(str(Path(spec.origin).parent))
    return sorted(p for p in paths if os.path.exists(p))


def _bwrap_argv(slot: int, limits: SandboxLimits) -> list[str]:
    uid = str(UID_BASE + slot)
    # No user namespace: bwrap runs as root and util-linux's setpriv, inside, switches to the
    # slot's *real* uid (dropping every capability, no_new_privs), so the process limit counts
    # this slot's processes only (root is exempt from it) and signals reach nothing outside.
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--hostname", "sandbox"]
    paths = _read_only_paths()
    parents = sorted({str(a) for p in paths for a in Path(p).parents if str(a) != "/"},
                     key=lambda a: a.count("/"))
    for a in parents:  # bwrap would make them 0700, unreadable to the kernel's uid
        argv += ["--perms", "0755", "--dir", a]
    for p in paths:
        argv += ["--ro-bind", p, p]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = f"/{link}"
        if os.path.islink(target):
            argv += ["--symlink", os.readlink(target), target]
        elif os.path.isdir(target):
            argv += ["--ro-bind", target, target]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(16 * 2**20), "--tmpfs", "/dev/shm",
             "--perms", "0777", "--dir", "/tmp/work", "--perms", "0777", "--dir", "/tmp/home",
             "--chdir", "/tmp/work", "--clearenv"]
    env = {"HOME": "/tmp/home", "TMPDIR": "/tmp", "PATH": "/usr/bin:/bin",
           "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/home/mpl",
           "IPYTHONDIR": "/tmp/home/ipython", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "FLOWLIB_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return argv + ["--", "setpriv", "--reuid", uid, "--regid", uid, "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def _limit(limits: SandboxLimits):
    def apply() -> None:
        mb = 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # per real uid: bwrap switches to the slot's own uid before the kernel starts, and as
        # root the limit is not enforced on bwrap itself
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes,) * 2)
    return apply


class Kernel:
    """A running sandboxed kernel: its process (None when a zygote forked it: closing the
    socket makes the zygote kill it) and the harness's end of the socket."""

    def __init__(self, proc: subprocess.Popen | None, fd: int, sock: socket.socket):
        self.proc, self.fd, self._sock = proc, fd, sock

    def kill(self) -> None:
        if self.proc is None:
            self._sock.close()
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._sock.close()


def start_kernel(slot: int = 0, limits: SandboxLimits = SandboxLimits()) -> Kernel:
    """Start ``python -I -m flowgrade.kernel FD`` confined; returns once the process runs (the
    caller waits for its "ready" frame)."""
    mine, theirs = socket.socketpair()
    child_fd = theirs.fileno()
    python = [sys.executable, "-I", "-m", "flowgrade.kernel", str(child_fd)]
    if shutil.which("bwrap"):
        argv = _bwrap_argv(slot, limits) + python
        env = None
    else:
        argv = python
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": "1", "FLOWLIB_PROGRESS": "0"}

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, pass_fds=(child_fd,),
                            preexec_fn=_limit(limits), start_new_session=True, env=env,
                            cwd="/tmp")
    theirs.close()
    return Kernel(proc, mine.fileno(), mine)


# ----------------------------------------------------------------------------- zygotes

def zygote_path(folder: Path, slot: int) -> Path:
    return Path(folder) / f"slot-{slot}.sock"


class Zygote:
    """A warm kernel factory for one grading slot (see flowgrade.kernel.zygote): one sandbox,
    uid and process limit for the whole run, a fresh kernel per submission, forked after torch
    and IPython are imported (saves the ~1.5 s of CPU those imports cost each submission). The
    listening socket is made here, in a folder the sandbox cannot see, and handed over as a
    file descriptor: no kernel can replace it."""

    def __init__(self, folder: Path, slot: int, limits: SandboxLimits = SandboxLimits()):
        self.path = zygote_path(folder, slot)
        Path(folder).mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(8)
        fd = listener.fileno()
        python = [sys.executable, "-I", "-m", "flowgrade.kernel", "--zygote", str(fd),
                  str(limits.cpu_seconds)]
        argv = _bwrap_argv(slot, limits) + python
        zlimits = SandboxLimits(limits.memory_mb, 10**6, limits.file_mb, limits.tmp_mb,
                                limits.processes, limits.open_files)  # the zygote lives long
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(fd,),
                                     preexec_fn=_limit(zlimits), start_new_session=True,
                                     cwd="/tmp")
        listener.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.path.unlink()
        except OSError:
            pass


def connect_zygote(folder: Path, slot: int, timeout: float = 5.0) -> Kernel | None:
    """A kernel from the slot's zygote, or None (no zygote, or it does not answer)."""
    path = zygote_path(folder, slot)
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    sock.settimeout(None)
    return Kernel(None, sock.fileno(), sock)
