"""Look at a submission before it runs: repair its structure, flag suspicious code.

Two steps, both on the parsed notebook, both run by tools/grade.py before nbgrader:

`repair(nb, info)` makes the notebook one nbgrader can always grade, and says what it changed
(notes for the instructor): cells whose nbgrader id is unknown (a changed grade_id) become
ordinary cells; cells of the assignment that were deleted (tests, solutions, read-only cells)
are put back, from the student version, after the cell that preceded them; outputs are
cleared. An empty notebook so becomes the untouched exercise and scores 0. nbgrader itself then
restores the read-only cells' contents, points and kernelspec, and keeps the last of duplicated
cells.

`scan(nb, info)` reads the code the student controls (every code cell that nbgrader will not
overwrite) with Python's `ast` (IPython magics and shell escapes are translated first) and
returns findings: code that can change what the tests see or reach outside the notebook. A
finding flags the submission for manual review; it does not say the student cheated. The list:

* imports outside a small allow-list (math, torch, numpy, flowlib, functools, ...): os, sys,
  subprocess, ctypes, signal, socket, importlib, builtins, gc, inspect, threading, ...;
* calls of exec, eval, compile, __import__, globals, locals, vars, setattr, delattr, open,
  get_ipython (and so every magic and `!` command), exit, quit, breakpoint; getattr with a
  computed name;
* attributes that reach interpreter internals (__dict__, __class__, __globals__, __code__,
  frames, tracebacks, __subclasses__, ...), private attributes of modules (torch._C), file and
  extension machinery (torch.load/save, numpy.load/save, Path.write_text, torch.library,
  torch.utils.cpp_extension, torch.hub, ...);
* assigning or deleting an attribute of a module, a builtin, or an object a read-only cell
  defined (`torch.allclose = ...`, `Affine.forward = ...`);
* rebinding a name the tests use that the student is not asked to define (`torch = ...`,
  `normal_log_prob = ...`, `abs = ...`), at top level or through `global`;
* classes that can change what comparisons in the tests return: dunder methods such as
  __torch_function__, __eq__, __bool__, __getattr__, and subclasses of torch.Tensor;
* catching KeyboardInterrupt, SystemExit or BaseException by name (defeats time limits).
"""
from __future__ import annotations

import ast
import builtins
import copy
from dataclasses import dataclass, field

from nbformat import NotebookNode

__all__ = ["AssignmentInfo", "Finding", "repair", "resemblance", "scan", "student_cells",
           "tests_after"]

ALLOWED_IMPORTS = {
    "math", "cmath", "torch", "numpy", "flowlib", "functools", "itertools", "collections",
    "typing", "dataclasses", "operator", "numbers", "fractions", "decimal", "statistics",
    "random", "copy", "string", "re", "enum", "heapq", "bisect", "abc", "warnings", "time",
    "scipy", "sklearn", "matplotlib", "tqdm", "textwrap", "contextlib", "__future__",
}
CALLS = {"exec", "eval", "compile", "__import__", "globals", "locals", "vars", "setattr",
         "delattr", "open", "get_ipython", "exit", "quit", "breakpoint", "__build_class__"}
NAMES = {"__builtins__", "__builtin__", "__loader__", "__spec__", "In", "Out", "_ih", "_oh",
         "_ii", "_iii", "_i"}
ATTRS = {
    "__dict__", "__bases__", "__base__", "__mro__", "__subclasses__",
    "__globals__", "__builtins__", "__code__", "__closure__", "__func__", "__self__",
    "__getattribute__", "__setattr__", "__delattr__", "__import__", "__loader__", "__spec__",
    "__reduce__", "__reduce_ex__", "__traceback__", "__defaults__", "__kwdefaults__",
    "tb_frame", "tb_next", "f_back", "f_globals", "f_locals", "f_code", "f_builtins",
    "gi_frame", "gi_code", "cr_frame", "ag_frame", "co_code", "co_consts",
    "_getframe", "_current_frames", "settrace", "setprofile", "addaudithook",
    # file, extension and dispatcher machinery
    "cpp_extension", "hub", "library", "ctypeslib", "f2py", "multiprocessing", "distributed",
    "load_library", "package", "write_text", "write_bytes", "read_text", "read_bytes",
    "unlink", "rmdir", "symlink_to", "hardlink_to", "chmod", "touch",
}
MODULE_IO = {"load", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt",
             "fromfile", "tofile", "memmap", "load_state_dict_from_url"}
