"""A static tripwire for candidate `train.py` files: flag code that reaches for the score instead of earning it.

A candidate is scored by the frozen harness (`prepare.py`): its data, its clock budget, its
`evaluate_bpb`. :func:`findings` reads the candidate's source with :mod:`ast` and names every
construct that only makes sense as an attempt to change that scoring: monkeypatching `prepare` or
the modules it evaluates with (`time`, `os`, `torch.nn.functional`, ...), rebinding a name imported
from `prepare`, reaching into other code through frames, `gc` or `__globals__`, writing the
harness's `AUTORESEARCH_*` settings into the environment, touching the validation split, reading
the harness's data cache directly, or running code chosen at run time (``exec``, imports by
computed names), which cannot be checked at all. Each finding is one line, ``"line N: what (why)"``;
:func:`check` joins them into one reason, or returns None.

What it is not:

* It reads text, not behaviour. Anything spelt at run time passes it: names assembled from
  pieces (``setattr(getattr(torch, "Ten" + "sor"), ...)``), objects reached through containers
  or return values, a second file the candidate writes and then imports. It raises the cost of
  a cheat and catches the obvious ones; it proves nothing.
* It cannot judge what the candidate's own model computes, such as a forward pass that behaves
  differently when it is being evaluated.
* It is one layer among others: the score comes from a trusted evaluation process, the
  validation split is not the candidate's to read, the worker keeps its own clock, and the frozen
  files are compared with their hashes after every run.

Two more readers serve the farm's seed contract (the farm assigns every measurement a seed,
``AUTORESEARCH_SEED``, which the harness exposes as ``prepare.seed()``): :func:`seeding_calls`
lists the calls that seed a random number generator, so admission can refuse a candidate whose
seeding differs from its base's, and :func:`uses_farm_seed` says whether a file takes its seed from
the farm at all (upstream autoresearch's `train.py` seeds itself with 42). Like :func:`findings`
they read text: a seed reached through a helper's parameter or assembled at run time is not seen
(the reading is in :mod:`worker.seeding`, on this module's alias resolution).

A file that does not parse gives no findings: it will crash when run, honestly (one nested too
deeply to walk gives a finding instead). Ordinary training code, including the repository's
`train.py` and any change to its constants, gives none; so do near-misses such as a variable
`val_loss`, `torch.backends.cuda.matmul.allow_tf32 = True` or a write to
`os.environ["PYTORCH_CUDA_ALLOC_CONF"]`. The check is pure and fast (milliseconds for a 600-line
file, about half of it in :func:`ast.parse`) and imports nothing heavy.
"""

from __future__ import annotations

import ast
import re

from worker.seeding import Seeds

HARNESS = "prepare"
# Modules the harness evaluates with: assigning their attributes changes how every score is computed.
EVAL_MODULES = {"argparse", "base64", "bisect", "builtins", "concurrent", "datetime", "hashlib", "io",
                "itertools", "json", "math", "numpy", "os", "pyarrow", "re", "requests", "rustbpe",
                "shutil", "sys", "sysconfig", "tempfile", "tiktoken", "time", "warnings", "torch"}

WHY_HARNESS = "monkeypatching the frozen harness"
WHY_REBIND = "rebinding a name imported from the frozen harness"
WHY_INTROSPECT = "reaches into other code's internals"
WHY_PATCH = "patching a module the evaluation uses"
WHY_ENV = "changes the harness's settings through the environment"
WHY_VAL = "reads the validation split"
WHY_CACHE = "reads the harness's data cache or the farm's files"
WHY_DYNAMIC = "runs or imports code chosen at run time, which cannot be checked"

