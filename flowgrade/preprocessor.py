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
* **any other cell** (the student's) runs in the sandboxed kernel only; its output is not kept
  (a cell run after a hidden test could print what that test passed it), only the fact that it
  raised.

The tests see, of the student's names, only the functions the assignment asks for: names the
instructor's solution cells define and the test cells use (never a builtin such as ``abs``, never
a name a course or test cell bound).

Which cell is which is decided by the gradebook alone: metadata a student forges (a new "locked"
cell, a changed grade_id) makes a cell the student's, never the instructor's.
"""
from __future__ import annotations

import ast
import builtins
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

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        trusted, answers = _trusted_cells(info["db_url"], info["notebook"], info["assignment"])
        slot = int(os.environ.get("FLOWGRADE_SLOT", "0") or 0)
        limits = SandboxLimits(memory_mb=self.memory_mb, cpu_seconds=self.cpu_seconds)
        used = set().union(*[_free_names(src) for role, src in trusted.values() if role == "test"])
        harness = Harness(slot, limits, cell_timeout=self.timeout,
                          start_timeout=self.start_timeout,
                          student_names=(answers & used) - set(dir(builtins)))
        try:
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                role, source = trusted.get(gid, ("student", None))
                if role == "test":
                    result = harness.run_test_cell(source, gid)
                    cell.source = visible_part(source)
                    cell.outputs = _test_outputs(result, hidden=BEGIN in source)
                elif role == "course" and cell.source == source:
                    harness.run_instructor_cell(source)
                    cell.outputs = []
                else:
                    out = harness.run_student_cell(cell.source)
                    cell.outputs = _student_outputs(out)
                cell.execution_count = None
        finally:
            harness.close()
        return nb, resources


def _free_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _bound_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _trusted_cells(db_url: str, notebook: str, assignment: str
                   ) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """grade_id -> ("test" | "course", source), from the gradebook; and the names the
    instructor's solution cells define (what the assignment asks the student to write)."""
    out: dict[str, tuple[str, str]] = {}
    answers: set[str] = set()
    with Gradebook(db_url) as gb:
        try:
            nb = gb.find_notebook(notebook, assignment)
        except MissingEntry:
            return out, answers
        graded = {c.name for c in nb.grade_cells}
        solutions = {c.name for c in nb.solution_cells}
        for cell in nb.source_cells:
            if cell.cell_type != "code":
                continue
            if cell.name in solutions:
                answers |= _bound_names(cell.source)
            if cell.name in graded and cell.name not in solutions:
                out[cell.name] = ("test", cell.source)
            elif cell.locked and cell.name not in solutions:
                out[cell.name] = ("course", cell.source)
    return out, answers


def _test_outputs(result, hidden: bool) -> list:
    """What a test cell shows: the harness's print-out and error line; for a cell of hidden
    tests, only the exception's type (its message could quote hidden values)."""
    outs = []
    if result.stdout and not hidden:
        outs.append(new_output("stream", name="stdout", text=result.stdout[:20_000]))
    if not result.ok:
        name = result.error or "Error"
        text = "a hidden test failed" if hidden and name == "AssertionError" else \
            ("(details withheld: hidden test)" if hidden else result.message)
        if hidden and name in ("StudentCodeError", "GradientMismatch", "TimeoutError",
                               "KernelDied", "CellNotRun"):
            text = result.message
        outs.append(new_output("error", ename=name, evalue=text, traceback=[f"{name}: {text}"]))
    return outs


def _student_outputs(out: dict) -> list:
    if out.get("ok"):
        return []
    return [new_output("error", ename="Error", evalue="this cell raised an error when graded",
                       traceback=["this cell raised an error when graded"])]
