"""Runtime guard of the autograder: nbgrader preprocessors that make a test cell's result
something the student's code cannot quietly change (nbgrader 0.9.6).

nbgrader scores a test cell by one thing: whether the cell's outputs hold an error. Student
code runs in the same Python process as the tests, before them, so it can change what the tests
see (replace `torch.allclose`, rebind `torch`, register an IPython hook that swallows the
error of every later cell, ...). The static scan (tools/scan.py) flags the code that does this
in the open; this guard catches it when it happens at run time, however it was written:

* `GuardCells` (first autograde preprocessor) inserts, before any other cell, a guard set up
  from a secret key that only the grader process knows (written to a file the guard reads and
  deletes before any student code runs). The guard snapshots what the tests rely on: every
  function and class of `builtins`, `math`, `torch`, `numpy`, `flowlib` (all their loaded
  submodules) and the classes they define, `sys.modules`, the IPython shell's methods, event
  callbacks, input and AST transformers, custom exception handlers, trace and profile hooks,
  the running threads. After each locked code cell (e.g. the setup cell) a `bind` step records
  the objects that cell defined (`torch`, `normal_log_prob`, ...). Each test cell gets a
  `begin` check cell right before it and an `end` check cell right after it; each compares
  everything with the snapshot and prints a line signed with the key (HMAC-SHA256).
* `SafeExecute` (replaces nbgrader's `Execute`): caps the output a cell may produce; when the
  kernel dies or stops answering (an interrupt is ignored), the cell gets an error and every
  later cell is marked "not run" instead of nbgrader giving up on the whole submission.
* `GuardVerify` (right after execution): a test cell without an error counts only if its
  check cells printed a valid `begin`/`end` pair reporting no change; otherwise it gets a
  `GradingGuardError` output, so nbgrader scores it 0, and so does every test cell after the
  first violation. It writes what it found to `<report_dir>/<notebook>.json` (outside the
  kernel's reach) and removes every trace of the guard from the notebook.

What remains possible: the guard runs in the student's process, so code written to find the
guard in memory and forge its state can defeat it; that code needs the introspection the static
scan flags (frames, `gc`, closures, `get_ipython`, `exec` ...). See docs_grading.md.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_output
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer, Unicode

__all__ = ["GuardCells", "SafeExecute", "GuardVerify", "GUARD_NAME", "bound_names"]

GUARD_NAME = "__flows_guard__"
KEY_FILE = ".flows-guard-key"
LINE_RE = re.compile(r"\[flows-guard\] (\{.*?\}) ([0-9a-f]{64})")

# Attributes that legitimately change while a notebook runs: torch.set_default_dtype rebinds
# torch.Storage; ipykernel sets builtins.input anew for every cell.
_VOLATILE = [("torch", "Storage"), ("builtins", "input"), ("builtins", "raw_input")]

GUARD_SETUP = r'''# flows-guard: inserted by the grader before any other cell (not part of the assignment)
def __flows_guard_make__(key_file, imports, test_builtins, volatile):
    import builtins, hashlib, hmac, json, os, sys, threading, types, warnings
    with open(key_file, "rb") as fh:
        key = fh.read()
    os.remove(key_file)
    roots = {"math", "cmath", "operator", "functools", "builtins"} | set(imports)
    for name in sorted(roots):
        try:
            __import__(name)
        except Exception:
            pass
    volatile = {tuple(v) for v in volatile}
    watched, classes = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, mod in list(sys.modules.items()):
            if mod is None or name.split(".")[0] not in roots:
                continue
            try:
                d = vars(mod)
            except TypeError:
                continue
            snap = {k: v for k, v in d.items() if (callable(v) or isinstance(v, types.ModuleType))
                    and (name, k) not in volatile}
            watched.append((name, mod, d, snap))
            for v in snap.values():
                if isinstance(v, type) and id(v) not in classes and \
                        str(getattr(v, "__module__", "") or "").split(".")[0] in roots:
                    try:
                        classes[id(v)] = (v, dict(vars(v)))
                    except TypeError:
                        pass
    ip = get_ipython()
    shell_type = type(ip)
    shell_names = ("run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code",
                   "showtraceback", "_showtraceback", "showsyntaxerror", "transform_cell",
                   "should_run_async", "set_custom_exc", "ex", "ev")
    shell_methods = {n: (getattr(shell_type, n, None), vars(ip).get(n)) for n in shell_names}
    kernel = getattr(ip, "kernel", None)
    kernel_methods = {n: (getattr(type(kernel), n, None), vars(kernel).get(n)) for n in
                      ("do_execute", "execute_request", "send_response", "_publish_status")}
    session = getattr(kernel, "session", None)
    session_send = (getattr(type(session), "send", None), vars(session).get("send"))
    def callbacks():  # matplotlib's inline backend registers its own: not the student's
        return {k: [f for f in v if not str(getattr(f, "__module__", "")).startswith(
            "matplotlib_inline")] for k, v in ip.events.callbacks.items()}

    events = callbacks()
    transformer_lists = [ip.input_transformers_cleanup, ip.input_transformers_post,
                         ip.ast_transformers]
    transformer_snap = [list(t) for t in transformer_lists]
    itm = ip.input_transformer_manager
    itm_snap = [(itm, n, list(getattr(itm, n, []))) for n in
                ("cleanup_transforms", "line_transforms", "token_transformers")]
    custom_exceptions, custom_tb = ip.custom_exceptions, ip.CustomTB
    displayhook, display_pub = ip.displayhook, ip.display_pub
    sys_hooks = {"stdout": sys.stdout, "stderr": sys.stderr}  # IPython swaps the others per cell
    meta_path, path_hooks = list(sys.meta_path), list(sys.path_hooks)
    threads = {t.ident for t in threading.enumerate()}
    # threads the kernel's own machinery starts (zmq's garbage collector for large outputs,
    # tqdm's monitor): not the student's
    quiet_threads = {"zmq", "ipykernel", "IPython", "jupyter_client", "tornado", "tqdm"}
    out = sys.stdout
    write, flush = type(out).write, type(out).flush
    user_ns = ip.user_ns
    bound = {}
    M = object()
    state = {"n": 0}

    def problems():
        found = []
        for name, mod, d, snap in watched:
            if sys.modules.get(name, mod) is not mod:
                found.append(f"sys.modules[{name!r}] was replaced")
            for k, v in snap.items():
                if d.get(k, M) is not v:
                    found.append(f"{name}.{k} was replaced")
        for cls, snap in classes.values():
            d = vars(cls)
            for k, v in snap.items():
                if d.get(k, M) is not v:
                    found.append(f"{cls.__module__}.{cls.__qualname__}.{k} was replaced")
            if len(d) != len(snap):
                extra = sorted(set(d) - set(snap))
                if extra:
                    found.append(f"{cls.__module__}.{cls.__qualname__}.{extra[0]} was added")
        for n, (f, g) in shell_methods.items():
            if getattr(shell_type, n, None) is not f or vars(ip).get(n) is not g:
                found.append(f"the IPython shell's {n} was replaced")
        if type(ip) is not shell_type:
            found.append("the IPython shell's class was changed")
        for n, (f, g) in kernel_methods.items():
            if getattr(type(kernel), n, None) is not f or vars(kernel).get(n) is not g:
                found.append(f"the kernel's {n} was replaced")
        if session is not None and (getattr(type(session), "send", None) is not session_send[0]
                                    or vars(session).get("send") is not session_send[1]):
            found.append("the kernel session's send was replaced")
        if callbacks() != events:
            found.append("an IPython event callback was registered or removed")
        if [list(t) for t in transformer_lists] != transformer_snap or \
                [ip.input_transformers_cleanup, ip.input_transformers_post, ip.ast_transformers] \
                != transformer_lists:
            found.append("an IPython input or AST transformer was changed")
        if ip.input_transformer_manager is not itm or \
                any(list(getattr(o, n, [])) != s for o, n, s in itm_snap):
            found.append("IPython's input transformer manager was changed")
        if ip.custom_exceptions != custom_exceptions or ip.CustomTB is not custom_tb:
            found.append("a custom IPython exception handler was installed")
        if ip.displayhook is not displayhook or ip.display_pub is not display_pub:
            found.append("IPython's display hooks were replaced")
        for n, v in sys_hooks.items():
            if getattr(sys, n) is not v:
                found.append(f"sys.{n} was replaced")
        if sys.gettrace() is not None or sys.getprofile() is not None:
            found.append("a trace or profile function is installed")
        if getattr(threading, "gettrace", lambda: None)() is not None or \
                getattr(threading, "getprofile", lambda: None)() is not None:
            found.append("a thread trace or profile function is installed")
        if list(sys.meta_path) != meta_path or list(sys.path_hooks) != path_hooks:
            found.append("the import system (sys.meta_path or sys.path_hooks) was changed")
        if type(out).write is not write or type(out).flush is not flush:
            found.append("the output stream was patched")
        new = [t for t in threading.enumerate() if t.ident not in threads and t.is_alive()
               and str(type(t).__module__).split(".")[0] not in quiet_threads]
        if new:
            found.append(f"a thread was started ({new[0].name})")
        for n, v in bound.items():
            if user_ns.get(n, M) is not v:
                found.append(f"{n!r}, defined by a read-only cell, was rebound or deleted")
        for n in test_builtins:
            if n in user_ns and n not in bound:
                found.append(f"the builtin {n!r}, used by the tests, was shadowed")
        if user_ns.get("__builtins__", builtins) is not builtins:
            found.append("__builtins__ was replaced")
        return found

    def emit(record):
        payload = json.dumps(record, sort_keys=True)
        sig = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
        write(out, f"\n[flows-guard] {payload} {sig}\n")
        flush(out)

    def guard(action, gid, names=()):
        state["n"] += 1
        if action == "bind":
            for n in names:
                if n in user_ns:
                    bound[n] = user_ns[n]
            found = []
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = problems()
        emit({"a": action, "g": gid, "n": state["n"], "p": found[:5]})

    return guard


__flows_guard__ = __flows_guard_make__(KEY_FILE, IMPORTS, TEST_BUILTINS, VOLATILE)
del __flows_guard_make__
'''


def bound_names(source: str) -> list[str]:
    """Names a cell binds at module level (assignments, defs, classes, imports, for/with
    targets), in order. A cell that does not parse binds nothing."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: list[str] = []

    def targets(node):
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                targets(elt)
        elif isinstance(node, ast.Starred):
            targets(node.value)

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.append(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                targets(t)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets(node.target)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            targets(node.target)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    targets(item.optional_vars)
    return list(dict.fromkeys(n for n in names if n != "*"))


def free_builtins(sources: list[str]) -> list[str]:
    """Builtin names that the given cells read without binding them."""
    used: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, (ast.Store, ast.Del))}
        used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Load)} - stored
    return sorted(n for n in used if hasattr(builtins, n) and not n.startswith("__"))


