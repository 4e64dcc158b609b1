"""What a target's harness is, read from its source before anything runs it: :func:`read_harness`.

The farm researches two shapes of harness. Its own (this repository's `prepare.py` and `train.py`):
the budget comes in through the AUTORESEARCH_TIME_BUDGET knob, `prepare.py` has `evaluate_bpb`,
`seed()` and the weight hand-off, `train.py` defines `build_model`. And karpathy/autoresearch's
(`upstream`): `prepare.py` fixes `TIME_BUDGET` as a literal constant and defines
`evaluate_bpb(model, tokenizer, batch_size)`, `train.py` trains at module level on what it imports
from `prepare`. Anything else is `unknown`, with the reasons said as what to change.

Only the syntax tree is read (the files are never imported: a harness that needs CUDA, a network or
an uninstalled package at import is still read on a laptop), so every answer is what the code says
literally: a budget bound to an expression of numbers, a kernel repository named by a literal or by a
conditional between literals, a CUDA call written out. Code that tests `torch.cuda.is_available()`
is taken to fall back to the CPU, so that file gives no CUDA evidence. Standard library only: the
control plane's pre-flight (`cluster/preflight.py`) reads it, and so may a worker.
"""

from __future__ import annotations

import ast
import posixpath
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FARM, UPSTREAM, UNKNOWN = "farm", "upstream", "unknown"
BUDGET_KNOB = "AUTORESEARCH_TIME_BUDGET"
# calls that fail at once without a CUDA device (a lazily initialised one, like torch.cuda.manual_seed or
# max_memory_allocated, is harmless on a CPU and so is no evidence)
CUDA_ONLY = frozenset({"get_device_capability", "get_device_name", "get_device_properties", "synchronize",
                       "current_device", "set_device", "current_stream", "default_stream", "Event", "Stream",
                       "mem_get_info", "reset_peak_memory_stats", "init"})
_CATCHES_IMPORT = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"__future__"}


@dataclass(frozen=True)
class HarnessInfo:
    """What :func:`read_harness` found. Every string is meant to be printed as it is."""

    kind: str  # "farm" | "upstream" | "unknown"
    problems: tuple[str, ...] = ()  # why the kind is unknown, each naming what to change
    budget: float | None = None  # seconds, from a literal TIME_BUDGET constant; None = the knob (or none)
    budget_source: str = ""  # e.g. "the constant prepare.TIME_BUDGET = 300" or "the AUTORESEARCH_TIME_BUDGET knob"
    needs_cuda: str = ""  # where the code needs CUDA with no CPU fallback ("train.py line 21: ..."); "" = nowhere
    imports: tuple[str, ...] = ()  # distributions' top-level modules train.py and prepare.py need (not optional ones)
    import_sites: tuple[tuple[str, str], ...] = ()  # (module, the first file that imports it), for messages
    kernels: tuple[str, ...] = ()  # hub repositories passed to get_kernel(...), to fetch before runs start
    cache_default: str = ""  # where the harness keeps its data when nothing says otherwise ("~/..."), if literal
    harness_file: str = "prepare.py"  # the frozen module the editable file takes its harness from
    editable: str = "train.py"

    def imported_by(self, module: str) -> str:
        """The file that imports `module` (the editable file's name if none is recorded)."""
        return dict(self.import_sites).get(module, self.editable)


