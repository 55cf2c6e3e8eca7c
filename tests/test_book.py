"""The book builds with warnings as errors, reaches every chapter, renders math offline and never
shows a hidden test.

The book is built once, from the repository root and its real ``_config.yml`` / ``_toc.yml``, but
with notebook execution switched off and into a temporary folder: nbval already executes every
chapter in the same test run (``make test``), so executing them again here would double the time.
``make book`` is the build that executes them.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# One build for the whole module, in one xdist worker (``--dist loadfile`` keeps a file together;
# the group does the same under ``--dist loadgroup``).
pytestmark = pytest.mark.xdist_group("book")

HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS(.*?)### END HIDDEN TESTS", re.S)
# A MathJax from the network: Sphinx's default (cdn.jsdelivr.net/npm/mathjax@3), cdnjs, mathjax.org.
MATHJAX_CDN = re.compile(r"(?:https?:)?//[^\"'\s]*mathjax|mathjax@\d", re.I)
EXTERNAL_ASSET = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"", re.I)


def _toc_docs() -> tuple[str, list[str]]:
    """The root document and every other document of _toc.yml, as paths without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf8"))
    docs: list[str] = []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                docs.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))
            for part in entry.get("parts", []) or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return toc["root"], docs


def _jupyter_book() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    found = str(exe) if exe.exists() else shutil.which("jupyter-book")
    if not found:
        pytest.fail("jupyter-book is not installed (it is in requirements.txt)")
    return found


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """Build the book without executing notebooks; return the HTML folder."""
    out = tmp_path_factory.mktemp("book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf8"))
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    # Jupyter Book resolves local extensions relative to the config file, which now lives in tmp.
    ext = config.get("sphinx", {}).get("local_extensions") or {}
    config["sphinx"]["local_extensions"] = {name: str((ROOT / path).resolve())
                                            for name, path in ext.items()}
    (out / "_config.yml").write_text(yaml.safe_dump(config), encoding="utf8")
    cmd = [_jupyter_book(), "build", "--all", "-W", "-n", "--keep-going",
           "--path-output", str(out), "--config", str(out / "_config.yml"), str(ROOT)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the book does not build with -W -n:\n{log[-6000:]}"
    html_dir = out / "_build" / "html"
    assert (html_dir / "index.html").is_file(), "no index.html"
    return html_dir


def _pages(book: Path) -> list[Path]:
    return sorted(p for p in book.rglob("*.html") if "_static" not in p.parts)


def test_every_toc_document_has_a_page(book: Path) -> None:
    root, docs = _toc_docs()
    for doc in [root, *docs]:
        assert (book / f"{doc}.html").is_file(), f"{doc} (in _toc.yml) has no HTML page"
    index = (book / "index.html").read_text(encoding="utf8")
    assert f"{root}.html" in index, "index.html does not lead to the preface"


def test_preface_links_to_every_chapter(book: Path) -> None:
    root, docs = _toc_docs()
    preface = (book / f"{root}.html").read_text(encoding="utf8")
    # Only the page's own content, not the sidebar (which lists every page of any book).
    main = preface.split('<article class="bd-article"', 1)[-1].split("</article>", 1)[0]
    links = set(re.findall(r'href="([^"#]+)', main))
    here = Path(root).parent
    for doc in docs:
        rel = Path(doc).relative_to(here) if Path(doc).is_relative_to(here) else Path(doc)
        assert f"{rel.as_posix()}.html" in links, f"the preface does not link to {doc}"


def test_math_is_served_locally(book: Path) -> None:
    assert (book / "_static" / "mathjax" / "MathJax.js").is_file(), "MathJax was not copied"
    config = book / "_static" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js"
    assert config.is_file(), "the MathJax configuration file is missing"
    with_math = 0
    for page in _pages(book):
        text = page.read_text(encoding="utf8")
        cdn = MATHJAX_CDN.search(text)
        assert not cdn, f"{page.name} refers to a MathJax on the network: {cdn.group(0)!r}"
        external = EXTERNAL_ASSET.findall(text)
        assert not external, f"{page.name} loads external assets: {external[:3]}"
        if 'class="math' in text:
            with_math += 1
            assert "_static/mathjax/MathJax.js?config=" in text, f"{page.name}: no local MathJax"
            assert "window.MathJax" not in text, f"{page.name}: a MathJax 3 config reached MathJax 2"
    assert with_math >= 1, "no page has math: the check above checked nothing"


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_no_hidden_test_in_the_book(book: Path) -> None:
    blocks, visible = [], []
    for nb in sorted((ROOT / "solutions").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        cells = json.loads(nb.read_text(encoding="utf8"))["cells"]
        source = "\n".join("".join(c["source"]) for c in cells)
        blocks += [b for b in HIDDEN.findall(source) if b.strip()]
        visible.append(HIDDEN.sub("", source))
    if not blocks:
        pytest.skip("no hidden tests in solutions/ yet")
    # A hidden line that is also public (in a visible test, which the exercise notebook offered
    # for download holds, or in the book's own sources) proves nothing.
    public = "\n".join(visible) + "\n".join(
        p.read_text(encoding="utf8", errors="replace")
        for p in (ROOT / "book").rglob("*") if p.suffix in (".md", ".ipynb"))
    lines = {line.strip() for b in blocks for line in b.splitlines()}
    lines = {line for line in lines if len(line) >= 30 and not line.startswith("#")
             and line not in public and json.dumps(line)[1:-1] not in public}
    outputs = [p for p in book.rglob("*") if p.is_file()
               and p.suffix in (".html", ".ipynb", ".txt", ".md", ".js", ".json")
               and "mathjax" not in p.parts]
    assert outputs, "nothing was built"
    for path in outputs:
        raw = path.read_text(encoding="utf8", errors="replace")
        text = html.unescape(raw)
        assert "HIDDEN TESTS" not in text, f"{path.relative_to(book)} holds a hidden-test marker"
        flat = _normalise(text)
        for block in blocks:
            assert _normalise(block) not in flat, f"{path.relative_to(book)} holds a hidden test"
        for line in lines:
            assert line not in text and json.dumps(line)[1:-1] not in raw, \
                f"{path.relative_to(book)} holds a line of a hidden test: {line!r}"


def test_appendix_shows_the_benchmark_results(book: Path) -> None:
    page = (book / "book" / "appendix_benchmarks.html").read_text(encoding="utf8")
    assert page.count("<table") >= 4, "the benchmark tables did not reach the appendix"
    for lib in ("flowlib", "zuko", "nflows", "normflows"):
        assert f"<td><p>{lib}</p></td>" in page or f"<td>{lib}</td>" in page, lib
    img = re.search(r'<img[^>]+src="([^"]*sampling_cpu\.png)"', page)
    assert img, "the sampling plot is missing"
    assert (book / "book" / img.group(1)).resolve().is_file(), "the plot was not copied"


def test_the_schematic_diagrams_reach_their_chapters(book: Path) -> None:
    """The committed SVG diagrams (coupling layer, multi-scale architecture) are shown, and the
    files were copied next to the pages."""
    for page, svg in (("02_nice", "coupling.svg"), ("03_realnvp", "multiscale.svg")):
        html_text = (book / "book" / f"{page}.html").read_text(encoding="utf8")
        img = re.search(rf'<img[^>]+src="([^"]*{re.escape(svg)})"', html_text)
        assert img, f"{svg} is not shown in {page}"
        assert (book / "book" / img.group(1)).resolve().is_file(), f"{svg} was not copied"