# Modules whose functions and classes the guard watches when the assignment's own cells import
# them (it imports them first, before any student code; torch and numpy always when present).
WATCHED = {"torch", "numpy", "flowlib", "scipy", "sklearn"}


def imported_modules(sources: list[str]) -> list[str]:
    """Top-level packages of WATCHED that the given cells import, plus torch and numpy."""
    found = {"torch", "numpy"}
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return sorted(found & WATCHED)


def _guard_call(action: str, gid: str, names: list[str] | None = None) -> str:
    args = f"{action!r}, {gid!r}" + (f", {names!r}" if names is not None else "")
    return f"{GUARD_NAME}({args})"


def _is_test(cell) -> bool:
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


def _is_locked_code(cell) -> bool:
    return (cell.cell_type == "code" and utils.is_locked(cell) and not utils.is_grade(cell)
            and not utils.is_solution(cell))


class GuardCells(NbGraderPreprocessor):
    """Insert the guard: a setup cell first, a `bind` cell after each locked code cell, and
    `begin`/`end` check cells right before and after each test cell. Writes the guard's key file into
    the folder the kernel runs in (it is read and deleted by the setup cell)."""

    def preprocess(self, nb, resources):
        key = secrets.token_hex(32)
        path = resources.get("metadata", {}).get("path") or "."
        key_file = Path(path) / KEY_FILE
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        resources["flows_guard"] = {"key": key}

        tests = [c.source for c in nb.cells if _is_test(c)]
        trusted = tests + [c.source for c in nb.cells if _is_locked_code(c)]
        setup = (GUARD_SETUP.replace("KEY_FILE", repr(KEY_FILE))
                 .replace("IMPORTS", repr(imported_modules(trusted)))
                 .replace("TEST_BUILTINS", repr(free_builtins(tests)))
                 .replace("VOLATILE", repr(_VOLATILE)))
        cells = [new_code_cell(setup, metadata={"flows_guard": "setup"})]
        for cell in nb.cells:
            if _is_test(cell):
                # checks in cells of their own right before and after the test (not lines
                # added to it: tracebacks would show them and their line numbers would shift)
                gid = cell.metadata.nbgrader["grade_id"]
                cells.append(new_code_cell(_guard_call("begin", gid),
                                           metadata={"flows_guard": "begin"}))
                cell.metadata["flows_guard"] = "test"
                cells += [cell, new_code_cell(_guard_call("end", gid),
                                              metadata={"flows_guard": "end"})]
                continue
            cells.append(cell)
            if _is_locked_code(cell):
                gid = cell.metadata.nbgrader.get("grade_id", "")
                cells.append(new_code_cell(_guard_call("bind", gid, bound_names(cell.source)),
                                           metadata={"flows_guard": "bind"}))
        nb.cells = cells
        return nb, resources