DUNDER_DEFS = {
    "__torch_function__", "__torch_dispatch__", "__array_function__", "__array_ufunc__",
    "__array__", "__array_priority__", "__bool__", "__eq__", "__ne__", "__lt__", "__le__",
    "__gt__", "__ge__", "__getattr__", "__getattribute__", "__setattr__", "__delattr__",
    "__instancecheck__", "__subclasscheck__", "__del__", "__init_subclass__", "__set_name__",
    "__class_getitem__", "__index__", "__float__", "__hash__",
}
EXCEPTIONS = {"KeyboardInterrupt", "SystemExit", "BaseException", "GeneratorExit"}


@dataclass
class Finding:
    cell: int  # index in the (repaired) notebook
    grade_id: str | None
    line: int
    reason: str

    def __str__(self) -> str:
        where = f"cell {self.grade_id}" if self.grade_id else f"cell #{self.cell + 1}"
        return f"{where}, line {self.line}: {self.reason}"


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _kind(cell) -> str:
    m = _meta(cell)
    if m.get("solution"):
        return "solution"
    if m.get("grade") or m.get("task"):
        return "test"
    if m.get("locked"):
        return "locked"
    return "other"


def _parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _ipython_to_python(source: str) -> str:
    """IPython syntax (magics, `!cmd`, `x?`) as the Python the kernel would run."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # not transformable: the kernel will not run it either
        return source


def _module_bindings(tree: ast.AST) -> dict[str, str]:
    out = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _top_bindings(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(name, line, how) bound at module level (including inside if/for/while/try/with
    blocks) or through `global` in a function. how: def, import:<module>, assign, del."""
    found: list[tuple[str, int, str]] = []

    def targets(node, line, how):
        if isinstance(node, ast.Name):
            found.append((node.id, line, how))
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                targets(elt, line, how)
        elif isinstance(node, ast.Starred):
            targets(node.value, line, how)

    def block(body):
        for node in body:
            line = getattr(node, "lineno", 0)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.append((node.name, line, "def"))
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    found.append((a.asname or top, line, "import:" + (a.name if a.asname else top)))
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    found.append((a.asname or a.name, line, f"import:{node.module}.{a.name}"))
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    targets(t, line, "assign")
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets(node.target, line, "assign")
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets(node.target, line, "assign")
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        targets(item.optional_vars, line, "assign")
            elif isinstance(node, ast.Delete):
                for t in node.targets:
                    targets(t, line, "del")
            for sub in ast.walk(node):
                if isinstance(sub, ast.NamedExpr):
                    targets(sub.target, line, "assign")
            for attr in ("body", "orelse", "finalbody"):
                inner = getattr(node, attr, None)
                if isinstance(inner, list):
                    block(inner)
            for handler in getattr(node, "handlers", []) or []:
                if handler.name:
                    found.append((handler.name, handler.lineno, "assign"))
                block(handler.body)

    block(getattr(tree, "body", []))
    for fn in ast.walk(tree):  # `global x` in a function: its stores bind the module's x
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            declared = {n for g in ast.walk(fn) if isinstance(g, ast.Global) for n in g.names}
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)) \
                        and sub.id in declared:
                    found.append((sub.id, sub.lineno, "global"))
    return found


def _free_names(tree: ast.AST) -> set[str]:
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
              and isinstance(n.ctx, (ast.Store, ast.Del))}
    stored |= {n.name for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    stored |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree)
               if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    stored |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
              and isinstance(n.ctx, ast.Load)}
    return loaded - stored


