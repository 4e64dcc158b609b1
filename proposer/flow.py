"""Static data flow over a train.py: which constants only feed printouts, which feed a divisibility assert.

Both questions are answered on the syntax tree alone (nothing is imported or run), over names
resolved by Python's scope rules: module, functions, classes and comprehensions, with ``global``
and ``nonlocal`` honoured. Attributes and containers are not followed: a value stored in
``self.x`` or ``cfg["x"]`` is simply a use the analysis cannot see past.

Print-only. A read of a name is followed outwards through value-only expressions (arithmetic,
comparisons, conditional expressions, f-strings, tuples, subscripts and a few pure builtins such
as ``int`` and ``round``) to where the value ends up: an argument of ``print()``, of a logger call
or of ``sys.stdout.write`` is harmless; an assignment to plain names hands the question on to
those names; anything else (another call, a condition, a return, an attribute, a default
argument...) is a real use. A name is print-only when it is read at least once and every read is
harmless or flows into print-only names. That is a greatest fixed point, so a running average that
feeds itself and a printout still counts. Where unsure the answer is "real": a constant nobody
reads (another module might) is not print-only, and a module that reaches its names dynamically
(``globals()``, ``eval``...) has no print-only names at all.

Divisibility-bound. A name is bound when it, or any name computed from it (through assignments of
any kind, calls and a function's return value included), is read inside the ``%`` of an assert or
inside an assert's comparison that multiplies a floor division (``n // k * k == n``). Asserts in
functions count as well as module-level ones: a train.py may check its batch arithmetic in
``main()``. Over-binding only costs the intermediate steps of a power of two; under-binding costs
a crashed run, so here the analysis leans the other way.

Granular. A name is granular when it, or any name computed from it, is the divisor of a ``//`` or
``%`` anywhere (``n_head = width // HEAD_DIM``): it is a unit others are counted in, such as a
head width, and a unit one off a power of two is odd, which rotary embeddings and kernels reject.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

_Var = tuple[int, str]  # (id of the scope's node, name)
_SCOPES = (
    ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
)  # fmt: skip
_VALUE_ONLY = (
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.JoinedStr, ast.FormattedValue,
    ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Subscript, ast.Starred,
)  # fmt: skip
PURE_CALLS = frozenset({"abs", "bool", "float", "format", "int", "max", "min", "round", "str"})
LOGGERS = frozenset({"log", "logger", "logging", "_log", "_logger", "LOG", "LOGGER"})
LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "log"})
DYNAMIC = frozenset({"globals", "locals", "vars", "eval", "exec"})
_PRINT = "print"
# summary keys the farm reads (the score, the judge's VRAM cap): a printout of one is the result, not chatter
SCORED_KEYS = ("val_bpb", "peak_vram_mb")


def _reports_a_score(call: ast.Call) -> bool:
    """Whether a print call writes a summary line the farm reads (``f"val_bpb: {x}"``): a stand-in
    whose metric is a formula of its constants prints its score, and those constants are real."""
    texts = [n.value for a in call.args for n in ast.walk(a) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return any(key in t for t in texts for key in SCORED_KEYS)


@dataclass(frozen=True)
class Flow:
    print_only: frozenset[str]  # module-level names whose every use ends in a printout
    bound: frozenset[str]  # module-level names that reach a divisibility assert
    granular: frozenset[str]  # module-level names that reach the divisor of a // or %


class _Scope:
    def __init__(self, node: ast.AST, parent: _Scope | None) -> None:
        self.node, self.parent = node, parent
        self.bound: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()


def _outer_parts(node: ast.AST) -> list[ast.AST]:
    """The parts of a scope-making node that are evaluated in the enclosing scope."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        parts: list[ast.AST] = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
        if not isinstance(node, ast.Lambda):
            parts += [*node.decorator_list, *([node.returns] if node.returns else [])]
        return parts
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *node.keywords]
    return []


def _names(node: ast.AST) -> list[ast.Name]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Name)]


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _is_floordiv(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv)


def _divisibility_parts(test: ast.expr, quotient: Callable[[ast.Name], bool]) -> list[ast.expr]:
    """The sub-expressions of an assert's test that check a divisibility: a ``%`` (not string
    formatting), or a comparison with a product of a floor division, written inline or through a
    name assigned one (``steps = n // k`` ... ``steps * k == n``); ``quotient`` tells those names."""
    out: list[ast.expr] = []
    for n in ast.walk(test):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) and not _is_str(n.left):
            out.append(n)
        elif isinstance(n, ast.Compare):
            products = [m for m in ast.walk(n) if isinstance(m, ast.BinOp) and isinstance(m.op, ast.Mult)]
            factors = [k for m in products for k in ast.walk(m)]
            if any(_is_floordiv(k) or (isinstance(k, ast.Name) and quotient(k)) for k in factors):
                out.append(n)
    return out


