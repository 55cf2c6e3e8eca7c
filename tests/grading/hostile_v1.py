#!/usr/bin/env python3
"""Hostile and broken submissions of problem set 1, generated from the student version.

Each case is a submission an instructor may meet (by mischief or by accident) with the outcome
the grader must give it: status (graded / flagged / failed), final score (out of 12) and a
pattern the grades.csv note must match. tests/test_grading.py grades them all in one batch with
the honest demo class and asserts these outcomes; bench/grading_class.py mixes them into a
synthetic class; docs_grading.md has the table (keep the three in step).

    python tools/hostile.py DEST      writes DEST/<student>/ps1_change_of_variables/*.ipynb

Problem set 1 has three parts: part 1 (visible 1 + hidden 2 points), part 2 (2 + 3) and
part 3 (1 + 3). "correct" below is the instructor's solution, "carol" the demo student whose
answers pass every visible test and fail every hidden one (4 points).
"""
from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
PS = "ps1_change_of_variables"
NB = f"{PS}.ipynb"
# Canary paths that hostile code tries to create; tests check that none exists afterwards.
CANARY_TMP = "/tmp/flows-grading-canary"
CANARY_STARTUP = REPO / ".cache" / "ipython" / "profile_default" / "startup" / "00-flows-canary.py"
SLEEP_MARK = "7777.5"  # `sleep 7777.5`: the daemon hostile code tries to leave behind


@dataclass
class Case:
    student: str
    what: str  # one line for the docs table
    status: str  # graded | flagged | failed
    score: float
    note: str  # regular expression the grades.csv note must match ("" = anything)
    build: object  # () -> notebook node, or bytes


# ----------------------------------------------------------------------------- building blocks


def _solution_sources() -> dict[str, str]:
    nb = nbformat.read(REPO / "solutions" / PS / NB, as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n", "", cell.source)
    return out


def _carol() -> dict[str, str]:
    sys.path.insert(0, str(REPO / "tools"))
    import make_demo_class

    return dict(make_demo_class.CAROL)


CORRECT = None


def correct() -> dict[str, str]:
    global CORRECT
    if CORRECT is None:
        CORRECT = _solution_sources()
    return dict(CORRECT)


def carol() -> dict[str, str]:
    return {k: v.strip("\n") for k, v in _carol().items()}


def exercise():
    return nbformat.read(REPO / "exercises" / PS / NB, as_version=4)


def student(answers: dict[str, str], extra: dict[str, str] | None = None):
    """The exercise with the solution cells replaced by `answers`, and `extra` code appended
    to the given solution cells."""
    nb = exercise()
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid].strip("\n")
        if extra and gid in extra:
            cell.source = cell.source + "\n\n" + extra[gid].strip("\n")
    return nb


