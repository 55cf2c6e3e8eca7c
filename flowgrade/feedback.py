"""Feedback pages a student opens: nbgrader's HTML export, sanitised.

``SanitizedHTMLExporter`` is nbgrader's feedback exporter (``GenerateFeedback.exporter_class`` in
``nbgrader_config.py``) with every page passed through :func:`flowgrade.sanitize.sanitize_html`
(the maintained sanitiser nh3, plus a Content-Security-Policy that forbids scripts and any network
load), so ``nbgrader generate_feedback`` run by hand gives the same safe pages as ``make grade``.
The autograded notebooks it renders hold no hidden test: :class:`flowgrade.preprocessor.
HarnessExecute` keeps only the visible part of each test cell and the harness's own messages.
"""
from __future__ import annotations

from nbconvert.exporters import HTMLExporter

__all__ = ["SanitizedHTMLExporter"]


class SanitizedHTMLExporter(HTMLExporter):
    """HTMLExporter whose output is sanitised (no script runs, nothing is fetched)."""

    def from_notebook_node(self, nb, resources=None, **kw):
        from .sanitize import sanitize_html

        output, resources = super().from_notebook_node(nb, resources, **kw)
        return sanitize_html(output), resources