def read_harness(files: Mapping[str, str], *, editable: str = "train.py",
                 frozen: Sequence[str] = ("prepare.py",)) -> HarnessInfo:
    """Read the harness in `files` (path -> text; the editable and frozen files at least, every
    other file of the tree only to tell the repository's own modules from installed ones)."""
    harness = _harness_file(files, editable, frozen)
    own = _own_modules(files)
    problems: list[str] = []
    trees: dict[str, ast.Module] = {}
    for name in (editable, harness):
        if not name:
            continue
        if name not in files:
            problems.append(f"{name} is not in the repository: commit it (or name the files with run.editable "
                            "and run.frozen)")
            continue
        try:
            trees[name] = ast.parse(files[name], name)
        except SyntaxError as e:
            problems.append(f"{name} does not parse (line {e.lineno}: {e.msg}): fix it")
    if not harness:
        problems.append("run.frozen names no Python harness file: list the one train.py imports "
                        "(run.frozen = [\"prepare.py\"])")
    train, prep = trees.get(editable), trees.get(harness)
    sites: dict[str, str] = {}
    cuda, kernels = "", []
    for name, tree in trees.items():
        for module in _imports(tree, own):
            sites.setdefault(module, name)
        cuda = cuda or _cuda_evidence(name, tree)
        kernels += [k for k in _kernel_repos(tree) if k not in kernels]
    info = dict(imports=tuple(sorted(sites)), import_sites=tuple(sorted(sites.items())), needs_cuda=cuda,
                kernels=tuple(kernels), harness_file=harness, editable=editable)
    if problems or train is None or prep is None:
        return HarnessInfo(kind=UNKNOWN, problems=tuple(problems), **info)
    stem = harness[:-3]
    evaluates = "evaluate_bpb" in _defined(prep)
    cache = _cache_default(prep)
    if BUDGET_KNOB in _strings(prep):
        missing = []
        if not evaluates:
            missing.append(f"{harness} reads {BUDGET_KNOB} but defines no evaluate_bpb: the farm's harness "
                           f"scores a run with {stem}.evaluate_bpb(model, tokenizer, batch_size); define it")
        if "build_model" not in _defined(train):
            missing.append(f"{editable} defines no build_model(vocab_size): the farm's harness rebuilds the "
                           f"model from it to score the handed-over weights; define it (as this project's "
                           f"train.py does), or make {harness} karpathy/autoresearch's shape (TIME_BUDGET = 300)")
        kind = UNKNOWN if missing else FARM
        return HarnessInfo(kind=kind, problems=tuple(missing), budget_source=f"the {BUDGET_KNOB} knob",
                           cache_default=cache, **info)
    value, text = _budget_constant(prep)
    missing = []
    if value is None:
        missing.append(f"{harness} fixes no time budget: bind a number to TIME_BUDGET (TIME_BUDGET = 300, as "
                       f"karpathy/autoresearch does) or read it from {BUDGET_KNOB} (as this project's prepare.py "
                       "does)")
    elif value <= 0:
        missing.append(f"{harness} sets TIME_BUDGET = {text}: make it a positive number of seconds")
    if not evaluates:
        missing.append(f"{harness} defines no evaluate_bpb(model, tokenizer, batch_size): the farm scores a run "
                       f"with it; define it in {harness}")
    if not _imports_from(train, stem):
        missing.append(f"{editable} imports nothing from {stem}: it must take its harness from the frozen file "
                       f"(from {stem} import TIME_BUDGET, evaluate_bpb, ...)")
    if missing:
        return HarnessInfo(kind=UNKNOWN, problems=tuple(missing), cache_default=cache, **info)
    return HarnessInfo(kind=UPSTREAM, budget=value, budget_source=f"the constant {stem}.TIME_BUDGET = {text}",
                       cache_default=cache, **info)


# -- the files -----------------------------------------------------------------------------------
def _harness_file(files: Mapping[str, str], editable: str, frozen: Sequence[str]) -> str:
    """The frozen Python file the editable one imports from; else prepare.py, else the first frozen one."""
    candidates = [f for f in frozen if f.endswith(".py") and "/" not in f]
    try:
        tree = ast.parse(files.get(editable, ""))
    except SyntaxError:
        tree = None
    if tree is not None:
        for f in candidates:
            if _imports_from(tree, f[:-3]):
                return f
    return "prepare.py" if "prepare.py" in candidates else (candidates[0] if candidates else "")


def _own_modules(files: Mapping[str, str]) -> set[str]:
    """The top-level names the repository itself provides: its .py files and its folders."""
    own = set()
    for path in files:
        head, sep, _ = path.partition("/")
        if sep:
            own.add(head)
        elif head.endswith(".py"):
            own.add(head[:-3])
    return own


# -- the reading ---------------------------------------------------------------------------------
class _Imports(ast.NodeVisitor):
    """Top-level module names imported outside a `try` that catches their ImportError (those are optional)."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.guarded = 0

    def visit_Try(self, node: ast.Try) -> None:
        catches = any(h.type is None or any(n in _CATCHES_IMPORT for n in _names(h.type)) for h in node.handlers)
        self.guarded += catches
        for stmt in node.body:
            self.visit(stmt)
        self.guarded -= catches
        for stmt in node.handlers + node.orelse + node.finalbody:
            self.visit(stmt)

    visit_TryStar = visit_Try

    def visit_Import(self, node: ast.Import) -> None:
        if not self.guarded:
            self.found += [a.name.partition(".")[0] for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not self.guarded and not node.level and node.module:
            self.found.append(node.module.partition(".")[0])


def _names(node: ast.AST) -> list[str]:
    return [n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))]


def _imports(tree: ast.Module, own: set[str]) -> list[str]:
    v = _Imports()
    v.visit(tree)
    return [m for m in dict.fromkeys(v.found) if m not in _STDLIB and m not in own]


def _imports_from(tree: ast.Module, stem: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == stem:
            return True
        if isinstance(node, ast.Import) and any(a.name == stem for a in node.names):
            return True
    return False


def _defined(tree: ast.Module) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, imports)."""
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            out |= {a.asname or a.name for a in node.names}
    return out