@dataclass
class AssignmentInfo:
    """What the scan needs to know of one notebook of an assignment (from the instructor's
    source and the student version)."""

    name: str
    order: list[str]  # grade_ids in source order
    kinds: dict[str, str]  # grade_id -> solution / test / locked / other
    release: dict[str, NotebookNode]  # grade_id -> cell of the student version
    kernelspec: dict
    protected: set[str] = field(default_factory=set)  # names student code must not rebind
    locked_objects: set[str] = field(default_factory=set)  # names defined by read-only cells
    modules: dict[str, str] = field(default_factory=dict)  # name -> module, read-only cells

    @classmethod
    def build(cls, name: str, source_nb: NotebookNode, release_nb: NotebookNode
              ) -> "AssignmentInfo":
        order, kinds = [], {}
        for cell in source_nb.cells:
            gid = _meta(cell).get("grade_id")
            if gid:
                order.append(gid)
                kinds[gid] = _kind(cell)
        release = {_meta(c).get("grade_id"): c for c in release_nb.cells
                   if _meta(c).get("grade_id")}
        info = cls(name, order, kinds, release,
                   dict(source_nb.metadata.get("kernelspec", {})))
        student_defined: set[str] = set()
        free: set[str] = set()
        for cell in source_nb.cells:
            if cell.cell_type != "code":
                continue
            tree = _parse(_ipython_to_python(cell.source))
            if tree is None:
                continue
            kind = _kind(cell)
            if kind == "solution":
                student_defined |= {n for n, _, _ in _top_bindings(tree)}
            elif kind == "locked":
                info.locked_objects |= {n for n, _, how in _top_bindings(tree)
                                        if how != "del"}
                info.modules.update(_module_bindings(tree))
                free |= _free_names(tree)
            elif kind == "test":
                free |= _free_names(tree)
        info.protected = (free | info.locked_objects) - student_defined
        info.protected |= {"__flows_guard__"}
        return info


def resemblance(nb: NotebookNode, info: AssignmentInfo) -> int:
    """How many read-only cells of `info`'s student version appear, word for word, in `nb`
    (to tell which assignment a notebook really belongs to)."""
    mine = {c.source.strip() for c in nb.cells}
    theirs = {c.source.strip() for g, c in info.release.items()
              if info.kinds.get(g) in ("locked", "test") and len(c.source.strip()) > 20}
    return len(mine & theirs)


def student_cells(nb: NotebookNode, info: AssignmentInfo) -> list[int]:
    """Indices of the code cells whose source the student controls when nbgrader runs the
    notebook: all but the last copy of each read-only or test cell (nbgrader restores that one
    from the gradebook and strips the id of earlier copies)."""
    last: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        gid = _meta(cell).get("grade_id")
        if gid and _kind(cell) != "other":
            last[gid] = i
    trusted = {i for gid, i in last.items() if info.kinds.get(gid) in ("test", "locked")}
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and i not in trusted]


# ----------------------------------------------------------------------------- repair


def _visible(source: str) -> list[str]:
    """A cell's non-blank lines, stripped, without any hidden-test region (the instructor's own
    notebook, submitted as is, has them; the student version does not)."""
    out, hidden = [], False
    for line in source.splitlines():
        if "BEGIN HIDDEN TESTS" in line:
            hidden = True
        elif "END HIDDEN TESTS" in line:
            hidden = False
        elif not hidden and line.strip():
            out.append(line.strip())
    return out


