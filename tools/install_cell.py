#!/usr/bin/env python3
"""Give every chapter and exercise a first cell that installs flowlib where it is missing.

A chapter opened from the book's Colab button (or downloaded into any Jupyter) runs in a kernel
that has torch, numpy and matplotlib but not the course's library. Its first cell installs
``flowlib`` from the course repository, pinned to the version the book was written with::

    %pip install --quiet "flowlib @ git+<repository.url>@v<version>"

``<repository.url>`` is ``repository.url`` of ``_config.yml`` (the one place that names the
repository) and ``<version>`` is ``project.version`` of ``pyproject.toml``: a release is tagged
``v<version>``. Where flowlib is importable already (``make lab``, Binder, the book's build, CI,
the grading kernel) the cell costs one ``importlib.util.find_spec`` call and does nothing.

The cell is tagged ``remove-input`` (the book shows neither it nor, as it prints nothing, an
output). In an nbgrader source notebook (any cell with ``nbgrader`` metadata, i.e. ``solutions/``)
it is a locked, ungraded cell with its own ``grade_id``, so ``generate_assignment`` copies it into
the student version. Running the tool again only rewrites notebooks whose cell is missing or out of
date (the repository URL or the version changed), so it is idempotent.

Usage (from the repository root)::

    python tools/install_cell.py book/*.ipynb solutions/*/*.ipynb          # insert or update
    python tools/install_cell.py --check book/*.ipynb solutions/*/*.ipynb  # exit 1 if out of date

``check(paths)`` returns the problems as strings (empty: all good); ``tests/test_install_cell.py``
runs it on the real notebooks once they carry the cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CELL_ID = "install-flowlib"  # the cell's id (nbformat >= 4.5) and the tag that marks it
GRADE_ID = "install_flowlib"  # nbgrader's grade_id (^[a-zA-Z0-9_-]*$)
HIDE_TAG = "remove-input"  # myst-nb: the book does not show the source
NBGRADER = {"grade": False, "grade_id": GRADE_ID, "locked": True, "schema_version": 3,
            "solution": False, "task": False}

__all__ = ["settings", "requirement", "cell_source", "make_cell", "apply", "update", "check",
           "main"]


def settings(root: Path = ROOT) -> tuple[str, str]:
    """(repository URL from ``_config.yml``, flowlib's version from ``pyproject.toml``)."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf8")) or {}
    url = ((config.get("repository") or {}).get("url") or "").strip().rstrip("/")
    if not url.startswith("https://"):
        raise SystemExit(f"_config.yml: repository.url must be an https URL, not {url!r}")
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf8"))["project"]
    return url, project["version"]


def requirement(url: str, version: str) -> str:
    """The pip requirement of flowlib at the tag of ``version``."""
    return f"flowlib @ git+{url}@v{version}"


def cell_source(url: str, version: str) -> str:
    return (
        "# Colab or any Jupyter without the course's library: install flowlib, the version this\n"
        "# book was written with, from the course repository. A no-op where flowlib is installed\n"
        "# (`make lab`, Binder, the book's build).\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("flowlib") is None:\n'
        f'    %pip install --quiet "{requirement(url, version)}"\n'
        "    importlib.invalidate_caches()\n"
        "    import flowlib  # fails here, under pip's message, if the install did not work"
    )


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _is_nbgrader(nb: dict) -> bool:
    return any("nbgrader" in cell.get("metadata", {}) for cell in nb.get("cells", []))


def _has_ids(nb: dict) -> bool:
    return (nb.get("nbformat", 4), nb.get("nbformat_minor", 0)) >= (4, 5)


def _is_install_cell(cell: dict) -> bool:
    meta = cell.get("metadata", {})
    return (cell.get("id") == CELL_ID or CELL_ID in meta.get("tags", [])
            or meta.get("nbgrader", {}).get("grade_id") == GRADE_ID)


def make_cell(nb: dict, url: str, version: str) -> dict:
    """The install cell for notebook ``nb`` (its nbgrader metadata and id follow the notebook)."""
    meta: dict = {"tags": [HIDE_TAG, CELL_ID]}
    if _is_nbgrader(nb):
        meta["nbgrader"] = dict(NBGRADER)
    cell = {"cell_type": "code", "execution_count": None, "metadata": meta, "outputs": [],
            "source": _lines(cell_source(url, version))}
    if _has_ids(nb):
        cell["id"] = CELL_ID
    return cell


def apply(nb: dict, url: str, version: str) -> dict:
    """``nb`` with exactly one install cell, first; every other cell untouched."""
    rest = [cell for cell in nb.get("cells", []) if not _is_install_cell(cell)]
    if _has_ids(nb) and any(cell.get("id") == CELL_ID for cell in rest):
        raise ValueError(f"another cell already has the id {CELL_ID!r}")
    return {**nb, "cells": [make_cell(nb, url, version), *rest]}


def _dumps(nb: dict) -> str:
    # nbformat's own layout (nbformat.writes): one-space indent, sorted keys, UTF-8 as is.
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def update(path: Path, url: str, version: str) -> bool:
    """Insert or update the install cell of the notebook at ``path``; True if it was rewritten."""
    raw = path.read_text(encoding="utf8")
    nb = json.loads(raw)
    new = apply(nb, url, version)
    if new == nb:
        return False
    path.write_text(_dumps(new), encoding="utf8")
    return True


def _cell_problems(nb: dict, url: str, version: str) -> list[str]:
    cells = nb.get("cells", [])
    found = [i for i, cell in enumerate(cells) if _is_install_cell(cell)]
    if not found:
        return ["no install cell"]
    out = []
    if found != [0]:
        out.append(f"install cell(s) at {found}, expected exactly one, first")
    cell, want = cells[found[0]], make_cell(nb, url, version)
    if cell.get("cell_type") != "code":
        out.append("the install cell is not a code cell")
    if "".join(cell.get("source", [])) != "".join(want["source"]):
        out.append(f"the install cell is out of date (want {requirement(url, version)!r}): "
                   "rerun tools/install_cell.py")
    if HIDE_TAG not in cell.get("metadata", {}).get("tags", []):
        out.append(f"the install cell is not tagged {HIDE_TAG!r}")
    if _is_nbgrader(nb):
        grader = cell.get("metadata", {}).get("nbgrader", {})
        # nbgrader's generated (release) version adds a checksum; the rest must be as written.
        wrong = {k: grader.get(k) for k, v in NBGRADER.items() if grader.get(k) != v}
        if wrong:
            out.append(f"the install cell's nbgrader metadata differs: {wrong}")
    if cell.get("outputs"):
        out.append("the install cell has outputs")
    return out


def check(paths: list[Path] | list[str], root: Path = ROOT) -> list[str]:
    """Problems of the notebooks at ``paths`` (empty: each has an up-to-date install cell)."""
    url, version = settings(root)
    problems = []
    for path in map(Path, paths):
        nb = json.loads(path.read_text(encoding="utf8"))
        problems += [f"{path}: {p}" for p in _cell_problems(nb, url, version)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook's install cell is missing or "
                             "out of date")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository root holding _config.yml and pyproject.toml")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.notebooks, args.root)
        print("\n".join(problems) or f"{len(args.notebooks)} notebooks up to date")
        return 1 if problems else 0
    url, version = settings(args.root)
    for path in args.notebooks:
        changed = update(path, url, version)
        print(f"{'updated' if changed else 'up to date'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
