"""`make lab` serves the course, as whatever user runs it (root included: containers, CI).

The test runs `make lab` itself, so it starts JupyterLab with exactly the Makefile's command, on a
free port (PORT) and with a token it draws (LAB_TOKEN), then asks the server for an exercise
notebook and for the course kernel, and stops the whole process group. Nothing may be left running
and the port must be free again afterwards.
"""

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "exercises/ps1_change_of_variables/ps1_change_of_variables.ipynb"
KERNEL = "Python 3 (flows)"
START_S = 45  # deadline for the server to answer (about 5 s on 2 idle cores)
STOP_S = 15  # deadline for it to exit after SIGTERM, before SIGKILL
# No proxy for localhost, whatever http_proxy says.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port():
    """A port nothing listens on, on 127.0.0.1 nor ::1 (JupyterLab binds "localhost": both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not socket.has_ipv6:
            return port
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                s6.bind(("::1", port))
            return port
        except OSError as e:  # taken on ::1 (draw again), or no IPv6 loopback at all
            if e.errno == errno.EADDRNOTAVAIL:
                return port
    raise RuntimeError("no free port found")


def _listening(port):
    """Whether anything accepts connections on localhost:port (any address family)."""
    for family, kind, proto, _, addr in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as s:
            s.settimeout(2)
            try:
                s.connect(addr)
                return True
            except OSError:
                pass
    return False


def _group_alive(pgid):
    """Live (non-zombie) processes of the process group; on Linux read from /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
            return ["?"]
        except ProcessLookupError:
            return []
    alive = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        state, _ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(f"{stat.parent.name} {text[: text.rindex(')') + 1]}")
    return alive


def _stop(proc):
    """SIGTERM to the whole process group (make, the shell, JupyterLab), SIGKILL past STOP_S.
    Returns what is still alive (nothing, normally)."""
    pgid = proc.pid  # start_new_session: the group's id is make's pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return []
            time.sleep(0.1)
    proc.wait(5)
    return _group_alive(pgid)


def _get(port, path, token, timeout=10):
    """GET http://localhost:port/path; returns (status, parsed JSON body or None)."""
    request = urllib.request.Request(f"http://localhost:{port}/{path}")
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def _make_lab_env():
    """The caller's environment, less what an outer make (`make test`) passes to sub-makes, so
    `make lab` runs as typed in a shell; the Makefile itself exports the JUPYTER_* dirs."""
    env = dict(os.environ)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "LAB_ARGS", "JUPYTER_TOKEN"):
        env.pop(name, None)
    return env


def test_make_lab_command():
    """The command opens no browser, keeps the notebook dir, and adds --allow-root only as root."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "lab"],
        cwd=ROOT, env=_make_lab_env(), capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert "jupyter lab" in out and "--no-browser" in out, out
    assert f"--notebook-dir={ROOT}" in out, out
    assert ("--allow-root" in out) == (os.geteuid() == 0), out


def test_make_lab_serves_the_course():
    port, token = _free_port(), secrets.token_hex(16)
    # -o: the test is about the lab recipe; `make test` has just brought the venv up to date, and a
    # stamp older than a freshly touched requirements.txt must not start a pip install here.
    cmd = ["make", "--no-print-directory", "-o", ".venv/.installed", "lab",
           f"PORT={port}", f"LAB_TOKEN={token}"]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_make_lab_env(), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output():
        log.seek(0)
        return f"$ {' '.join(cmd)}\n{log.read()[-6000:]}"

    t0 = time.monotonic()
    try:
        # Poll until the server answers, with a deadline (no fixed sleeps).
        while True:
            assert proc.poll() is None, f"make lab exited ({proc.returncode}):\n{output()}"
            assert time.monotonic() - t0 < START_S, f"no answer in {START_S} s:\n{output()}"
            try:
                status, body = _get(port, "api/status", token, timeout=2)
                if status == 200:
                    break
            except (OSError, ValueError):
                pass  # not listening yet
            time.sleep(0.2)
        started = time.monotonic() - t0

        # Authentication is on: without the token, nothing.
        assert _get(port, "api/status", None)[0] == 403, output()

        # The exercise notebook, through the contents API.
        status, model = _get(port, "api/contents/" + urllib.parse.quote(NOTEBOOK), token)
        assert status == 200, output()
        assert model["type"] == "notebook" and model["path"] == NOTEBOOK, model["path"]
        on_disk = json.loads((ROOT / NOTEBOOK).read_text())
        assert len(model["content"]["cells"]) == len(on_disk["cells"]) > 0

        # The course kernel, the one `make venv` installs into .venv, is listed and the default.
        status, specs = _get(port, "api/kernelspecs", token)
        assert status == 200, output()
        names = {name: s["spec"]["display_name"] for name, s in specs["kernelspecs"].items()}
        assert KERNEL in names.values(), names
        assert names[specs["default"]] == KERNEL, (specs["default"], names)
        course = next(s["spec"] for s in specs["kernelspecs"].values()
                      if s["spec"]["display_name"] == KERNEL)
        assert Path(course["argv"][0]).parent.resolve() == (ROOT / ".venv" / "bin").resolve()
    finally:
        left = _stop(proc)
        log.close()
    assert not left, f"still running after SIGKILL: {left}"
    assert not _listening(port), f"port {port} still answers after make lab stopped"
    print(f"make lab answered in {started:.1f} s")
