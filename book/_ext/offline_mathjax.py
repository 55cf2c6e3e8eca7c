"""Serve MathJax from the book itself, so that its math renders with no network.

Sphinx (and Jupyter Book) load MathJax 3 from a CDN by default. ``jupyter-server-mathjax``, pinned
in requirements.txt, ships MathJax 2.7 (the combined ``TeX-AMS-MML_HTMLorMML-full`` configuration
and the STIX-Web fonts; there is no SVG output jax and there are no TeX fonts in that copy). This
extension

* copies that MathJax into ``_static/mathjax/`` of the HTML build;
* points ``mathjax_path`` at the local copy, configured for MathJax 2 (``mathjax2_config``):
  STIX-Web web fonts for the HTML-CSS output (the only fonts shipped), and ``tex2jax`` limited to
  the elements Sphinx marks as math (``\\(...\\)`` and ``\\[...\\]`` inside ``.math``), which is
  what MyST's ``dollarmath``/``amsmath`` produce. Dollar signs elsewhere (code, outputs) are left
  alone, as myst-parser arranges for MathJax 3;
* drops the MathJax 3 settings (``mathjax3_config``) so no MathJax 3 configuration reaches the page;
* adds a few lines of CSS (``_static/offline_mathjax.css``): the theme's styling of ``span.math``
  (made for MathJax 3, with ``overflow: hidden``) would lift MathJax 2's inline output above the
  text baseline.

Set ``myst_update_mathjax: false`` in the Sphinx config: myst-parser would otherwise write a
MathJax 3 configuration (``window.MathJax = ...``) that MathJax 2 would read as its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.util import logging

__all__ = ["mathjax_source", "MATHJAX_CONFIG", "MATHJAX2_CONFIG", "setup"]

logger = logging.getLogger(__name__)

# Relative to _static/: Sphinx turns it into a relative URL on every page (no server needed).
# The "MathJax.js?" query is a case Sphinx knows (it adds no checksum to it).
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full"
MATHJAX_PATH = f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"

_STATIC = Path(__file__).resolve().parent / "_static"

MATHJAX2_CONFIG = {
    "tex2jax": {
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processEscapes": False,
        "processEnvironments": False,
        "processRefs": False,
        # MyST marks each page "tex2jax_ignore"; Sphinx wraps every formula in class "math".
        "processClass": "tex2jax_process|mathjax_process|math|output_area",
        "ignoreClass": "tex2jax_ignore|mathjax_ignore",
    },
    "TeX": {"extensions": ["AMSmath.js", "AMSsymbols.js", "noErrors.js", "noUndefined.js"]},
    # The copy ships STIX-Web web fonts only: never look for local or image TeX fonts.
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web",
                 "imageFont": None},
    "messageStyle": "none",
}


def mathjax_source() -> Path:
    """The MathJax 2 tree shipped by jupyter-server-mathjax (the folder holding MathJax.js)."""
    try:
        import jupyter_server_mathjax
    except ImportError as err:  # the requirement is pinned; say so rather than fall back to a CDN
        raise ExtensionError("offline_mathjax: jupyter-server-mathjax is not installed "
                             "(it is in requirements.txt)") from err
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (src / "MathJax.js").is_file() or not (src / "config" / f"{MATHJAX_CONFIG}.js").is_file():
        raise ExtensionError(f"offline_mathjax: no MathJax 2 with {MATHJAX_CONFIG}.js under {src}")
    return src


def _configure(app: Sphinx, config: Config) -> None:
    mathjax_source()  # fail early, before any page is written
    config.mathjax_path = MATHJAX_PATH
    config.mathjax2_config = MATHJAX2_CONFIG
    config.mathjax3_config = None
    # A style fix for MathJax 2 inside the theme (see _static/offline_mathjax.css).
    config.html_static_path = [*config.html_static_path, str(_STATIC)]
    app.add_css_file("offline_mathjax.css")


def _copy(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    dest = Path(app.outdir) / "_static" / "mathjax"
    shutil.copytree(mathjax_source(), dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    logger.info("offline_mathjax: MathJax 2 copied to %s", dest)


def setup(app: Sphinx) -> dict:
    # After sphinx.ext.mathjax has registered its settings and after the user's config is read.
    app.connect("config-inited", _configure, priority=900)
    app.connect("build-finished", _copy)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
