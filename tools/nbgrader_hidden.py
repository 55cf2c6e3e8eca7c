"""Keep hidden tests out of the feedback students get (an nbgrader 0.9.6 preprocessor).

nbgrader restores the full test cells, hidden tests included, into the autograded notebook, and
`generate_feedback` renders that notebook as it is, so by default a student's feedback shows the
hidden tests' source and the tracebacks they raised (jupyter/nbgrader#917; no option in 0.9.6).
`HideHiddenTests` runs in `GenerateFeedback.preprocessors` (see nbgrader_config.py):

* the region between the hidden-test delimiters is replaced by one comment line;
* in a cell that held hidden tests, every error output keeps its exception name and message but
  loses its traceback (IPython tracebacks quote the failing line and the lines around it);
  other outputs (what the tests chose to print) are kept.

The scores are unaffected: they come from the gradebook (GetGrades runs first).
"""
from __future__ import annotations

from nbgrader.preprocessors import ClearHiddenTests
from traitlets import Unicode

__all__ = ["HideHiddenTests"]


class HideHiddenTests(ClearHiddenTests):
    """Remove hidden tests and their tracebacks from autograded notebooks before export."""

    placeholder = Unicode(
        "# (hidden tests were run here; they are not shown)",
        help="Line that replaces each hidden-test region in the feedback.",
    ).tag(config=True)

    def _remove_hidden_test_region(self, cell) -> bool:
        lines = cell.source.split("\n")
        out, in_test, removed = [], False, False
        for line in lines:
            if self.begin_test_delimeter in line:
                if in_test:
                    raise RuntimeError("Encountered nested begin hidden tests statements")
                in_test = removed = True
                indent = line[: len(line) - len(line.lstrip())]
                out.append(indent + self.placeholder)
            elif self.end_test_delimeter in line:
                in_test = False
            elif not in_test:
                out.append(line)
        if in_test:
            raise RuntimeError("No end hidden tests statement found")
        cell.source = "\n".join(out)
        return removed

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code":
            return cell, resources
        if self._remove_hidden_test_region(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    ename, evalue = output.get("ename", "Error"), output.get("evalue", "")
                    output["traceback"] = [
                        f"{ename}: {evalue}" if evalue else ename,
                        "(raised while running the hidden tests; the traceback is not shown)",
                    ]
        return cell, resources
