"""flowlib builds as a wheel that ships every file of the package, and a chapter runs on that wheel
alone in a kernel that has only what Colab's has (torch, numpy, matplotlib, a kernel): no
repository on the path, no editable install. The install cell (tools/install_cell.py) installs
flowlib in such a kernel from a git tag, as it does in Colab (here from a local repository).

The wheel is built from a copy of the files a fresh clone has (tracked or not ignored), with
``pip wheel --no-deps``. The Colab-like virtual environment is cached in ``.cache/colab-venv/``
(installing torch takes a minute or two on two busy cores): its key is the list below, the Python
version and flowlib's declared dependencies, so a change to any of them builds a fresh one, and
flowlib itself is uninstalled before each test, which first checks that it is not importable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "book" / "01_change_of_variables.ipynb"
# What a Colab kernel has that flowlib needs, and the kernel itself. torch exactly as pinned in
# requirements.txt (here a local CPU wheel; any other spec downloads the CUDA build).
COLAB = ["torch==2.13.0", "numpy", "matplotlib", "ipykernel"]
CACHE = ROOT / ".cache" / "colab-venv"

sys.path.insert(0, str(ROOT / "tools"))
try:
    import install_cell
finally:
    sys.path.remove(str(ROOT / "tools"))

pytestmark = pytest.mark.xdist_group("colab-venv")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PIP_CACHE_DIR=str(ROOT / ".cache" / "pip"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def _run(cmd: list, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          **{"env": _env(), **kw})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def _source_tree(dst: Path) -> Path:
    """The files a fresh clone of this working tree has (tracked, or untracked and not ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _packages(root: Path) -> list[str]:
    """The top-level packages pyproject.toml's packages.find includes (e.g. flowlib)."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({p.rstrip("*").rstrip(".") for p in include})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _source_tree(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source])
    [whl] = out.glob("flowlib-*.whl")
    return whl


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def colab() -> Path:
    """The Python of a virtual environment with only COLAB installed (cached, see module doc)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([COLAB, deps, sys.version_info[:2]]).encode()).hexdigest()[:12]
    venv = CACHE / key
    python = venv / "bin" / "python"
    with _locked(CACHE / ".lock"):
        if not (venv / ".complete").exists():
            for old in CACHE.iterdir():  # environments of other keys, or a half-built one
                if old.is_dir():
                    shutil.rmtree(old)
            _run([sys.executable, "-m", "venv", venv])
            _run([python, "-m", "pip", "install", "-q", *COLAB], timeout=1200)
            (venv / ".complete").touch()
    return python


def _uninstall_flowlib(python: Path, cwd: Path) -> None:
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "flowlib"], env=_env(),
                   capture_output=True, timeout=120)
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('flowlib') is not None)"
    proc = subprocess.run([str(python), "-c", probe], cwd=cwd, env=_env(), timeout=60)
    assert proc.returncode == 0, "flowlib is importable in the Colab-like environment"


def _execute(nb: Path, python: Path, work: Path) -> dict:
    """Execute ``nb`` in ``work`` on a kernel of ``python``; return the executed notebook."""
    kernels = work / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like", "language": "python",
    }), encoding="utf8")
    env = _env(JUPYTER_PATH=str(work / "jupyter"), MPLBACKEND="Agg", FLOWLIB_PROGRESS="0",
               OMP_NUM_THREADS="1", MPLCONFIGDIR=str(work / "mpl"),
               IPYTHONDIR=str(work / "ipython"))
    _run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
          "--ExecutePreprocessor.kernel_name=colab", "--ExecutePreprocessor.timeout=600",
          "--output", "executed.ipynb", nb.name], cwd=work, env=env, timeout=900)
    return json.loads((work / "executed.ipynb").read_text(encoding="utf8"))


WHERE = ("import flowlib, pathlib\n"
         "print('FLOWLIB', pathlib.Path(flowlib.__file__).resolve().parent,"
         " hasattr(flowlib, '_AFTER_TAG'))")


def _where(executed: dict) -> tuple[Path, bool]:
    """Where the flowlib that ran lives, and whether it has a commit made after the tag."""
    out = "".join("".join(o.get("text", "")) for o in executed["cells"][-1]["outputs"]
                  if o.get("name") == "stdout")
    assert out.startswith("FLOWLIB "), out
    return Path(out.split()[1]), out.split()[2] == "True"


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, env=_env(), check=True).stdout
    return Path(out.strip()).resolve()


