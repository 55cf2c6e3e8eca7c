"""Submissions of problem set 1 for the grading tests: honest, unusual, wrong and hostile.

Each case is a student name, the answers (solution cell grade_id -> source), extra cells
(appended after the last solution cell), extra files and the expected score. The classes follow
the attacks found on grading v1 (issue: grading v2): 1 forged success, 2 reading hidden tests or
instructor files, 3 script injection, 4 limits, 5 trees that stop a run, 6 honest code that must
not lose points, 7 inputs changed in place.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
PS = "ps1_change_of_variables"
NB = f"{PS}.ipynb"
FULL = 12.0


def solution_sources() -> dict[str, str]:
    nb = nbformat.read(REPO / "solutions" / PS / NB, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]:
            re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n", "", c.source)
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}


@dataclass
class Case:
    student: str
    expected: float | None            # None: not graded at all (rejected or failed)
    answers: dict[str, str] = field(default_factory=dict)
    cells: list[tuple[str, str]] = field(default_factory=list)   # (cell_type, source)
    files: dict[str, bytes] = field(default_factory=dict)
    why: str = ""

    edit: dict[str, str] = field(default_factory=dict)    # grade_id -> new source of a test
    delete: tuple[str, ...] = ()                             # grade_ids of cells removed

    def notebook(self) -> nbformat.NotebookNode:
        nb = nbformat.read(REPO / "exercises" / PS / NB, as_version=4)
        nb.cells = [c for c in nb.cells
                    if c.metadata.get("nbgrader", {}).get("grade_id") not in self.delete]
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in self.edit:
                cell.source = self.edit[gid]
        last = 0
        for i, cell in enumerate(nb.cells):
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in self.answers:
                cell.source = self.answers[gid]
            if cell.metadata.get("nbgrader", {}).get("solution"):
                last = i
        extra = [nbformat.v4.new_markdown_cell(src) if kind == "markdown"
                 else nbformat.v4.new_code_cell(src) for kind, src in self.cells]
        nb.cells[last + 1:last + 1] = extra
        return nb

    def write(self, submitted: Path) -> Path:
        folder = submitted / self.student / PS
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(self.notebook(), folder / NB)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
        return folder


TAMPER = """
import sys, builtins, gc
# reach IPython and the interpreter's internals, as the v1 attack did
ip = sys.modules.get("IPython")
try:
    from IPython.core import interactiveshell
    interactiveshell.ExecutionResult.success = property(lambda self: True)
except Exception:
    pass
builtins.AssertionError = type("Quiet", (Exception,), {})
sys.modules["torch"].allclose = lambda *a, **k: True
sys.modules["torch"].isclose = lambda *a, **k: sys.modules["torch"].tensor(True)
for obj in gc.get_objects():
    if type(obj).__name__ == "HarnessEndpoint":
        raise SystemExit("found the harness")
