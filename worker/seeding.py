"""What seeds a candidate's random number generators: the reading behind the tripwire's seeding checks.

The farm assigns every measurement its seed (``AUTORESEARCH_SEED``, which the frozen harness
exposes as ``prepare.seed()``), so a candidate must not change how `train.py` seeds.
:func:`worker.tripwire.seeding_calls` and :func:`worker.tripwire.uses_farm_seed` are the interface;
this module does the reading for them, from the source's :mod:`ast`, with the tripwire's alias
resolution handed in (so there is one resolver): the seeding calls in source order, and for each
the assignments of the names its seed reads, looked up in the scopes Python would look them up in
(a function's own variable, else the module's; a class body is not seen from its methods). It
reads text, not behaviour, as the tripwire does.
"""

from __future__ import annotations

import ast
from typing import Callable

HARNESS = "prepare"  # the frozen harness's module (worker.tripwire.HARNESS)
ENVIRON = {"os.environ", "os.environb", "os.getenv", "os.getenvb"}

# A call of a method by one of these names seeds (or resets) a generator, whatever it is called on:
# `torch.manual_seed`, `g.manual_seed` on a torch.Generator, `random.seed`, `np.random.set_state`, ...
SEED_METHODS = {"manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state", "set_rng_state_all",
                "set_state", "setstate"}
RNG_MODULES = {"torch", "random", "numpy"}  # `from torch import manual_seed`: a bare name seeds only from these
# constructors that seed the generator they make when given an argument (without one they draw from the OS)
SEEDED_CONSTRUCTORS = {"random.Random", *(f"numpy.random.{n}" for n in (
    "default_rng", "RandomState", "SeedSequence", "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"))}
SEED_ENV = "AUTORESEARCH_SEED"
FARM_SEED = f"{HARNESS}.seed"
HARNESS_LOADER = f"{HARNESS}.make_dataloader"
LOADER_SEED_POSITION = 6  # make_dataloader(tokenizer, B, T, split, device, buffer_size, seed)


class Seeds:
    """The seeding calls of one parsed file, and the scopes that say what their arguments' names are
    bound to. `quals` resolves an expression to the qualified names it may denote (the tripwire's
    alias table: `np.random.seed` -> `numpy.random.seed`, `from torch import manual_seed`)."""

    def __init__(self, tree: ast.Module, quals: Callable[[ast.AST], set[str]]):
        self.quals = quals
        # (a seeding call, what seeds it: the call itself or the loader's seed, the scope it is in)
        self.calls: list[tuple[ast.Call, ast.AST, _Scope]] = []
        self.scan(tree, _Scope(tree, None))
        self.calls.sort(key=lambda c: _position(c[0]))

    def texts(self) -> list[str]:
        """Every seeding call's text, in source order."""
        return [self.text(call, arg, scope) for call, arg, scope in self.calls]

    def uses_farm_seed(self) -> bool:
        """Whether some seeding call's seed reads the farm's."""
        return any(self.farm(arg, scope) for _, arg, scope in self.calls)

    def scan(self, node: ast.AST, scope: _Scope):
        """Record every binding in the scope Python gives it, and every seeding call with its scope."""
        if isinstance(node, _LEAVES):
            return
        t = type(node)
        if t in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda):
            if t is not ast.Lambda:
                scope.bind(node.name, node)
            inner = _Scope(node, scope)
            outer = [*getattr(node, "decorator_list", []), *getattr(node, "bases", []),
                     *getattr(node, "keywords", []), *([node.returns] if getattr(node, "returns", None) else [])]
            if t is not ast.ClassDef:
                a = node.args
                params = [p for p in (*a.posonlyargs, *a.args, a.vararg, *a.kwonlyargs, a.kwarg) if p]
                outer += [*a.defaults, *(d for d in a.kw_defaults if d), *(p.annotation for p in params if p.annotation)]
                for p in params:
                    inner.bind(p.arg, None)  # a parameter: bound here, to a value the file does not show
            for n in outer:
                self.scan(n, scope)
            for n in (node.body if t is not ast.Lambda else [node.body]):
                self.scan(n, inner)
            return
        if t in (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp):
            scope = _Scope(node, scope)
        elif t is ast.Global:
            scope.globals.update(node.names)
        elif t in (ast.Import, ast.ImportFrom):
            for a in node.names:
                scope.bind(a.asname or a.name.split(".")[0], None)
        elif t is ast.ExceptHandler and node.name:
            scope.bind(node.name, None)
        for name in _bound_names(node):
            home = scope
            while t is ast.NamedExpr and type(home.node) in (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp):
                home = home.parent  # `(s := ...)` in a comprehension binds in the function around it
            home.bind(name, node)
        if t is ast.Call:
            arg = self.seeded_by(node)
            if arg is not None:
                self.calls.append((node, arg, scope))
        for child in ast.iter_child_nodes(node):
            self.scan(child, scope)

    def seeded_by(self, call: ast.Call) -> ast.AST | None:
        """The call itself if it seeds a generator, the seed it passes if it is the harness's loader,
        else None."""
        func = call.func
        quals = self.quals(func)
        if HARNESS_LOADER in quals:
            seed = next((k.value for k in call.keywords if k.arg == "seed"), None)
            if seed is None and len(call.args) > LOADER_SEED_POSITION:
                seed = call.args[LOADER_SEED_POSITION]
            return seed
        if any(q.split(".")[0] == HARNESS for q in quals):
            return None  # `prepare.seed()` reads the seed, it seeds nothing
        if type(func) is ast.Attribute and func.attr in SEED_METHODS:
            return call
        if any(q.split(".")[0] in RNG_MODULES and q.split(".")[-1] in SEED_METHODS for q in quals):
            return call
        if quals & SEEDED_CONSTRUCTORS and (call.args or call.keywords):
            return call
        return None

    def text(self, call: ast.Call, arg: ast.AST, scope: _Scope) -> str:
        if arg is call:
            shown, values = call, [*call.args, *call.keywords]
        else:  # the loader: only its seed matters
            shown = ast.Call(func=call.func, args=[ast.Constant(...)], keywords=[ast.keyword("seed", arg)])
            values = [arg]
        where = [ast.unparse(_header(b)).strip() for b in self.expand(values, scope)]
        return ast.unparse(shown) + (" where " + "; ".join(where) if where else "")

    @staticmethod
    def expand(values: list[ast.AST], scope: _Scope) -> list[ast.AST]:
        """The assignments of the names `values` read in `scope`, and of the names those read, once each."""
        seen: dict[int, ast.AST] = {}
        todo = [(n.id, scope) for v in values for n in ast.walk(v) if type(n) is ast.Name]
        done: set[tuple[int, str]] = set()
        while todo:
            name, at = todo.pop(0)
            home, nodes = at.lookup(name)
            if home is None or (id(home), name) in done:
                continue
            done.add((id(home), name))
            for b in nodes:
                if id(b) not in seen:
                    seen[id(b)] = b
                    if type(b) not in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
                        todo.extend((n.id, home) for n in ast.walk(_value(b)) if type(n) is ast.Name)
        return sorted(seen.values(), key=_position)

    def farm(self, arg: ast.AST, scope: _Scope) -> bool:
        """Whether `arg`, or what its names are assigned, reads the farm's seed."""
        return any(self.reads_farm_seed(n) for n in [arg, *self.expand([arg], scope)])

    def reads_farm_seed(self, node: ast.AST) -> bool:
        nodes = list(ast.walk(node))
        if any(type(n) is ast.Call and FARM_SEED in self.quals(n.func) for n in nodes):
            return True
        environ = any(q in ENVIRON or q.split(".")[:2] == ["os", "environ"]
                      for n in nodes if type(n) in (ast.Name, ast.Attribute) for q in self.quals(n))
        return environ and any(type(n) is ast.Constant and n.value == SEED_ENV for n in nodes)