def repair(nb: NotebookNode, info: AssignmentInfo) -> tuple[NotebookNode, list[str],
                                                                     list[str]]:
    """(repaired copy, notes, flags). See the module docstring."""
    nb = copy.deepcopy(nb)
    notes: list[str] = []
    flags: list[str] = []
    known = set(info.order)
    had_cells = len(nb.cells)
    present_solutions = {_meta(c).get("grade_id") for c in nb.cells} & \
        {g for g, k in info.kinds.items() if k == "solution"}
    foreign = sorted({_meta(c).get("grade_id") for c in nb.cells
                      if _meta(c).get("grade_id") and _meta(c).get("grade_id") not in known})
    if had_cells and not present_solutions:
        what = (f"it holds other cell ids ({', '.join(foreign[:4])})" if foreign
                else "its cells have no nbgrader ids (copied into a new notebook?)")
        flags.append(f"not a notebook of {info.name}: none of its answer cells is there; {what}")

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        meta = _meta(cell)
        if "nbgrader" in cell.get("metadata", {}) and meta.get("grade_id") not in known:
            if meta.get("grade_id") and not flags:
                notes.append(f"cell id {meta.get('grade_id')!r} is not part of {info.name}: "
                             "graded as an ordinary cell")
            elif (meta.get("grade") or meta.get("solution") or meta.get("locked")) and not flags:
                notes.append("a cell with nbgrader metadata but no id: graded as an ordinary cell")
            del cell.metadata["nbgrader"]

    edited = []
    for cell in nb.cells:
        g = _meta(cell).get("grade_id")
        if g and info.kinds.get(g) in ("test", "locked") and g in info.release and \
                _visible(cell.source) != _visible(info.release[g].source):
            edited.append(g)
    if edited:
        notes.append(f"edited read-only cells restored: {', '.join(dict.fromkeys(edited))}")
    ids = [_meta(c).get("grade_id") for c in nb.cells if _meta(c).get("grade_id")]
    dups = sorted({g for g in ids if ids.count(g) > 1})
    if dups:
        # as nbgrader's DeduplicateIds does (the last copy keeps its id), but removing the
        # whole nbgrader metadata of the earlier copies: nbgrader 0.9.6 leaves an empty dict
        # there, on which its OverwriteCells then fails (KeyError 'grade_id')
        seen: set[str] = set()
        for cell in reversed(nb.cells):
            g = _meta(cell).get("grade_id")
            if g in seen:
                del cell.metadata["nbgrader"]
            elif g:
                seen.add(g)
        notes.append(f"duplicated cells ({', '.join(dups)}): the last copy of each is graded, "
                     "earlier copies run as ordinary cells")
        ids = [_meta(c).get("grade_id") for c in nb.cells if _meta(c).get("grade_id")]
    seen = list(dict.fromkeys(ids))
    ranked = [g for g in seen if g in known]
    if ranked != [g for g in info.order if g in ranked]:
        notes.append("cells re-ordered: graded in the submitted order")

    missing = [g for g in info.order if g not in ids]
    if missing:
        for gid in missing:
            pos = info.order.index(gid)
            before = [g for g in info.order[:pos] if g in ids]
            if before:
                anchor = max(i for i, c in enumerate(nb.cells)
                             if _meta(c).get("grade_id") == before[-1])
                where = anchor + 1
            else:
                where = 0
            cell = copy.deepcopy(info.release[gid])
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
            nb.cells.insert(where, cell)
            ids.append(gid)
        if not had_cells:
            notes.append("empty notebook: graded as the unchanged exercise")
        elif not flags:
            tests = [g for g in missing if info.kinds.get(g) == "test"]
            others = [g for g in missing if info.kinds.get(g) != "test"]
            if tests:
                notes.append(f"deleted test cells put back: {', '.join(tests)}")
            if others:
                notes.append(f"deleted cells put back from the exercise: {', '.join(others)}")

    spec = nb.metadata.get("kernelspec", {}) or {}
    if info.kernelspec and spec.get("name") != info.kernelspec.get("name"):
        notes.append(f"kernel {spec.get('name')!r} replaced by {info.kernelspec.get('name')!r}")
        nb.metadata["kernelspec"] = dict(info.kernelspec)
    return nb, notes, flags


# ----------------------------------------------------------------------------- scan