def _notebook(cells: list[dict], like: dict) -> dict:
    return {**like, "cells": cells}


def _code(source: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": source}


def test_wheel_ships_every_file_of_the_package(wheel: Path, source: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    print(f"\n{wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB, {len(names)} files")
    packages = _packages(source)
    assert "flowlib" in packages
    for package in packages:
        files = [p.relative_to(source).as_posix() for p in (source / package).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        assert files, f"{package}/ is empty"
        missing = sorted(set(files) - names)
        assert not missing, f"the wheel does not ship {missing} (package data?)"
    # Nothing but the packages and their metadata: never the solutions, tests, book or tools.
    tops = {n.split("/")[0] for n in names}
    assert tops == {*packages, f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for dep in ("torch", "numpy", "matplotlib"):
        assert f"Requires-Dist: {dep}" in metadata, f"the wheel does not require {dep}"


def test_a_chapter_runs_on_the_wheel_alone(wheel: Path, colab: Path, tmp_path: Path) -> None:
    work = tmp_path / "colab"
    work.mkdir()
    _uninstall_flowlib(colab, work)
    _run([colab, "-m", "pip", "install", "-q", wheel], cwd=work, timeout=600)
    # The chapter as a reader gets it: install cell first (a no-op here), then a cell saying which
    # flowlib ran.
    nb = json.loads(CHAPTER.read_text(encoding="utf8"))
    url, version = install_cell.settings()
    nb = install_cell.apply(nb, url, version)
    nb["cells"].append(_code(WHERE))
    path = work / CHAPTER.name
    path.write_text(json.dumps(nb), encoding="utf8")
    executed = _execute(path, colab, work)
    errors = [o for c in executed["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    where, _ = _where(executed)
    assert where.parent == _site_packages(colab), f"flowlib ran from {where}, not from the wheel"
    assert ROOT / "flowlib" != where


def test_install_cell_installs_flowlib_from_the_tag(source: Path, colab: Path,
                                                    tmp_path: Path) -> None:
    """Colab's path: no flowlib, the first cell pip-installs it from the repository at tag
    v<version> (a local repository standing in for GitHub), and the next cell imports it. Run
    again, the cell does nothing (its URL is then unreachable, and nothing fails)."""
    env = _env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org", GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_NOSYSTEM="1")
    repo = tmp_path / "repo"
    shutil.copytree(source, repo)
    _, version = install_cell.settings()
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "course"],
                ["tag", f"v{version}"]):
        _run(["git", *cmd], cwd=repo, env=env)
    # A commit after the tag, which the cell must not install.
    with open(repo / "flowlib" / "__init__.py", "a", encoding="utf8") as handle:
        handle.write("\n_AFTER_TAG = True\n")
    _run(["git", "commit", "-q", "-am", "after the release"], cwd=repo, env=env)
    work = tmp_path / "colab"
    work.mkdir()
    _uninstall_flowlib(colab, work)
    like = json.loads(CHAPTER.read_text(encoding="utf8"))
    # One kernel: the install cell, flowlib's whereabouts, the install cell again with a URL that
    # does not exist (a no-op now that flowlib is there), flowlib's whereabouts again.
    # file://localhost/...: a URL with a host, as pip's requirement syntax wants.
    cells = []
    for url in (f"file://localhost{repo}", f"file://localhost{tmp_path / 'gone'}"):
        first = install_cell.apply(_notebook([], like), url, version)["cells"][0]
        cells += [{**first, "id": f"install-{len(cells)}"}, _code(WHERE)]
    (work / "nb.ipynb").write_text(json.dumps(_notebook(cells, like)), encoding="utf8")
    executed = _execute(work / "nb.ipynb", colab, work)
    for n in (2, 4):
        where, after_tag = _where({"cells": executed["cells"][:n]})
        assert where.parent == _site_packages(colab), f"flowlib installed in {where}"
        assert not after_tag, "the cell installed a commit after the tag"
    proc = _run([colab, "-m", "pip", "show", "-f", "flowlib"], cwd=work)
    assert f"Version: {version}" in proc.stdout