class _Scope:
    """One of Python's scopes (the module, a function, a class body, a comprehension) and its bindings."""

    def __init__(self, node: ast.AST, parent: _Scope | None):
        self.node, self.parent = node, parent
        self.names: dict[str, list[ast.AST]] = {}  # name -> its assignments here ([] for a parameter or an import)
        self.globals: set[str] = set()

    def root(self) -> _Scope:
        return self if self.parent is None else self.parent.root()

    def bind(self, name: str, node: ast.AST | None):
        if name in self.globals and self.parent is not None:
            return self.root().bind(name, node)
        nodes = self.names.setdefault(name, [])
        if node is not None:
            nodes.append(node)

    def lookup(self, name: str) -> tuple[_Scope | None, list[ast.AST]]:
        """Where a name read in this scope is bound, as Python resolves it (class bodies are skipped
        from inside their methods), and its assignments there."""
        scope, first = self, True
        while scope is not None:
            if name in scope.globals:
                scope = self.root()
            if name in scope.names and (first or type(scope.node) is not ast.ClassDef or scope.parent is None):
                return scope, scope.names[name]
            scope, first = scope.parent, False
        return None, []


_TARGETS = {ast.Assign: lambda n: n.targets, ast.AnnAssign: lambda n: [n.target] if n.value else [],
            ast.AugAssign: lambda n: [n.target], ast.NamedExpr: lambda n: [n.target],
            ast.For: lambda n: [n.target], ast.AsyncFor: lambda n: [n.target], ast.comprehension: lambda n: [n.target],
            ast.withitem: lambda n: [n.optional_vars] if n.optional_vars else []}
_LEAVES = (ast.Name, ast.Constant, ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)


def _bound_names(node: ast.AST) -> list[str]:
    """The names an assignment, a loop, a `with ... as` or a walrus binds to a value (definitions are
    bound by Seeds.scan, in the scope around them)."""
    targets = _TARGETS.get(type(node))
    if targets is None:
        return []
    return [t.id for target in targets(node) for t in ast.walk(target) if type(t) is ast.Name]


def _value(node: ast.AST) -> ast.AST:
    """The expression a binding assigns from."""
    if type(node) in (ast.For, ast.AsyncFor, ast.comprehension):
        return node.iter
    if type(node) is ast.withitem:
        return node.context_expr
    return node.value


def _position(node: ast.AST) -> tuple[int, int]:
    at = node.target if type(node) is ast.comprehension else node.context_expr if type(node) is ast.withitem else node
    return at.lineno, at.col_offset


def _header(node: ast.AST) -> ast.AST:
    """What a binding shows: the statement itself, a loop's header without its body."""
    if type(node) in (ast.For, ast.AsyncFor):
        return ast.comprehension(target=node.target, iter=node.iter, ifs=[], is_async=0)
    return node