# Fully qualified names (and everything under them) that no training script needs.
FORBIDDEN = {
    "sys.modules": "uses sys.modules (can swap or patch loaded modules)",
    "sys.path": "uses sys.path (can change which prepare is imported)",
    "sys.meta_path": "uses sys.meta_path (can change which prepare is imported)",
    "sys.path_hooks": "uses sys.path_hooks (can change which prepare is imported)",
    "importlib.reload": "reloads a module (re-runs the harness with other settings)",
    "imp.reload": "reloads a module (re-runs the harness with other settings)",
    "builtins": f"uses builtins ({WHY_PATCH})",
    "ctypes": f"uses ctypes ({WHY_INTROSPECT})",
    **{f"gc.{n}": f"uses gc.{n} ({WHY_INTROSPECT})" for n in ("get_objects", "get_referrers", "get_referents")},
    **{f"sys.{n}": f"uses sys.{n} ({WHY_INTROSPECT})" for n in ("_getframe", "_current_frames")},
    **{f"inspect.{n}": f"uses inspect.{n} ({WHY_INTROSPECT})"
       for n in ("currentframe", "stack", "trace", "getouterframes", "getinnerframes")},
    # public harness names that lead to raw data, the validation split or the weight hand-off
    **{f"{HARNESS}.{n}": f"uses {HARNESS}.{n} ({WHY_CACHE})"
       for n in ("CACHE_DIR", "tokenized_dir", "data_dir", "prepare_dataset", "collect_documents",
                 "iter_offline_docs", "iter_source_docs", "download_shard", "download_climbmix", "main")},
    # ... and those of an upstream-style harness (karpathy/autoresearch's prepare.py)
    **{f"{HARNESS}.{n}": f"uses {HARNESS}.{n} ({WHY_CACHE})"
       for n in ("DATA_DIR", "TOKENIZER_DIR", "list_parquet_files", "download_data", "download_single_shard",
                 "train_tokenizer", "text_iterator", "get_token_bytes")},
    **{f"{HARNESS}.{n}": f"uses {HARNESS}.{n} ({WHY_VAL})"
       for n in ("val_pass_tokens", "check_val_split", "assign_split", "VAL_FILENAME", "_document_batches")},
    **{f"{HARNESS}.{n}": f"uses {HARNESS}.{n} (interferes with the weight hand-off to the trusted evaluator)"
       for n in ("hand_off", "HANDOFF_ENV")},
}
VAL_NAMES = {"_open_split", "VAL_SHARD", "VAL_FRACTION"}
VAL_STRINGS = ("val.bin", "val_offsets", "docs.parquet", "shard_06542")
CACHE_STRINGS = (".cache/autoresearch", "tokenized/", "AUTORESEARCH_CACHE", "XDG_CACHE_HOME", "AUTORESEARCH_HANDOFF",
                 "autoresearch_farm", "autoresearch-farm")
VAL_TEXT = re.compile("|".join([r"\Aval\Z", *map(re.escape, VAL_STRINGS), *(rf"\A{n}\Z" for n in VAL_NAMES)]))
# the cache's paths and variables, or a path to the harness file (not prose that names it)
CACHE_TEXT = re.compile("|".join([r"\Atokenized\Z", *map(re.escape, CACHE_STRINGS), r"\A[\w./\\~-]*prepare\.py\Z"]))
INTROSPECTION_ATTRS = {"__code__", "__globals__", "__closure__", "__defaults__", "__kwdefaults__", "__builtins__",
                       "f_globals", "f_locals", "f_back", "f_builtins", "tb_frame", "gi_frame", "cr_frame"}
