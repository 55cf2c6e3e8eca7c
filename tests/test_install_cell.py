"""tools/install_cell.py: the first cell of every chapter and exercise installs flowlib where it is
missing, pinned to the book's version, from the repository that _config.yml names.

The tool runs here on temporary copies of the real notebooks (other work edits the real ones), and
must be idempotent. ``test_real_notebooks`` checks the real chapters and exercises once the tool
has been applied to them (``python tools/install_cell.py book/*.ipynb solutions/*/*.ipynb``, then
``make exercises``); until then it skips, saying so. That the cell really installs flowlib in a
kernel without it is tested in tests/test_wheel.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
try:
    import install_cell as tool
finally:
    sys.path.remove(str(ROOT / "tools"))

CHAPTERS = sorted((ROOT / "book").glob("[0-9]*.ipynb"))
SOURCES = sorted((ROOT / "solutions").glob("*/*.ipynb"))
RELEASES = sorted((ROOT / "exercises").glob("*/*.ipynb"))


def _repo_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))
    return config["repository"]["url"].rstrip("/")


def _version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                     re.M).group(1)


@pytest.fixture
def copies(tmp_path: Path) -> list[Path]:
    """Temporary copies of every chapter and every instructor notebook, without the install cell
    (whether or not the real ones have it yet), in their own layout."""
    assert CHAPTERS and SOURCES, "no chapters or solutions found"
    out = []
    for nb in [*CHAPTERS, *SOURCES]:
        dst = tmp_path / nb.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        raw = nb.read_text(encoding="utf8")
        content = json.loads(raw)
        cells = [c for c in content["cells"] if not tool._is_install_cell(c)]
        if cells != content["cells"]:
            raw = tool._dumps({**content, "cells": cells})
        dst.write_text(raw, encoding="utf8")
        out.append(dst)
    return out


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "install_cell.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_settings_come_from_the_config_and_the_package_version() -> None:
    url, version = tool.settings()
    assert url == _repo_url() and url.startswith("https://github.com/")
    assert version == _version()
    assert tool.requirement(url, version) == f"flowlib @ git+{url}@v{version}"


def test_the_cell_is_a_noop_where_flowlib_is_importable() -> None:
    """The cell's code (the %pip line as IPython runs it) must not call pip when flowlib imports:
    run it with get_ipython() recording calls instead of running them."""
    from IPython.core.inputtransformer2 import TransformerManager

    assert importlib.util.find_spec("flowlib") is not None
    code = TransformerManager().transform_cell(tool.cell_source("https://example.invalid/x", "9"))
    calls = []

    class Shell:
        def run_line_magic(self, *args):
            calls.append(args)

    start = time.perf_counter()
    exec(compile(code, "<install cell>", "exec"), {"get_ipython": lambda: Shell()})
    assert time.perf_counter() - start < 0.5
    assert calls == [], "the cell ran pip although flowlib is importable"
    # ... and where flowlib is missing, it runs `%pip install --quiet "<requirement>"`.
    code = code.replace('find_spec("flowlib")', 'find_spec("flowlib_is_not_installed")')
    exec(compile(code, "<install cell>", "exec"), {"get_ipython": lambda: Shell()})
    assert calls == [("pip", 'install --quiet "flowlib @ git+https://example.invalid/x@v9"')]


def test_tool_inserts_the_cell_first_and_is_idempotent(copies: list[Path]) -> None:
    before = {p: json.loads(p.read_text(encoding="utf8")) for p in copies}
    proc = _run_tool(*map(str, copies))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("updated:") == len(copies), proc.stdout
    after = {p: p.read_bytes() for p in copies}
    url, version = _repo_url(), _version()
    for path in copies:
        nb = json.loads(after[path])
        first, rest = nb["cells"][0], nb["cells"][1:]
        assert rest == before[path]["cells"], f"{path.name}: other cells changed"
        assert nb["metadata"] == before[path]["metadata"]
        assert first["cell_type"] == "code" and first["outputs"] == []
        assert first["execution_count"] is None
        source = "".join(first["source"])
        assert 'importlib.util.find_spec("flowlib") is None' in source
        assert f'%pip install --quiet "flowlib @ git+{url}@v{version}"' in source
        assert "remove-input" in first["metadata"]["tags"]
        if (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5):
            assert first["id"] == "install-flowlib"
            ids = [c["id"] for c in nb["cells"]]
            assert len(ids) == len(set(ids)), f"{path.name}: duplicate cell ids"
        grader = first["metadata"].get("nbgrader")
        if "solutions" in path.parts:
            # Like the existing setup cells: locked, not graded, schema 3, with its own grade_id.
            assert grader == {"grade": False, "grade_id": "install_flowlib", "locked": True,
                              "schema_version": 3, "solution": False, "task": False}
            ids = [c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"]
                   if "nbgrader" in c["metadata"]]
            assert len(ids) == len(set(ids)), f"{path.name}: duplicate grade_id"
        else:
            assert grader is None, f"{path.name}: a chapter got nbgrader metadata"
        # Written as nbformat writes: still valid.
        import nbformat

        nbformat.validate(nbformat.reads(after[path].decode("utf8"), as_version=4))
    assert tool.check(copies) == []
    # A second run changes nothing, not a byte.
    proc = _run_tool(*map(str, copies))
    assert proc.returncode == 0 and "updated:" not in proc.stdout, proc.stdout
    assert {p: p.read_bytes() for p in copies} == after
    assert _run_tool("--check", *map(str, copies)).returncode == 0


def test_tool_updates_a_stale_cell_and_check_reports_it(copies: list[Path], tmp_path: Path) -> None:
    path = copies[0]
    assert _run_tool(str(path)).returncode == 0
    nb = json.loads(path.read_text(encoding="utf8"))
    # The version was bumped (or the URL changed) since the cell was written; the cell moved.
    nb["cells"][0]["source"] = [line.replace(f"@v{_version()}", "@v0.0.1")
                                for line in nb["cells"][0]["source"]]
    nb["cells"].insert(2, nb["cells"].pop(0))
    path.write_text(json.dumps(nb, indent=1), encoding="utf8")
    problems = tool.check([path])
    assert any("out of date" in p for p in problems), problems
    assert any("expected exactly one, first" in p for p in problems), problems
    proc = _run_tool("--check", str(path))
    assert proc.returncode == 1 and "out of date" in proc.stdout
    assert _run_tool(str(path)).returncode == 0
    nb = json.loads(path.read_text(encoding="utf8"))
    marked = [i for i, c in enumerate(nb["cells"])
              if "install-flowlib" in c["metadata"].get("tags", [])]
    assert marked == [0]
    assert f"@v{_version()}" in "".join(nb["cells"][0]["source"])
    assert tool.check([path]) == []
    # A notebook without the cell is reported as such.
    nb["cells"] = nb["cells"][1:]
    bare = tmp_path / "bare.ipynb"
    bare.write_text(json.dumps(nb), encoding="utf8")
    assert tool.check([bare]) == [f"{bare}: no install cell"]


def test_config_url_is_the_only_place(tmp_path: Path) -> None:
    """Changing repository.url in _config.yml changes the cell: nothing else holds the URL."""
    root = tmp_path / "root"
    root.mkdir()
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))
    config["repository"]["url"] = "https://github.com/someone-else/flows"
    (root / "_config.yml").write_text(yaml.safe_dump(config), encoding="utf8")
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    nb = tmp_path / "ch.ipynb"
    shutil.copy2(CHAPTERS[0], nb)
    assert _run_tool("--root", str(root), str(nb)).returncode == 0
    source = "".join(json.loads(nb.read_text(encoding="utf8"))["cells"][0]["source"])
    assert "git+https://github.com/someone-else/flows@v" in source
    assert _repo_url() not in source


def check_real_notebooks() -> list[str]:
    """Problems with the real notebooks' install cells: every chapter and every instructor
    notebook (tools/install_cell.py --check), and every generated exercise carries the same cell,
    locked, first. Empty when all is well. For the lead, after applying the tool:

        .venv/bin/python -c "import sys; sys.path[:0] = ['tests', 'tools']; \
            import test_install_cell as t; print(t.check_real_notebooks() or 'ok')"
    """
    problems = tool.check([*CHAPTERS, *SOURCES])
    url, version = tool.settings()
    want = tool.cell_source(url, version)
    for release in RELEASES:
        source = ROOT / "solutions" / release.relative_to(ROOT / "exercises")
        if not source.exists():
            continue
        cells = json.loads(release.read_text(encoding="utf8"))["cells"]
        first = cells[0] if cells else {}
        if "".join(first.get("source", [])) != want:
            problems.append(f"{release}: no up-to-date install cell first (run make exercises)")
        elif not first.get("metadata", {}).get("nbgrader", {}).get("locked"):
            problems.append(f"{release}: the install cell is not locked")
    return problems


def test_real_notebooks() -> None:
    marked = [p for p in [*CHAPTERS, *SOURCES]
              if not any("no install cell" in q for q in tool.check([p]))]
    if not marked:
        pytest.skip("the install cell has not been applied yet: "
                    "python tools/install_cell.py book/*.ipynb solutions/*/*.ipynb")
    problems = check_real_notebooks()
    assert not problems, "\n".join(problems)