def gid(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def tests_of(nb):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def mixed(**parts: str) -> dict[str, str]:
    """Answers part by part: mixed(part1="correct", part2="carol") (stub when absent)."""
    pick = {"correct": correct(), "carol": carol()}
    return {f"{p}_solution": pick[src][f"{p}_solution"] for p, src in parts.items()}


# ----------------------------------------------------------------------------- the cases


def edit_tests():
    nb = student(carol())
    for cell in tests_of(nb):
        cell.source = "pass  # tests removed"
    for cell in nb.cells:  # and the read-only setup, to make every test pass
        if gid(cell) == "setup":
            cell.source += "\nassert True"
    return nb


def delete_tests():
    nb = student(mixed(part1="correct", part2="correct"))
    nb.cells = [c for c in nb.cells if not c.metadata.get("nbgrader", {}).get("grade")]
    return nb


def duplicate_cells():
    nb = student(carol())
    cells = []
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            fake = copy.deepcopy(cell)
            fake.source = "pass  # a copy"
            if "id" in fake:  # a new cell id (nbformat 4.5); the nbgrader grade_id is the same
                fake["id"] = f"{cell['id']}-copy"
            cells += [cell, fake]  # the last copy is the one nbgrader grades
        else:
            cells.append(cell)
    nb.cells = cells
    return nb


def reorder():
    nb = student(correct())
    part1 = [c for c in nb.cells if gid(c) in ("part1_visible", "part1_hidden")]
    rest = [c for c in nb.cells if c not in part1]
    nb.cells = part1 + rest  # part 1's tests now run before the setup and the answer
    return nb


def grade_ids():
    nb = student(carol())
    for cell in nb.cells:
        if gid(cell) and gid(cell).endswith("_hidden"):
            cell.metadata.nbgrader["grade_id"] += "_renamed"
            cell.source = "pass"
        if gid(cell) == "part1_visible":
            cell.metadata.nbgrader["points"] = 100
    return nb


PATCH_ALLCLOSE = """
torch.allclose = lambda *args, **kwargs: True
torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
"""

PATCH_TESTING = """
import numpy.testing
import flowlib.testing
numpy.testing.assert_allclose = lambda *args, **kwargs: None
flowlib.testing.check_bijection = lambda *args, **kwargs: None
torch.testing.assert_close = lambda *args, **kwargs: None
"""

IPYTHON_HOOKS = """
shell = get_ipython()
shell.set_custom_exc((Exception,), lambda shell, etype, value, tb, tb_offset=None: None)


def _forgive(result):
    result.error_in_exec = None


shell.events.register("post_run_cell", _forgive)
"""

SYS_MODULES = """
import sys
sys.modules["torch"].allclose = lambda *args, **kwargs: True
sys.modules["math"].log = lambda v: 0.0
"""

SHADOW = """
import torch as _real_torch


class _Lenient:
    def __getattr__(self, name):
        return getattr(_real_torch, name)

    @staticmethod
    def allclose(*args, **kwargs):
        return True

    @staticmethod
    def isclose(a, b, *args, **kwargs):
        return _real_torch.tensor(True)


torch = _Lenient()
"""

TORCH_FUNCTION = '''
class Agreeable(torch.Tensor):
    """Every comparison the tests make comes out true."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal):
            return True
        if func is torch.isclose:
            return torch.tensor(True)
        return super().__torch_function__(func, types, args, kwargs or {})


def pushforward_log_prob(x, f_inv, log_abs_df, base_log_prob):
    return torch.zeros_like(x).as_subclass(Agreeable)
'''

READ_HIDDEN = f"""
import glob
import os

targets = [{str(REPO / 'solutions' / PS / NB)!r}, {str(REPO / 'grading' / 'gradebook.db')!r},
           {str(REPO / 'nbgrader_config.py')!r}, "../../../gradebook.db",
           "../../../source/{PS}/{NB}", os.path.expanduser("~/.ssh/id_rsa"), "/etc/shadow"]
targets += glob.glob("../../../*") + glob.glob({str(REPO / '*')!r})
for path in targets:
    try:
        with open(path, "rb") as fh:
            data = fh.read(200)
        print("LEAK", path, data[:60])
    except Exception as exc:
        print("DENIED", path, type(exc).__name__)
print("ENV", sorted(os.environ))
"""

EXIT = """
import sys
sys.exit(0)
"""

OS_EXIT = """
import os
os._exit(0)
"""

KILL = """
import os
import signal

me = os.getpid()
for name in os.listdir("/proc"):
    if name.isdigit() and int(name) != me:
        try:
            os.kill(int(name), signal.SIGKILL)
        except Exception:
            pass
os.kill(me, signal.SIGKILL)
"""

LOOP_CELL = """
while True:
    pass
"""

LOOP_FUNCTION = '''
def pushforward_log_prob(x, f_inv, log_abs_df, base_log_prob):
    """Never returns."""
    while True:
        pass
'''

LOOP_STUBBORN = '''
import time


def linear_logdet(W):
    """Never returns, and ignores the interrupt."""
    while True:
        try:
            time.sleep(0.01)
        except KeyboardInterrupt:
            pass


def tanh_logdet(z):
    return linear_logdet(z)
'''

MEMORY = """
hoard = [bytearray(2**28) for _ in range(64)]  # 16 GiB, one 256 MiB block at a time
"""

MEMORY_TORCH = """
big = torch.empty(2**40)  # 8 TiB of float64
"""

OUTPUT = """
print("x" * 30_000_000)
for i in range(200_000):
    print(i)
"""

WRITE = f"""
import os

paths = [{str(REPO / 'flowlib' / '__init__.py')!r}, {str(REPO / 'grading' / 'grades.csv')!r},
         {str(CANARY_STARTUP)!r}, {CANARY_TMP!r}, "../../../gradebook.db",
         os.path.expanduser("~/.bashrc")]
for path in paths:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as fh:
            fh.write("\\nimport torch; torch.allclose = lambda *a, **k: False\\n")
        print("WROTE", path)
    except Exception as exc:
        print("DENIED", path, type(exc).__name__)
with open("leak.txt", "w") as fh:  # in its own folder: allowed, but never sent back
    fh.write("hidden tests, had I found them")
"""

DAEMON = f"""
import os

if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sleep", ["sleep", "{SLEEP_MARK}"])
"""

THREAD = """
import threading
threading.Thread(target=lambda: setattr(torch, "allclose", lambda *a, **k: True)).start()
"""

OBFUSCATED = "exec(bytes.fromhex({!r}).decode())".format(
    "torch.allclose = lambda *a, **k: True\ntorch.isclose = lambda a, b, *r, **k: "
    "torch.ones_like(torch.as_tensor(a), dtype=torch.bool)\n".encode().hex())

NETWORK = """
import socket

for host, port in [("1.1.1.1", 53), ("8.8.8.8", 443), ("127.0.0.1", 22), ("127.0.0.1", 8888)]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("CONNECTED", host, port)
    except Exception as exc:
        print("BLOCKED", host, port, type(exc).__name__)
"""


def other_assignment():
    """The notebook of another problem set, renamed as problem set 1."""
    others = sorted(p for p in (REPO / "exercises").glob("*/*.ipynb") if p.parent.name != PS)
    if others:
        return nbformat.read(others[0], as_version=4)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def answer():\n    return 42", metadata={
        "nbgrader": {"grade": False, "grade_id": "psX_solution", "locked": False,
                     "schema_version": 3, "solution": True, "task": False}})]
    return nb