def _pairs(target: ast.expr, value: ast.expr) -> list[tuple[ast.expr, ast.expr]]:
    """``a, b = x, y`` as (a, x) and (b, y); any other assignment as the one pair."""
    plain = isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
    if plain and len(target.elts) == len(value.elts):  # type: ignore[attr-defined]
        if not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts)):  # type: ignore[attr-defined]
            return [p for t, v in zip(target.elts, value.elts) for p in _pairs(t, v)]  # type: ignore[attr-defined]
    return [(target, value)]


class _Analysis:
    def __init__(self, tree: ast.Module) -> None:
        self.module = _Scope(tree, None)
        self.parent: dict[int, ast.AST] = {}
        self.scope_of: dict[int, _Scope] = {}
        self.nodes: list[ast.AST] = []  # walked once: the passes below reuse it
        self._place(tree)

    def _place(self, tree: ast.Module) -> None:
        """Give every node its parent and scope, and every scope the names it binds."""
        override: dict[int, _Scope] = {}
        stack: list[tuple[ast.AST, _Scope]] = [(tree, self.module)]
        while stack:
            node, scope = stack.pop()
            self.nodes.append(node)
            self.scope_of[id(node)] = scope
            inner = scope
            if isinstance(node, _SCOPES):
                inner = _Scope(node, scope)
                for part in _outer_parts(node):
                    override[id(part)] = scope
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    scope.bound.add(node.name)
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                scope.bound.add(node.id)
            elif isinstance(node, ast.arg):
                scope.bound.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                scope.bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                scope.bound.add(node.name)
            elif isinstance(node, ast.Global):
                scope.globals.update(node.names)
            elif isinstance(node, ast.Nonlocal):
                scope.nonlocals.update(node.names)
            for child in ast.iter_child_nodes(node):
                self.parent[id(child)] = node
                stack.append((child, override.pop(id(child), inner)))

    def var(self, name: ast.Name) -> _Var:
        return self.resolve(name.id, self.scope_of[id(name)])

    def resolve(self, name: str, scope: _Scope) -> _Var:
        s: _Scope | None = scope
        while s is not None and s.parent is not None:
            if name in s.globals:
                break
            if name in s.bound and name not in s.nonlocals:
                return id(s.node), name
            s = s.parent
            while s is not None and s.parent is not None and isinstance(s.node, ast.ClassDef):
                s = s.parent  # a class body's names are not visible to the scopes inside it
        return id(self.module.node), name

    def _targets(self, targets: list[ast.expr]) -> frozenset[_Var] | None:
        """The names an assignment binds, or None when one target is not a plain name."""
        out: set[_Var] = set()
        for t in targets:
            while isinstance(t, ast.Starred):
                t = t.value
            if isinstance(t, ast.Name):
                out.add(self.var(t))
            elif isinstance(t, (ast.Tuple, ast.List)):
                inner = self._targets(list(t.elts))
                if inner is None:
                    return None
                out |= inner
            else:
                return None
        return frozenset(out)

    def _is_print(self, call: ast.Call) -> bool:
        f, scope = call.func, self.scope_of[id(call)]
        if isinstance(f, ast.Name):
            return f.id == _PRINT and self.resolve(_PRINT, scope) == (id(self.module.node), _PRINT) and (
                _PRINT not in self.module.bound
            )
        if not isinstance(f, ast.Attribute):
            return False
        owner = f.value
        if isinstance(owner, ast.Name):
            return owner.id in LOGGERS and f.attr in LOG_METHODS
        return (  # sys.stdout.write / sys.stderr.write
            f.attr == "write" and isinstance(owner, ast.Attribute) and owner.attr in ("stdout", "stderr")
            and isinstance(owner.value, ast.Name) and owner.value.id == "sys"
        )  # fmt: skip

    def _is_pure(self, call: ast.Call) -> bool:
        f = call.func
        return isinstance(f, ast.Name) and f.id in PURE_CALLS and f.id not in self.module.bound

    def fate(self, node: ast.AST) -> str | frozenset[_Var]:
        """Where the value read at ``node`` ends up: "print", "real", or the names it is assigned to."""
        while True:
            parent = self.parent.get(id(node))
            if isinstance(parent, ast.keyword):
                node, parent = parent, self.parent.get(id(parent))
            if isinstance(parent, ast.Call):
                if node is parent.func:
                    return "real"
                if self._is_print(parent):
                    return "real" if _reports_a_score(parent) else "print"
                if not self._is_pure(parent):
                    return "real"
            elif isinstance(parent, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node is parent.value:
                targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
                out = self._targets(targets)
                return "real" if out is None else out
            elif isinstance(parent, (ast.Tuple, ast.List)) and isinstance(self.parent.get(id(parent)), ast.Assign):
                stmt = self.parent[id(parent)]
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and stmt.value is parent:
                    for t, v in _pairs(stmt.targets[0], parent):
                        if v is node:
                            out = self._targets([t])
                            return "real" if out is None else out
            if not isinstance(parent, (*_VALUE_ONLY, ast.Call)):
                return "real"
            if not isinstance(getattr(parent, "ctx", ast.Load()), ast.Load):
                return "real"  # a read inside a store target: d[NAME] = ..., a[i], b = ...
            node = parent

    def dependencies(self) -> dict[_Var, set[_Var]]:
        """For every name, the names whose values it is computed from (one step)."""
        deps: dict[_Var, set[_Var]] = defaultdict(set)

        def add(target: ast.AST, value: ast.AST) -> None:
            sources = {self.var(n) for n in _names(value) if isinstance(n.ctx, ast.Load)}
            for t in _names(target):
                if not isinstance(t.ctx, ast.Load):
                    deps[self.var(t)] |= sources

        for node in self.nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    for t, v in _pairs(target, node.value):
                        add(t, v)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                add(node.target, node.value)
                if isinstance(node, ast.AugAssign):
                    add(node.target, node.target)
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                add(node.target, node.iter)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                add(node.optional_vars, node.context_expr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = self.resolve(node.name, self.scope_of[id(node)])
                for r in ast.walk(node):
                    if isinstance(r, ast.Return) and r.value is not None:
                        deps[fn] |= {self.var(n) for n in _names(r.value) if isinstance(n.ctx, ast.Load)}
        return deps


def analyse(tree: ast.Module) -> Flow:
    """The print-only and the divisibility-bound module-level names of a parsed train.py."""
    a = _Analysis(tree)
    module = id(a.module.node)
    reads = [n for n in a.nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]

    print_only: set[_Var] = set()
    if not any(n.id in DYNAMIC and a.var(n)[0] == module for n in reads) and not any(
        isinstance(n, ast.Attribute) and n.attr == "__dict__" for n in a.nodes
    ):
        fates: dict[_Var, list[str | frozenset[_Var]]] = defaultdict(list)
        for n in reads:
            fates[a.var(n)].append(a.fate(n))
        print_only = {v for v, fs in fates.items() if fs and "real" not in fs}
        changed = True
        while changed:
            changed = False
            for v in sorted(print_only):
                if any(f != "print" and not f <= print_only for f in fates[v]):  # type: ignore[operator]
                    print_only.discard(v)
                    changed = True

    quotients: set[_Var] = set()  # names assigned a floor division
    for node in a.nodes:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t, v in (p for target in targets for p in _pairs(target, node.value)):
                if any(_is_floordiv(k) for k in ast.walk(v)):
                    quotients |= {a.var(n) for n in _names(t) if not isinstance(n.ctx, ast.Load)}
    checked: set[_Var] = set()
    divisors: set[_Var] = set()
    for node in a.nodes:
        if isinstance(node, ast.Assert):
            for part in _divisibility_parts(node.test, lambda n: a.var(n) in quotients):
                checked |= {a.var(n) for n in _names(part) if isinstance(n.ctx, ast.Load)}
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.FloorDiv, ast.Mod)) and not _is_str(node.left):
            divisors |= {a.var(n) for n in _names(node.right) if isinstance(n.ctx, ast.Load)}
    deps = a.dependencies()

    def upstream(start: set[_Var]) -> frozenset[str]:
        """The module-level names that ``start`` is computed from, ``start`` included."""
        seen, todo = set(start), list(start)
        while todo:
            for s in deps.get(todo.pop(), ()):
                if s not in seen:
                    seen.add(s)
                    todo.append(s)
        return frozenset(name for scope, name in seen if scope == module)

    return Flow(
        frozenset(name for scope, name in print_only if scope == module), upstream(checked), upstream(divisors)
    )