"""

READER = r'''
import os
found = []
for top in ("/", "/work", "/root", "/tmp", "/proc/1"):
    try:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames:
                if name.endswith((".ipynb", ".db", ".json")):
                    try:
                        with open(os.path.join(dirpath, name), errors="replace") as fh:
                            text = fh.read(2_000_000)
                    except OSError:
                        continue
                    if "BEGIN HIDDEN" in text or "gradebook" in name:
                        found.append(text)
            if len(dirnames) > 50:
                dirnames[:] = dirnames[:50]
    except OSError:
        pass
print("FOUND", len(found))
print("\n".join(found)[:100000])
try:
    os.symlink("/etc/shadow", "/tmp/work/feedback_link")
except OSError as exc:
    print("symlink", exc)
print(os.listdir("/proc"))
'''

LIMITS = r'''
import os, mmap
try:
    hog = bytearray(20 * 2**30)          # far past the memory limit
except MemoryError:
    print("memory: refused")
try:
    fd = os.memfd_create("x")
    os.ftruncate(fd, 5 * 2**30)           # past the file-size limit
    print("memfd grew")
except OSError as exc:
    print("memfd:", exc.errno)
try:
    with open("/tmp/big", "wb") as fh:
        for _ in range(2048):
            fh.write(b"\0" * 2**20)       # past the tmpfs size
except OSError as exc:
    print("disk:", exc.errno)
children = 0
try:
    for _ in range(500):
        if os.fork() == 0:
            import time
            time.sleep(30)
            os._exit(0)
        children += 1
except OSError as exc:
    print("fork refused after", children)
'''

HONEST_EXTRAS = [
    ("code", "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np"),
    ("code", "x = torch.linspace(-3, 3, 200)\nplt.plot(x, normal_log_prob_1d(x).exp())\n"
             "plt.title('the base density')\nplt.show()"),
    ("code", "%timeit -n 2 -r 2 linear_logdet(torch.eye(8))"),
    ("code", "class Helper:\n    def __init__(self, k):\n        self.k = k\n\n"
             "    def __repr__(self):\n        return f'Helper({self.k})'\n\n"
             "print(Helper(np.float64(3.0)), np.linalg.slogdet(np.eye(3)))"),
    ("code", "for i in range(20_000):\n    print('line', i)"),
]

INF_IN_PLACE = """
def pushforward_log_prob(x, f_inv, df, base_log_prob):
    x.fill_(float("inf"))                     # the v1 attack: spoil the test's own input
    return torch.full_like(x, float("nan"))
"""


def cases() -> list[Case]:
    good = solution_sources()
    blank = {}
    return [
        Case("honest_unusual", FULL, dict(good), HONEST_EXTRAS,
             why="pyplot, %matplotlib inline, %timeit, numpy, a helper class, 20,000 lines"),
        Case("forger", 0.0, dict(blank), [("code", TAMPER)],
             files={"torch.py": b"raise SystemExit('shadowed torch')\n",
                    "ipykernel_launcher.py": b"print('first!')\n",
                    "flowgrade.py": b"print('first!')\n"},
             why="class 1: tampering and module files beside the notebook, no work"),
        Case("reader", 0.0, dict(blank), [("code", READER)],
             why="class 2: looks for hidden tests, gradebooks and links out"),
        Case("scripter", 0.0, dict(blank),
             [("markdown", "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"),
              ("code", "class Evil:\n    def _repr_html_(self):\n"
                       "        return '<script>alert(1)</script>'\nEvil()")],
             why="class 3: script in markdown and in an HTML output"),
        Case("limits", FULL, dict(good), [("code", LIMITS)],
             why="class 4: memory, memfd, disk and processes past their limits; answers right"),
        Case("inf_in_place", 0.0, {"part1_solution": INF_IN_PLACE},
             why="class 7: fills the test's input with inf"),
        Case("no_abs", 10.0, {**good, "part1_solution":
                              "def pushforward_log_prob(x, f_inv, df, base_log_prob):\n"
                              "    return base_log_prob(f_inv(x)) - torch.log(df(f_inv(x)))"},
             why="right but for the absolute value: the decreasing map's hidden test fails"),
        Case("test_editor", 0.0, {}, edit={g: "pass" for g in
                                           ("part1_visible", "part1_hidden", "part2_visible",
                                            "part2_hidden", "part3_visible", "part3_hidden")},
             why="v1 case: test cells replaced by `pass` (restored from the gradebook)"),
        Case("test_deleter", FULL, dict(good), delete=("part1_visible", "part1_hidden",
                                                       "part3_hidden"),
             why="v1 case: test cells deleted, answers right (the tests are put back)"),
        Case("exiter", 8.0, dict(good), [("code", "import os\nos._exit(0)")],
             why="v1 case: the kernel exits after part 2: part 3's tests cannot run"),
        Case("blank", 0.0, {}, why="the untouched exercise"),
    ]