class SafeExecute(Execute):
    """nbgrader's Execute, robust to hostile code: outputs are capped, and a kernel that dies
    or ignores the interrupt after a time-out fails the current cell and leaves every later
    cell "not run" (with an error), so the cells graded before it keep their scores."""

    max_cell_output = Integer(1_000_000, help="Bytes of output kept per cell.").tag(config=True)
    max_total_output = Integer(10_000_000, help="Bytes of output kept per notebook.").tag(
        config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._dead: str | None = None
        self._total = 0
        self._cell_bytes: dict[int, int] = {}
        self._truncated: set[int] = set()
        return super().preprocess(nb, resources, km)

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(json.dumps(content.get("data", content.get("text", "")), default=str))
        used = self._cell_bytes.get(cell_index, 0)
        if used + size > self.max_cell_output or self._total + size > self.max_total_output:
            # keep the guard's signed lines, drop the rest
            text = content.get("text", "") if msg.get("msg_type") == "stream" else ""
            kept = "\n".join(m.group(0) for m in LINE_RE.finditer(text))
            if cell_index not in self._truncated:
                self._truncated.add(cell_index)
                outs.append(new_output("stream", name="stderr", text=(
                    f"[output truncated by the grader: more than {self.max_cell_output} bytes "
                    f"in this cell or {self.max_total_output} in the notebook]\n")))
            if kept:
                outs.append(new_output("stream", name="stdout", text="\n" + kept + "\n"))
            return None
        self._cell_bytes[cell_index] = used + size
        self._total += size
        return super().output(outs, msg, display_id, cell_index)

    def _fail(self, cell, ename: str, evalue: str) -> None:
        cell.outputs = list(cell.get("outputs", [])) + [new_output(
            "error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])]

    def _kill(self) -> None:
        try:
            from jupyter_core.utils import run_sync

            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # the kernel is gone already
            pass

    def _get_timeout(self, cell):
        # the guard's own set-up imports torch & co. before any student code: not the
        # student's time, and too important to cut short on a busy machine
        timeout = super()._get_timeout(cell)
        if cell is not None and cell.metadata.get("flows_guard") == "setup" and timeout:
            return max(timeout, 300)
        return timeout

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources
        if self._dead is not None:
            cell.outputs = []
            self._fail(cell, "CellNotRun", f"not run: {self._dead}")
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._dead = "the kernel died in an earlier cell"
            self._fail(cell, "DeadKernelError", "the kernel died while running this cell")
        except CellTimeoutError:
            self._dead = "the kernel stopped responding in an earlier cell"
            self._fail(cell, "CellTimeoutError",
                       f"no answer within {self.timeout} s, and the kernel ignored the interrupt")
            self._kill()
        self.nb.cells[index] = cell
        return cell, resources


class GuardVerify(NbGraderPreprocessor):
    """Check the guard's signed lines, zero what they do not vouch for, remove the guard."""

    report_dir = Unicode("", help="Folder for <notebook>.json reports (outside the kernel's "
                                  "reach); empty: no report.").tag(config=True)

    def preprocess(self, nb, resources):
        key = resources.get("flows_guard", {}).get("key", "").encode()
        report = {"violations": [], "zeroed": [], "checked": [], "setup_ok": False}
        first: str | None = None  # the first violation seen, with where
        records = {i: self._take_lines(c, key) for i, c in enumerate(nb.cells)
                   if c.metadata.get("flows_guard") in ("setup", "bind", "begin", "end")}
        kept = []
        for i, cell in enumerate(nb.cells):
            role = cell.metadata.get("flows_guard")
            if role == "setup":
                report["setup_ok"] = not any(o.output_type == "error" for o in cell.outputs)
                if not report["setup_ok"]:
                    first = "the grader's guard could not start"
            if role != "test":
                if not role:
                    kept.append(cell)
                continue
            del cell.metadata["flows_guard"]
            kept.append(cell)
            gid = cell.metadata.nbgrader["grade_id"]
            found = records.get(i - 1, []) + records.get(i + 1, [])
            report["checked"].append(gid)
            problems = [p for r in found for p in r.get("p", [])]
            for p in dict.fromkeys(problems):
                report["violations"].append({"cell": gid, "reason": p})
            failed = any(o.output_type == "error" for o in cell.outputs)
            why = None
            if problems:
                why = problems[0]
                first = first or f"{problems[0]} (seen in {gid})"
            elif first:
                why = f"an earlier cell changed what the tests rely on: {first}"
            elif not failed and not self._clean_pair(gid, found):
                why = ("the grader's checks around this test did not report as expected "
                       "(output suppressed or tampered with)")
                first = f"{why} (in {gid})"
            if why and not failed:
                cell.outputs = list(cell.outputs) + [new_output(
                    "error", ename="GradingGuardError", evalue=why,
                    traceback=[f"GradingGuardError: {why}"])]
                report["zeroed"].append(gid)
        nb.cells = kept
        report["first_violation"] = first
        resources.pop("flows_guard", None)
        if self.report_dir:
            os.makedirs(self.report_dir, exist_ok=True)
            name = resources.get("nbgrader", {}).get("notebook", "notebook")
            with open(os.path.join(self.report_dir, f"{name}.json"), "w") as fh:
                json.dump(report, fh, indent=1)
        return nb, resources

    @staticmethod
    def _clean_pair(gid: str, found: list[dict]) -> bool:
        """Whether `found` is exactly a begin/end pair for `gid`, consecutive."""
        return ([(r.get("a"), r.get("g")) for r in found] == [("begin", gid), ("end", gid)]
                and found[1].get("n") == found[0].get("n", -2) + 1)

    @staticmethod
    def _take_lines(cell, key: bytes) -> list[dict]:
        """Signed guard records printed in this cell (invalid signatures are dropped), and the
        guard's lines removed from its outputs."""
        found = []
        outputs = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                def keep(m):
                    payload, sig = m.group(1), m.group(2)
                    good = hmac.compare_digest(
                        hmac.new(key, payload.encode(), hashlib.sha256).hexdigest(), sig)
                    if good:
                        try:
                            found.append(json.loads(payload))
                        except ValueError:
                            pass
                    return ""

                text = LINE_RE.sub(keep, out.text)
                text = re.sub(r"\n{2,}", "\n", text).lstrip("\n") if text != out.text else text
                if not text.strip() and text != out.text:
                    continue
                out.text = text
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
        return found