def _strings(tree: ast.Module) -> set[str]:
    """The string literals the code uses; not docstrings or other bare string statements (a docstring that
    mentions the budget knob does not read it)."""
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in bare}


def _module_bindings(tree: ast.Module) -> dict[str, ast.expr]:
    """Each top-level name's last plain assignment (what the module leaves it bound to)."""
    out: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


def _budget_constant(tree: ast.Module) -> tuple[float | None, str]:
    """TIME_BUDGET's value when the module binds it to an expression of number literals, and its text."""
    expr = _module_bindings(tree).get("TIME_BUDGET")
    value = _number(expr) if expr is not None else None
    return value, (ast.unparse(expr) if expr is not None else "")


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _number(node.left), _number(node.right)
        if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
            return None
        return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) \
            else a * b if isinstance(node.op, ast.Mult) else a / b
    return None


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import of the file."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    head = a.name.partition(".")[0]
                    out[head] = head
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _qual(node: ast.expr, aliases: Mapping[str, str]) -> str:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _qual(node.value, aliases)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _cuda_literal(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda")


def _cuda_evidence(name: str, tree: ast.Module) -> str:
    """Where `tree` first needs CUDA ("<file> line <n>: <call>"), or "" (also for a file with a fallback)."""
    aliases = _aliases(tree)
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    quals = [_qual(c.func, aliases) for c in calls]
    if any(q == "torch.cuda.is_available" for q in quals):
        return ""
    for call, qual in zip(calls, quals):
        head, _, last = qual.rpartition(".")
        first = call.args[0] if call.args else None
        if (head == "torch.cuda" and last in CUDA_ONLY) or (qual == "torch.device" and _cuda_literal(first)) \
                or any(k.arg == "device" and _cuda_literal(k.value) for k in call.keywords) \
                or (isinstance(call.func, ast.Attribute) and call.func.attr == "cuda" and not qual.startswith("torch.")) \
                or (isinstance(call.func, ast.Attribute) and call.func.attr == "to" and _cuda_literal(first)):
            text = ast.unparse(call)
            return f"{name} line {call.lineno}: {text if len(text) <= 80 else text[:77] + '...'}"
    return ""


def _kernel_repos(tree: ast.Module) -> list[str]:
    """The literal repository ids passed to `get_kernel(...)`, through a name bound to a literal or to a
    conditional expression between literals (anywhere in the file)."""
    aliases = _aliases(tree)
    bound: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    bound.setdefault(t.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            bound.setdefault(node.target.id, []).append(node.value)

    def literals(node: ast.expr, depth: int = 0) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return literals(node.body, depth) + literals(node.orelse, depth)
        if isinstance(node, ast.Name) and depth < 4:
            return [s for v in bound.get(node.id, []) for s in literals(v, depth + 1)]
        return []

    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _qual(node.func, aliases).rpartition(".")[2] == "get_kernel":
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "repo_id"), None)
            out += [s for s in (literals(arg) if arg is not None else []) if s not in out]
    return out


def _cache_default(tree: ast.Module) -> str:
    """CACHE_DIR as the module spells it, with the home directory as "~", when it is built of literals
    (os.path.join, os.path.expanduser, Path.home() / ...); "" otherwise."""
    aliases, bindings = _aliases(tree), _module_bindings(tree)

    def value(node: ast.expr, depth: int = 0) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and depth < 4 and node.id in bindings:
            return value(bindings[node.id], depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            a, b = value(node.left, depth), value(node.right, depth)
            return None if a is None or b is None else posixpath.join(a, b)
        if not isinstance(node, ast.Call):
            return None
        qual = _qual(node.func, aliases)
        args = [value(a, depth) for a in node.args]
        if None in args or node.keywords:
            return None
        if qual in ("os.path.join", "pathlib.Path", "Path", "pathlib.PurePath") and args:
            return posixpath.join(*args)
        if qual in ("os.path.expanduser", "os.path.abspath", "os.path.normpath", "str", "os.fspath") and len(args) == 1:
            return args[0]
        if qual in ("pathlib.Path.home", "Path.home") and not args:
            return "~"
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("expanduser", "resolve") and not args:
            return value(node.func.value, depth)
        return None

    expr = bindings.get("CACHE_DIR")
    found = value(expr) if expr is not None else None
    return posixpath.normpath(found) if found and found.startswith("~") else ""

