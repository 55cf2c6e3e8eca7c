"""``HarnessExecute``: nbgrader's ``Execute`` replaced by the split execution.

Configured in ``nbgrader_config.py`` as the first of ``Autograde.autograde_preprocessors``, so
``nbgrader autograde`` run by hand, the formgrader and ``python -m flowgrade`` all grade the same
way. For each code cell of the submitted notebook, in order:

* a **test cell** (a grade cell that is not a solution, as the *gradebook* says) runs in the
  trusted harness, from the gradebook's source, never the notebook's; its outputs are the
  harness's (what the test printed, or one error line: the exception type and the harness's
  message); its source in the autograded notebook keeps the visible part only;
* a **read-only course cell** (locked in the gradebook, its source unchanged) runs in the harness
  and in the sandboxed kernel;
* **any other cell** (the student's) runs in the sandboxed kernel only; its printed text (capped)
  is kept, as plain text.

Which cell is which is decided by the gradebook alone: metadata a student forges (a new "locked"
cell, a changed grade_id) makes a cell the student's, never the instructor's.
"""
from __future__ import annotations

import os

from nbformat.v4 import new_output
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Float, Integer

from .harness import Harness
from .sandbox import SandboxLimits

__all__ = ["HarnessExecute", "visible_part", "HIDDEN_PLACEHOLDER"]

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
HIDDEN_PLACEHOLDER = "# (hidden tests ran here, in the grader; they are not shown)"


def visible_part(source: str) -> str:
    """The test cell without its hidden region (one placeholder line instead)."""
    out, inside = [], False
    for line in source.split("\n"):
        if BEGIN in line:
            inside = True
            out.append(HIDDEN_PLACEHOLDER)
        elif END in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


class HarnessExecute(NbGraderPreprocessor):
    """Run the student's cells in a sandboxed kernel and the tests in the trusted harness."""

    timeout = Integer(60, help="Seconds one cell may run (student cells and tests).").tag(
        config=True)
    memory_mb = Integer(4096, help="Address-space limit of the student's kernel.").tag(
        config=True)
    cpu_seconds = Integer(900, help="CPU seconds of the student's kernel.").tag(config=True)
    start_timeout = Float(180.0, help="Seconds to wait for the kernel to start.").tag(
        config=True)
    max_stdout = Integer(20_000, help="Characters of a student cell's printed text kept.").tag(
        config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        trusted = _trusted_cells(info["db_url"], info["notebook"], info["assignment"])
        slot = int(os.environ.get("FLOWGRADE_SLOT", "0") or 0)
        limits = SandboxLimits(memory_mb=self.memory_mb, cpu_seconds=self.cpu_seconds)
        harness = Harness(slot, limits, cell_timeout=self.timeout,
                          start_timeout=self.start_timeout)
        try:
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                role, source = trusted.get(gid, ("student", None))
                if role == "test":
                    result = harness.run_test_cell(source, gid)
                    cell.source = visible_part(source)
                    cell.outputs = _test_outputs(result)
                elif role == "course" and cell.source == source:
                    harness.run_instructor_cell(source)
                    cell.outputs = []
                else:
                    out = harness.run_student_cell(cell.source)
                    cell.outputs = _student_outputs(out, self.max_stdout)
                cell.execution_count = None
        finally:
            harness.close()
        return nb, resources


def _trusted_cells(db_url: str, notebook: str, assignment: str) -> dict[str, tuple[str, str]]:
    """grade_id -> ("test" | "course", source), from the gradebook."""
    out: dict[str, tuple[str, str]] = {}
    with Gradebook(db_url) as gb:
        try:
            nb = gb.find_notebook(notebook, assignment)
        except MissingEntry:
            return out
        graded = {c.name for c in nb.grade_cells}
        solutions = {c.name for c in nb.solution_cells}
        for cell in nb.source_cells:
            if cell.cell_type != "code":
                continue
            if cell.name in graded and cell.name not in solutions:
                out[cell.name] = ("test", cell.source)
            elif cell.locked and cell.name not in solutions:
                out[cell.name] = ("course", cell.source)
    return out


def _test_outputs(result) -> list:
    outs = []
    if result.stdout:
        outs.append(new_output("stream", name="stdout", text=result.stdout[:20_000]))
    if not result.ok:
        outs.append(new_output("error", ename=result.error or "Error",
                               evalue=result.message,
                               traceback=[f"{result.error}: {result.message}"]))
    return outs


def _student_outputs(out: dict, cap: int) -> list:
    outs = []
    if out.get("stdout"):
        outs.append(new_output("stream", name="stdout", text=out["stdout"][:cap]))
    if not out.get("ok"):
        name = out.get("error") or "Error"
        if not name.isidentifier():
            name = "Error"
        outs.append(new_output("error", ename=name, evalue="raised in this cell",
                               traceback=[f"{name} (raised in this cell)"]))
    return outs