class _Scanner(ast.NodeVisitor):
    def __init__(self, info: AssignmentInfo, imported: dict[str, str]):
        self.info = info
        self.modules = dict(info.modules) | imported  # names bound to modules
        self.found: list[tuple[int, str]] = []

    def flag(self, node, reason: str) -> None:
        self.found.append((getattr(node, "lineno", 0), reason))

    def _root(self, node) -> str | None:
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            node = node.func if isinstance(node, ast.Call) else node.value
        return node.id if isinstance(node, ast.Name) else None

    def _dotted(self, node) -> str:
        parts = []
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            if isinstance(node, ast.Attribute):
                parts.append("." + node.attr)
                node = node.value
            elif isinstance(node, ast.Subscript):
                parts.append("[...]")
                node = node.value
            else:
                parts.append("(...)")
                node = node.func
        if isinstance(node, ast.Name):
            parts.append(node.id)
        return "".join(reversed(parts)).lstrip(".")

    def visit_Import(self, node):
        for a in node.names:
            top = a.name.split(".")[0]
            if top not in ALLOWED_IMPORTS:
                self.flag(node, f"imports `{a.name}`")
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        top = (node.module or "").split(".")[0]
        if node.level or top not in ALLOWED_IMPORTS:
            self.flag(node, f"imports from `{'.' * node.level}{node.module or ''}`")
        for a in node.names:
            if a.name in ATTRS or a.name in MODULE_IO or a.name in CALLS or \
                    a.name.startswith("_"):
                self.flag(node, f"imports `{a.name}` from `{node.module}`")
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in CALLS and node.id not in ("open",):
            self.flag(node, f"uses `{node.id}`")
        elif node.id == "open":
            self.flag(node, "opens files (`open`)")
        elif node.id in NAMES:
            self.flag(node, f"uses `{node.id}`")
        elif node.id.startswith("__flows"):
            self.flag(node, "touches the grader's guard")
        self.generic_visit(node)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
            name = node.args[1]
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.flag(node, "reads an attribute by a computed name (`getattr`)")
            elif name.value in ATTRS or name.value.startswith("__"):
                self.flag(node, f"reads `{name.value}` through getattr")
        if isinstance(node.func, ast.Attribute) and node.func.attr in MODULE_IO:
            root = self._root(node.func)
            if root in self.modules:
                self.flag(node, f"reads or writes files (`{self._dotted(node.func)}`)")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        root = self._root(node)
        if node.attr in ATTRS:
            self.flag(node, f"uses `.{node.attr}`")
        elif node.attr.startswith("_") and not node.attr.startswith("__") and \
                isinstance(node.value, ast.Name) and node.value.id in self.modules:
            self.flag(node, f"uses the private `{node.value.id}.{node.attr}`")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            if root in self.modules or root in self.info.locked_objects or \
                    root in self.info.protected or (root and hasattr(builtins, root)):
                verb = "assigns" if isinstance(node.ctx, ast.Store) else "deletes"
                self.flag(node, f"{verb} `{self._dotted(node)}`")
        self.generic_visit(node)

    def visit_Subscript(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            root = self._root(node)
            if root in self.modules or (root and hasattr(builtins, root)):
                self.flag(node, f"writes into `{root}`")
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        for base in node.bases:
            dotted = self._dotted(base)
            if dotted.split(".")[-1] in ("Tensor", "ndarray") or dotted in ("type", "ABCMeta"):
                self.flag(node, f"defines a subclass of `{dotted}`")
        for kw in node.keywords:
            if kw.arg == "metaclass":
                self.flag(node, "defines a class with a metaclass")
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    item.name in DUNDER_DEFS:
                self.flag(item, f"defines `{item.name}` (can change what the tests compare)")
            if isinstance(item, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in DUNDER_DEFS for t in item.targets):
                self.flag(item, "sets a special method (can change what the tests compare)")
        self.generic_visit(node)

    def visit_ExceptHandler(self, node):
        names = []
        if node.type is not None:
            for t in (node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]):
                names.append(self._dotted(t))
        for n in names:
            if n.split(".")[-1] in EXCEPTIONS:
                self.flag(node, f"catches `{n}` (defeats time limits)")
        self.generic_visit(node)


def scan(nb: NotebookNode, info: AssignmentInfo) -> list[Finding]:
    """Findings in the student-controlled code cells of a (repaired) notebook, in cell order."""
    findings: list[Finding] = []
    imported: dict[str, str] = {}
    for i in student_cells(nb, info):
        cell = nb.cells[i]
        gid = _meta(cell).get("grade_id")
        source = cell.source
        python = _ipython_to_python(source)
        tree = _parse(python)
        if tree is None:
            continue  # a syntax error: the kernel will not run it either
        local: list[tuple[int, str]] = []
        if python.strip() != source.strip() and "get_ipython()" in python:
            local.append((1, "uses IPython magics or shell commands (`%`, `!`)"))
        imported.update(_module_bindings(tree))
        # names bound to a module or to something inside one (`t = torch`, `N = torch.nn`):
        # their attributes are the module's
        known = set(info.modules) | set(imported) | set(info.locked_objects)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Name, ast.Attribute,
                                                                        ast.Subscript)):
                root = node.value
                while isinstance(root, (ast.Attribute, ast.Subscript)):
                    root = root.value
                if isinstance(root, ast.Name) and (root.id in known or hasattr(builtins, root.id)):
                    for t in node.targets:
                        if isinstance(t, ast.Name):
                            imported[t.id] = f"alias of {root.id}"
        scanner = _Scanner(info, imported)
        scanner.visit(tree)
        local += scanner.found
        for name, line, how in _top_bindings(tree):
            if name not in info.protected:
                continue
            if how.startswith("import:") and info.modules.get(name) == how[len("import:"):]:
                continue  # `import torch` again: the same module
            local.append((line, f"rebinds `{name}`, which the tests use"))
        seen = set()
        for line, reason in sorted(local):
            if reason not in seen:
                seen.add(reason)
                findings.append(Finding(i, gid, line, reason))
    return findings


def tests_after(nb: NotebookNode, info: AssignmentInfo, index: int) -> list[str]:
    """grade_ids of the test cells that nbgrader will grade and that run after cell `index`."""
    last: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        gid = _meta(cell).get("grade_id")
        if gid and info.kinds.get(gid) == "test":
            last[gid] = i
    return [g for g, i in sorted(last.items(), key=lambda kv: kv[1]) if i > index]

