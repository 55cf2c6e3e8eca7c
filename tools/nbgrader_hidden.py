"""Keep hidden tests out of the feedback students get (an nbgrader 0.9.6 preprocessor).

nbgrader restores the full test cells, hidden tests included, into the autograded notebook, and
`generate_feedback` renders that notebook as it is, so by default a student's feedback shows the
hidden tests' source and the tracebacks they raised (jupyter/nbgrader#917; no option in 0.9.6).
`HideHiddenTests` runs in `GenerateFeedback.preprocessors` (see nbgrader_config.py):

* the region between the hidden-test delimiters is replaced by one comment line;
* in a cell that held hidden tests, an error keeps its exception name and the first line of its
  message (at most `max_message` characters) but loses its traceback (IPython tracebacks quote
  the failing line and the lines around it); the feedback says which test cell raised it (its
  grade_id is also the heading of the cell); other outputs of that cell keep their plain text
  only, cut to `max_output` characters;
* in every output of every cell, any line of hidden-test code (12 characters or more) that
  appears verbatim is replaced by "[hidden]": code that printed the tests it saw (through an
  IPython hook, say) does not get them into the feedback that way.

The scores are unaffected: they come from the gradebook (GetGrades runs first).
"""
from __future__ import annotations

from nbgrader.preprocessors import ClearHiddenTests
from traitlets import Integer, Unicode

__all__ = ["HideHiddenTests"]

MIN_SECRET = 12  # shorter lines (`)`, `assert ok`) are too common to be worth redacting


class HideHiddenTests(ClearHiddenTests):
    """Remove hidden tests and their tracebacks from autograded notebooks before export."""

    placeholder = Unicode(
        "# (hidden tests were run here; they are not shown)",
        help="Line that replaces each hidden-test region in the feedback.",
    ).tag(config=True)
    max_message = Integer(200, help="Characters kept of an error message raised in a cell "
                                    "with hidden tests.").tag(config=True)
    max_output = Integer(2000, help="Characters kept of other outputs of such a cell."
                         ).tag(config=True)

    def preprocess(self, nb, resources):
        self._secrets = sorted({line.strip() for cell in nb.cells
                                for line in self._hidden_lines(cell.source)
                                if len(line.strip()) >= MIN_SECRET}, key=len, reverse=True)
        return super().preprocess(nb, resources)

    def _hidden_lines(self, source: str) -> list[str]:
        out, inside = [], False
        for line in source.split("\n"):
            if self.begin_test_delimeter in line:
                inside = True
            elif self.end_test_delimeter in line:
                inside = False
            elif inside:
                out.append(line)
        return out

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[hidden]")
        return text

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

    def _short(self, text: str, limit: int) -> str:
        text = self._redact(str(text))
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code":
            return cell, resources
        hidden = self._remove_hidden_test_region(cell)
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "this cell")
        outputs = []
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "error":
                ename = output.get("ename", "Error")
                first = str(output.get("evalue", "")).strip().split("\n")[0]
                evalue = self._short(first, self.max_message) if hidden else \
                    self._redact(str(output.get("evalue", "")))
                output["evalue"] = evalue
                if hidden:
                    output["traceback"] = [
                        f"{ename}: {evalue}" if evalue else ename,
                        f"(raised while running the hidden tests of {gid}; "
                        "their code and the traceback are not shown)",
                    ]
                else:
                    output["traceback"] = [self._redact(t) for t in output.get("traceback", [])]
            elif kind == "stream":
                text = output.get("text", "")
                output["text"] = self._short(text, self.max_output) if hidden else \
                    self._redact(text)
            elif kind in ("display_data", "execute_result"):
                data = output.get("data", {})
                plain = data.get("text/plain", "")
                plain = "".join(plain) if isinstance(plain, list) else str(plain)
                if hidden:
                    output["data"] = {"text/plain": self._short(plain, self.max_output)}
                else:
                    output["data"] = {k: (self._redact("".join(v) if isinstance(v, list)
                                                       else v) if isinstance(v, (str, list))
                                          else v) for k, v in data.items()}
            outputs.append(output)
        cell.outputs = outputs
        return cell, resources