def wrong_kernelspec():
    nb = student(correct())
    nb.metadata["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    return nb


def old_schema():
    nb = student(correct())
    for cell in nb.cells:
        if gid(cell) == "part1_solution":
            cell.metadata["nbgrader"]["schema_version"] = 1
    return nb


def invalid_json() -> bytes:
    text = nbformat.writes(student(correct()))
    return text[: len(text) // 2].encode()


def empty() -> bytes:
    return json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


C, K = correct, carol


CASES = [
    Case("x_edit_tests", "test cells (and the read-only setup) replaced by `pass`; "
         "wrong answers", "graded", 4, r"restored", edit_tests),
    Case("x_delete_tests", "every test cell deleted; parts 1 and 2 right", "graded", 8,
         r"deleted test cells put back", delete_tests),
    Case("x_duplicate", "every test cell duplicated, the copies graded last are `pass`",
         "graded", 4, r"duplicated", duplicate_cells),
    Case("x_reorder", "part 1's tests moved above the setup cell; all answers right",
         "graded", 9, r"re-ordered", reorder),
    Case("x_grade_ids", "hidden test cells renamed (new grade_id, `pass`), points of a test "
         "changed to 100", "graded", 4, r"not part of", grade_ids),
    Case("x_patch_allclose", "`torch.allclose = lambda *a, **k: True` in part 1's answer",
         "flagged", 0, r"assigns `torch\.allclose`.*runtime guard: torch\.allclose was replaced",
         lambda: student(mixed(part1="carol", part2="carol", part3="carol"),
                         {"part1_solution": PATCH_ALLCLOSE})),
    Case("x_patch_testing", "numpy.testing, flowlib.testing, torch.testing replaced in part 2's "
         "answer; part 1 right", "flagged", 3, r"assigns `numpy\.testing\.assert_allclose`",
         lambda: student(mixed(part1="correct", part2="carol", part3="carol"),
                         {"part2_solution": PATCH_TESTING})),
    Case("x_ipython_hooks", "an IPython custom exception handler and a post_run_cell hook "
         "that erase every error (would be 12/12 unguarded)", "flagged", 0,
         r"uses `get_ipython`.*runtime guard: .*IPython",
         lambda: student(carol(), {"part1_solution": IPYTHON_HOOKS})),
    Case("x_sys_modules", "`sys.modules['torch'].allclose` and `math.log` replaced in part 2",
         "flagged", 3, r"imports `sys`.*runtime guard: .* was replaced",
         lambda: student(mixed(part1="correct", part2="carol", part3="carol"),
                         {"part2_solution": SYS_MODULES})),
    Case("x_shadow", "`torch` rebound to a lenient wrapper in part 2", "flagged", 3,
         r"rebinds `torch`.*runtime guard: 'torch', defined by a read-only cell, was rebound",
         lambda: student(mixed(part1="correct", part2="carol", part3="carol"),
                         {"part2_solution": SHADOW})),
    Case("x_torch_function", "part 1 returns a torch.Tensor subclass whose "
         "`__torch_function__` makes allclose true", "flagged", 0,
         r"subclass of `torch\.Tensor`.*`__torch_function__`",
         lambda: student(mixed(part2="carol", part3="carol"),
                         {"part1_solution": TORCH_FUNCTION})),
    Case("x_read_hidden", "reads the instructor's notebook, gradebook, config, ~/.ssh, "
         "/etc/shadow; dumps its environment", "flagged", 0, r"opens files",
         lambda: student(correct(), {"part1_solution": READ_HIDDEN})),
    Case("x_exit", "`sys.exit(0)` at the end of part 2's answer; all answers right", "flagged",
         3, r"imports `sys`", lambda: student(correct(), {"part2_solution": EXIT})),
    Case("x_os_exit", "`os._exit(0)` (kills the kernel) in part 2's answer; all answers right",
         "flagged", 3, r"imports `os`", lambda: student(correct(), {"part2_solution": OS_EXIT})),
    Case("x_kill", "SIGKILL to every process it can see, then to itself, in part 3's answer",
         "flagged", 8, r"imports `signal`", lambda: student(correct(), {"part3_solution": KILL})),
    Case("x_loop_cell", "`while True: pass` after part 1's (right) answer; all answers right",
         "graded", 12, r"", lambda: student(correct(), {"part1_solution": LOOP_CELL})),
    Case("x_loop_function", "part 1's function loops forever; parts 2 and 3 right", "graded", 9,
         r"", lambda: student(correct(), {"part1_solution": LOOP_FUNCTION})),
    Case("x_loop_stubborn", "part 2's function loops forever and swallows KeyboardInterrupt; "
         "parts 1 and 3 right", "flagged", 3, r"catches `KeyboardInterrupt`",
         lambda: student(correct(), {"part2_solution": LOOP_STUBBORN})),
    Case("x_memory", "allocates 16 GiB in 256 MiB blocks, then an 8 TiB tensor; all answers "
         "right", "graded", 12, r"",
         lambda: student(correct(), {"part1_solution": MEMORY, "part2_solution": MEMORY_TORCH})),
    Case("x_output", "prints 30 MB in one line, then 200 000 lines; all answers right",
         "graded", 12, r"", lambda: student(correct(), {"part1_solution": OUTPUT})),
    Case("x_write", "writes to flowlib, grades.csv, an IPython startup file, /tmp, the "
         "gradebook; a file in its folder", "flagged", 0, r"opens files",
         lambda: student(correct(), {"part1_solution": WRITE})),
    Case("x_daemon", "forks a `sleep` that leaves the session (setsid) and outlives the kernel",
         "flagged", 0, r"imports `os`", lambda: student(correct(), {"part1_solution": DAEMON})),
    Case("x_thread", "a thread replaces torch.allclose (part 2's answer); part 1 right",
         "flagged", 3, r"imports `threading`",
         lambda: student(mixed(part1="correct", part2="carol", part3="carol"),
                         {"part2_solution": THREAD})),
    Case("x_obfuscated", "the allclose patch hex-encoded and `exec`-ed in part 2's answer",
         "flagged", 3, r"uses `exec`.*runtime guard: torch\.allclose was replaced",
         lambda: student(mixed(part1="correct", part2="carol", part3="carol"),
                         {"part2_solution": OBFUSCATED})),
    Case("x_network", "opens TCP connections (internet, localhost)", "flagged", 0,
         r"imports `socket`", lambda: student(correct(), {"part1_solution": NETWORK})),
    Case("x_invalid_json", "the notebook file cut in half", "failed", 0, r"not valid JSON",
         invalid_json),
    Case("x_old_schema", "valid JSON whose cell metadata claims nbgrader schema 1 (nbgrader "
         "itself refuses it)", "failed", 0, r"nbgrader could not grade it: .*metadata",
         old_schema),
    Case("x_empty", "a valid notebook without cells", "graded", 0, r"empty notebook", empty),
    Case("x_other_assignment", "another problem set's notebook under this one's name",
         "flagged", 0, r"not a notebook of ps1", other_assignment),
    Case("x_kernelspec", "kernelspec says R (`ir`); all answers right", "graded", 12,
         r"kernel 'ir' replaced", wrong_kernelspec),
]


# What each dangerous case needs from the sandbox (tools/sandbox.py capabilities()) to be safe to
# run at all: without it the case would really damage files or processes of the machine.
NEEDS = {
    "x_write": lambda caps: caps["landlock"] >= 1,
    "x_read_hidden": lambda caps: caps["landlock"] >= 1,
    "x_kill": lambda caps: caps["landlock"] >= 6 or caps["namespaces"],
    "x_daemon": lambda caps: caps["namespaces"],
    "x_network": lambda caps: caps["namespaces"] or caps["landlock"] >= 4,
}


def cases(caps: dict | None = None) -> list[Case]:
    """The cases that are safe to grade on a machine with these sandbox capabilities."""
    if caps is None:
        sys.path.insert(0, str(REPO / "tools"))
        import sandbox

        caps = sandbox.capabilities()
    return [c for c in CASES if NEEDS.get(c.student, lambda _: True)(caps)]


def write(case: Case, dest: Path) -> Path:
    """Write one case as DEST/<student>/<ps>/<ps>.ipynb."""
    folder = dest / case.student / PS
    folder.mkdir(parents=True, exist_ok=True)
    made = case.build()
    path = folder / NB
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        nbformat.write(made, path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    for case in cases():
        print(write(case, Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
