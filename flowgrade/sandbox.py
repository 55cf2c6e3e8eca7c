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


def slot_uid(slot: int) -> int:
    """The sandbox uid of a grading slot: FLOWGRADE_UID_BASE + slot. A process that finds no
    base picks one from its pid and puts it in its environment (its children inherit it), so
    that two grading runs, test sessions or Dask workers on one machine never share a uid, nor
    its process limit, nor the sweep that kills a slot's leftovers between submissions."""
    base = os.environ.get("FLOWGRADE_UID_BASE")
    if base is None:
        base = os.environ["FLOWGRADE_UID_BASE"] = str(UID_BASE + 16 * (os.getpid() % 4000))
    return int(base) + slot


# System calls the kernel may not make (x86_64 numbers): SysV IPC and message queues (memory
# outside every rlimit that outlives the process, a channel between students of one slot), the
# kernel keyrings (the same channel), ptrace and cross-process memory access, namespaces and
# mounts, bpf, userfaultfd, perf. Any other architecture's system calls (i386 compatibility,
# x32) are refused whole.
_DENIED_X86_64 = {
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66,
    "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "ptrace": 101,
    "mount": 165, "umount2": 166, "semtimedop": 220, "mq_open": 240, "mq_unlink": 241,
    "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
    "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "bpf": 321,
    "userfaultfd": 323, "pidfd_getfd": 438, "fsopen": 430, "fsmount": 432, "open_tree": 428,
    "move_mount": 429, "mount_setattr": 442,
}


def seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter (``bwrap --seccomp``) refusing the calls above with EPERM;
    None off x86_64 (then the filter is not applied, and capabilities() says so)."""
    import platform
    import struct

    if platform.machine() != "x86_64":
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    nrs = sorted(set(_DENIED_X86_64.values()))
    body = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, deny),   # arch: x86_64 only
            (ld, 0, 0, 0), (jge, len(nrs) + 1, 0, 0x40000000)]           # x32: refused
    for k, nr in enumerate(nrs):
        body.append((jeq, len(nrs) - k, 0, nr))
    body += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in body)


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


def _seccomp_fd() -> int | None:
    program = seccomp_program()
    if program is None:
        return None
    r, w = os.pipe()
    os.write(w, program)
    os.close(w)
    return r


def _bwrap_argv(slot: int, limits: SandboxLimits, seccomp_fd: int | None = None) -> list[str]:
    uid = str(slot_uid(slot))
    # No user namespace: bwrap runs as root and util-linux's setpriv, inside, switches to the
    # slot's *real* uid (dropping every capability, no_new_privs), so the process limit counts
    # this slot's processes only (root is exempt from it) and signals reach nothing outside.
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--hostname", "sandbox"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    # /tmp and /dev/shm first: a course that lives under /tmp (a CI clone) is bound over them
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(16 * 2**20), "--tmpfs", "/dev/shm"]
    paths = _read_only_paths()
    parents = sorted({str(a) for p in paths for a in Path(p).parents
                      if str(a) not in ("/", "/tmp")}, key=lambda a: a.count("/"))
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
    argv += ["--perms", "0777", "--dir", "/tmp/work", "--perms", "0777", "--dir", "/tmp/home",
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


def _stop(proc: subprocess.Popen) -> None:
    """Kill a sandbox's whole process group (bwrap and all inside) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class Kernel:
    """A running sandboxed kernel: its process (None when a zygote forked it: closing the
    socket makes the zygote kill it) and the harness's end of the socket."""

    def __init__(self, proc: subprocess.Popen | None, fd: int, sock: socket.socket):
        self.proc, self.fd, self._sock = proc, fd, sock

    def kill(self) -> None:
        if self.proc is None:
            self._sock.close()
            return
        _stop(self.proc)
        self._sock.close()


def start_kernel(slot: int = 0, limits: SandboxLimits = SandboxLimits()) -> Kernel:
    """Start ``python -I -m flowgrade.kernel FD`` confined; returns once the process runs (the
    caller waits for its "ready" frame)."""
    mine, theirs = socket.socketpair()
    child_fd = theirs.fileno()
    python = [sys.executable, "-I", "-m", "flowgrade.kernel", str(child_fd)]
    seccomp = None
    if shutil.which("bwrap"):
        seccomp = _seccomp_fd()
        argv = _bwrap_argv(slot, limits, seccomp) + python
        env = None
    else:
        argv = python
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "MPLBACKEND": "Agg",
               "OMP_NUM_THREADS": "1", "FLOWLIB_PROGRESS": "0"}

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            pass_fds=(child_fd,) + ((seccomp,) if seccomp is not None else ()),
                            preexec_fn=_limit(limits), start_new_session=True, env=env,
                            cwd="/tmp")
    theirs.close()
    if seccomp is not None:
        os.close(seccomp)
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
        seccomp = _seccomp_fd()
        argv = _bwrap_argv(slot, limits, seccomp) + python
        zlimits = SandboxLimits(limits.memory_mb, 10**6, limits.file_mb, limits.tmp_mb,
                                limits.processes, limits.open_files)  # the zygote lives long
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     pass_fds=(fd,) + ((seccomp,) if seccomp is not None else ()),
                                     preexec_fn=_limit(zlimits), start_new_session=True,
                                     cwd="/tmp")
        listener.close()
        if seccomp is not None:
            os.close(seccomp)
        self.uid = slot_uid(slot)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sweep(self) -> bool:
        """Between two submissions, from the host: kill every process of the slot's uid but the
        zygote (whatever a kernel left running, even if it stopped the zygote's own wipe); True
        when the zygote is healthy (running, not stopped), else it should be replaced."""
        zygote, healthy = None, False
        for pid, uid, state, cmdline in _processes():
            if uid == self.uid and b"--zygote" in cmdline and zygote is None:
                zygote, healthy = pid, state not in "TtZX"
        for pid, uid, _, _ in _processes():
            if uid == self.uid and pid != zygote:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        return healthy and self.alive()

    def close(self) -> None:
        _stop(self.proc)
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


def _processes():
    """(pid, real uid, state letter, cmdline) of every process on the host."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as fh:
                status = fh.read().decode("latin-1")
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            uid = int(fields["Uid"].split()[0])
            state = fields["State"].split()[0]
        except (KeyError, ValueError, IndexError):
            continue
        yield int(name), uid, state, cmdline