ENV_KEYS = {"HOME", "XDG_CACHE_HOME", "PYTHONPATH"}  # besides AUTORESEARCH_*: they move the cache or the harness
ENVIRON = {"os.environ", "os.environb"}
MAPPING_WRITES = {"update", "__ior__", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
NAMESPACE_CALLS = {"globals", "locals", "vars"}
DYNAMIC_CALLS = {"exec", "eval", "compile"}
SKIP_FIELDS = {"ctx", "op", "ops"}  # child fields that never hold anything to check


def findings(source: str) -> list[str]:
    """One ``"line N: what (why)"`` per suspicious construct in `source`, by line; [] if it does not parse."""
    too_deep = ["line 1: code nested too deeply to check (cannot be checked)"]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # the run will fail to compile it too
    except (RecursionError, MemoryError):
        return too_deep
    try:
        wire = _Tripwire(tree)
        wire.visit(tree)
    except RecursionError:
        return too_deep
    found = sorted(dict.fromkeys(wire.found), key=lambda f: f[0])
    return [f"line {line}: {what}" for line, what in found]


def check(source: str) -> str | None:
    """All findings joined with "; ", or None when there are none."""
    return "; ".join(findings(source)) or None


def seeding_calls(source: str) -> list[str]:
    """The calls in `source` that seed a random number generator, in source order; [] if it does not parse.

    Each is its normalised text (:func:`ast.unparse`): `torch.manual_seed(seed())`. The harness's
    train loader counts too, reduced to its seed (`make_dataloader(..., seed=seed())`), since its
    seed sets the data order. Where the seed reads names the file assigns (`torch.manual_seed(s)`
    after `s = 7`), their assignments follow, transitively and in the scope Python reads them from:
    `torch.manual_seed(s) where s = 7`, so a candidate cannot keep a call's text and change the seed
    it is given. A candidate whose list differs from its base's changes how the run is seeded.
    `torch.use_deterministic_algorithms` and generators made without a seed (`torch.Generator()`,
    `default_rng()`) are not seeding; a seed passed in through a function's parameter is not followed.
    """
    seeds = _seeds(source)
    return [] if seeds is None else seeds.texts()


def uses_farm_seed(source: str) -> bool:
    """Whether `source` seeds from the farm: some seeding call's seed calls `prepare.seed()` (under any
    alias), reads a name assigned from such a call (or a function that makes one), or reads
    AUTORESEARCH_SEED from the environment. False for a file that seeds itself, or not at all."""
    seeds = _seeds(source)
    return seeds is not None and seeds.uses_farm_seed()


def _seeds(source: str) -> Seeds | None:
    try:
        tree = ast.parse(source)
        return Seeds(tree, _Tripwire(tree).quals)  # the tripwire's alias resolution, not a second one
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _patch_reason(qual: str) -> str | None:
    """Why assigning an attribute of the object named `qual` is suspicious, or None."""
    parts = qual.split(".")
    if parts[0] == HARNESS:
        return WHY_HARNESS
    if parts[0] == "torch" and len(parts) > 1 and (parts[1] == "backends" or {"config", "_config"} & set(parts)):
        return None  # torch.backends.cuda.matmul.allow_tf32, torch._inductor.config.x: configuration
    return WHY_PATCH if parts[0] in EVAL_MODULES else None


def _literal(node: ast.AST | None) -> str | None:
    return node.value if type(node) is ast.Constant and type(node.value) is str else None


def _env_key_bad(key: ast.AST | None) -> bool:
    k = _literal(key)
    return k is None or k.startswith("AUTORESEARCH_") or k in ENV_KEYS


def _dict_keys(node: ast.AST | None) -> list[ast.AST | None]:
    """A dict literal's keys (None for a `**spread`); anything else is one unknown key."""
    return list(node.keys) if type(node) is ast.Dict else [None]


def _statements(body: list[ast.AST]):
    """Every statement in `body`, nested blocks included, without descending into expressions."""
    for stmt in body:
        yield stmt
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(stmt, field, None)
            if type(inner) is list:
                yield from _statements(inner)


class _Tripwire:
    """One pass over the tree. Names resolve to qualified names (`F.gelu` -> `torch.nn.functional.gelu`)
    through every import and plain alias assignment in the file, wherever it is: a name bound to a
    module anywhere counts as that module everywhere, except where a function parameter hides it."""

    def __init__(self, tree: ast.Module):
        self.found: list[tuple[int, str]] = []
        self.frames: list[tuple[set[str], set[str]]] = []  # per function/class: (parameters, names declared global)
        self.aliases: dict[str, set[str]] = {}  # local name -> qualified names it may be bound to
        self.harness_names: set[str] = set()  # names bound by `import prepare` / `from prepare import ...`
        assigns = []
        for node in _statements(tree.body):
            if type(node) is ast.Import:
                for a in node.names:
                    top = a.name.split(".")[0]
                    self.alias(a.asname or top, a.name if a.asname else top)
                    if a.name == HARNESS:
                        self.harness_names.add(a.asname or a.name)
            elif type(node) is ast.ImportFrom:
                for a in node.names:
                    if a.name != "*":
                        self.alias(a.asname or a.name, ".".join(filter(None, [node.module, a.name])))
                        if HARNESS in (node.module, a.name):
                            self.harness_names.add(a.asname or a.name)
            elif type(node) in (ast.Assign, ast.AnnAssign) and type(node.value) in (ast.Name, ast.Attribute, ast.Call):
                assigns.append(node)
        changed = True
        while changed:  # `p = prepare`, `env = os.environ`, `q = p`: until nothing new resolves
            changed = False
            for node in assigns:
                for t in (node.targets if type(node) is ast.Assign else [node.target]):
                    if type(t) is ast.Name:
                        new = self.quals(node.value) - self.aliases.get(t.id, set())
                        if new:
                            self.aliases.setdefault(t.id, set()).update(new)
                            changed = True

    def alias(self, name: str, qual: str):
        self.aliases.setdefault(name, set()).add(qual)

    def flag(self, node: ast.AST, what: str, why: str | None = None):
        self.found.append((getattr(node, "lineno", 1), what + (f" ({why})" if why else "")))

    # -- traversal ----------------------------------------------------------------------------------
    def visit(self, node: ast.AST):
        _METHODS.get(type(node), _Tripwire.children)(self, node)

    def children(self, node: ast.AST):
        for field in node._fields:
            if field in SKIP_FIELDS:
                continue
            value = getattr(node, field, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    # -- name resolution ----------------------------------------------------------------------------
    def shadowed(self, name: str) -> bool:
        return any(name in params for params, _ in self.frames)

    def quals(self, node: ast.AST) -> set[str]:
        """The qualified names (`os.environ`, `prepare.evaluate_bpb`) an expression may denote."""
        parts = []
        while type(node) is ast.Attribute:
            parts.append(node.attr)
            node = node.value
        if type(node) is ast.NamedExpr:
            node = node.value
        if type(node) is ast.Name:
            bases = self.aliases.get(node.id)
            if not bases or self.shadowed(node.id):
                return set()
        elif type(node) is ast.Call and _literal(node.args[0] if node.args else None):
            name = _literal(node.args[0])  # __import__("prepare"), importlib.import_module("prepare")
            bases = ({name.split(".")[0]} if self.builtin(node.func) == "__import__" else
                     {name} if "importlib.import_module" in self.quals(node.func) else set())
        else:
            return set()
        suffix = "".join("." + p for p in reversed(parts))
        return {b + suffix for b in bases}

    def builtin(self, func: ast.AST) -> str | None:
        """The name of a builtin being called (`exec`, `setattr`, ...), unless that name is rebound."""
        if type(func) is ast.Name and func.id not in self.aliases and not self.shadowed(func.id):
            return func.id
        return None

    def at_module_level(self, name: str) -> bool:
        return not self.frames or name in self.frames[-1][1]

    def refer(self, node: ast.AST, quals: set[str]):
        for q in quals:
            parts = q.split(".")
            for i in range(1, len(parts) + 1):
                what = FORBIDDEN.get(".".join(parts[:i]))
                if what:
                    self.flag(node, what)
            if parts[0] == HARNESS and len(parts) > 1 and parts[1].startswith("_") \
                    and parts[1] not in VAL_NAMES and parts[1] != "__dict__":
                self.flag(node, f"uses {HARNESS}.{parts[1]}", "not part of the harness's interface")

    def bind(self, node: ast.AST, name: str, what: str):
        if name in self.harness_names and self.at_module_level(name):
            self.flag(node, f"{what} {name}", WHY_REBIND)

    # -- scopes -------------------------------------------------------------------------------------
    def visit_FunctionDef(self, node):
        self.bind(node, node.name, "defines")
        for n in [*node.decorator_list, *([node.returns] if node.returns else [])]:
            self.visit(n)
        self.function(node.args, node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self.function(node.args, [node.body])

    def function(self, args: ast.arguments, body: list[ast.AST]):
        params = [a for a in (*args.posonlyargs, *args.args, args.vararg, *args.kwonlyargs, args.kwarg) if a]
        positional = [*args.posonlyargs, *args.args]
        defaults = dict(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        defaults.update((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)
        for n in [*defaults.values(), *(a.annotation for a in params if a.annotation)]:
            self.visit(n)
        # a parameter hides a module of the same name, unless its default is a module (`def f(t=time)`)
        hidden = set()
        for a in params:
            module = self.quals(defaults[a]) if a in defaults else set()
            for q in module:
                self.alias(a.arg, q)
            if not module:
                hidden.add(a.arg)
        self.frames.append((hidden, set()))
        for stmt in body:
            self.visit(stmt)
        self.frames.pop()

    def visit_ClassDef(self, node):
        self.bind(node, node.name, "defines")
        for n in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(n)
        self.frames.append((set(), set()))
        for stmt in node.body:
            self.visit(stmt)
        self.frames.pop()

    def visit_Global(self, node):
        if self.frames:
            self.frames[-1][1].update(node.names)

    # -- bindings and imports -----------------------------------------------------------------------
    def visit_Import(self, node):
        for a in node.names:
            self.refer(node, {a.name})
            if a.name != HARNESS:
                self.bind(node, a.asname or a.name.split(".")[0], "imports over")

    def visit_ImportFrom(self, node):
        for a in node.names:
            if a.name == "*":
                if node.module == HARNESS:
                    self.flag(node, f"from {HARNESS} import *", WHY_REBIND)
                continue
            self.refer(node, {".".join(filter(None, [node.module, a.name]))})
            if a.name in VAL_NAMES:
                self.flag(node, f"imports {a.name}", WHY_VAL)
            if HARNESS not in (node.module, a.name):
                self.bind(node, a.asname or a.name, "imports over")

    def visit_ExceptHandler(self, node):
        if node.name:
            self.bind(node, node.name, "assigns")
        self.children(node)

    def visit_MatchAs(self, node):
        if node.name:
            self.bind(node, node.name, "assigns")
        self.children(node)

    visit_MatchStar = visit_MatchAs

    def visit_NamedExpr(self, node):  # `(p := prepare)`: later uses of p resolve too
        if type(node.target) is ast.Name:
            for q in self.quals(node.value):
                self.alias(node.target.id, q)
        self.children(node)

    # -- names, attributes, subscripts --------------------------------------------------------------
    def visit_Name(self, node):
        if node.id == "__builtins__":
            self.flag(node, "uses __builtins__", WHY_PATCH)
        if node.id in VAL_NAMES:
            self.flag(node, f"refers to {node.id}", WHY_VAL)
        if type(node.ctx) is ast.Load:
            if node.id in self.aliases:
                self.refer(node, self.quals(node))
        else:
            self.bind(node, node.id, "assigns" if type(node.ctx) is ast.Store else "deletes")

    def visit_Attribute(self, node):
        """A whole chain `a.b.c` at once: each attribute name, then what the chain resolves to."""
        base = node
        while type(base) is ast.Attribute:
            if base.attr in INTROSPECTION_ATTRS:
                self.flag(base, f"uses .{base.attr}", WHY_INTROSPECT)
            if base.attr in VAL_NAMES:
                self.flag(base, f"refers to {base.attr}", WHY_VAL)
            if base.attr == "__dict__":
                for q in self.quals(base.value):
                    if _patch_reason(q):
                        self.flag(base, f"uses {q}.__dict__", _patch_reason(q))
            base = base.value
        if type(node.ctx) is not ast.Load:
            verb = "assigns" if type(node.ctx) is ast.Store else "deletes"
            for q in self.quals(node.value):
                if _patch_reason(q):
                    self.flag(node, f"{verb} {q}.{node.attr}", _patch_reason(q))
        self.refer(node, self.quals(node))
        self.visit(base)

    def visit_Subscript(self, node):
        if type(node.ctx) is not ast.Load:
            self.mapping_write(node, node.value, [node.slice])
        self.children(node)

    def visit_AugAssign(self, node):
        if type(node.op) is ast.BitOr and self.quals(node.target) & ENVIRON:  # `os.environ |= {...}` updates it
            self.mapping_write(node, node.target, _dict_keys(node.value))
            self.visit(node.value)
        else:
            self.children(node)

    def mapping_write(self, node: ast.AST, mapping: ast.AST, keys: list[ast.AST | None]):
        """A write to os.environ or to the module namespace (`globals()`) with these keys (None: unknown)."""
        if self.quals(mapping) & ENVIRON:
            bad = [k for k in keys if _env_key_bad(k)]
            if bad:
                self.flag(node, f"writes os.environ[{_literal(bad[0]) or '<computed key>'}]", WHY_ENV)
        elif type(mapping) is ast.Call and self.builtin(mapping.func) in NAMESPACE_CALLS and not mapping.args:
            bad = [k for k in keys if _literal(k) is None or _literal(k) in self.harness_names]
            if bad:
                self.flag(node, f"writes {mapping.func.id}()[{_literal(bad[0]) or '<computed key>'}]", WHY_REBIND)

    # -- calls and constants ------------------------------------------------------------------------
    def visit_Call(self, node):
        name = self.builtin(node.func)
        func = self.quals(node.func)
        first = node.args[0] if node.args else None
        if name in DYNAMIC_CALLS:
            self.flag(node, f"calls {name}()", WHY_DYNAMIC)
        if (name == "__import__" or "importlib.import_module" in func) and _literal(first) is None:
            self.flag(node, "imports a module by a computed name", WHY_DYNAMIC)
        if name in ("setattr", "delattr", "vars") and first is not None:
            for q in self.quals(first):
                if _patch_reason(q):
                    self.flag(node, f"{name}({q}, ...)" if name != "vars" else f"uses vars({q})", _patch_reason(q))
        if type(node.func) is ast.Attribute and node.func.attr in MAPPING_WRITES:
            if node.func.attr in ("update", "__ior__"):
                keys = (_dict_keys(first) if node.args else []) + [
                    ast.Constant(k.arg) if k.arg else None for k in node.keywords]
            else:
                keys = [None] if node.func.attr in ("popitem", "clear") else [first]
            self.mapping_write(node, node.func.value, keys)
        for q in func & {"os.putenv", "os.unsetenv"}:
            if _env_key_bad(first):
                self.flag(node, f"calls {q}({_literal(first) or '<computed key>'})", WHY_ENV)
        self.children(node)

    def visit_Constant(self, node):
        s = node.value
        if type(s) is str:
            if VAL_TEXT.search(s):
                self.flag(node, f"string {s[:40]!r}", WHY_VAL)
            if CACHE_TEXT.search(s):
                self.flag(node, f"string {s[:40]!r}", WHY_CACHE)


# node type -> the method that visits it; every other node only has its children visited
_METHODS = {getattr(ast, name[6:]): method for name, method in vars(_Tripwire).items()
            if name.startswith("visit_") and hasattr(ast, name[6:])}
