"""The offline search: nudge the UPPER_CASE constants at the top of train.py, one or two at a time.

It needs no network and no LLM, so the farm always has work to queue. The search surface is what
train.py declares as module-level literals (``DEPTH = 8``, ``MATRIX_LR = 0.04``,
``ADAM_BETAS = (0.8, 0.95)``, ``WINDOW_PATTERN = "SSSL"``, ``2**19`` and ``3 * 2**17``); edits are
made in the source *text* at the literal's exact position, so comments and layout survive. A
constant whose every use ends in a printout (a peak-FLOPs figure that only feeds the MFU line) is
left out: moving it cannot change val_bpb. :mod:`proposer.flow` decides that, conservatively.

Steps are the ones a person would try: multiplicative steps for floats (x or / 1.25, 1.5, 2,
3 significant digits; betas and momenta move on 1 - beta, ratios stay inside (0, 1), a ratio at 0
tries 0.05 / 0.1 / 0.2); flips for bools; one-letter edits for pattern strings (alphabet shared
with the twin). Ints up to SMALL_INT also step by one, since one layer more or less is an
experiment of its own. A power of two doubles and halves, and also tries its neighbours x0.75 and
x1.5 (128 -> 96, 192), which stay multiples of a large power of two, unless :mod:`proposer.flow`
finds it feeding a divisibility assert (``assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0``): then
it only doubles and halves, the one move that keeps such a check true whatever else it reads. A
small power of two that divides something (``width // HEAD_DIM``) skips the +/-1: an odd head
width crashes rather than measures. Other round ints (multiples of 8 above SMALL_INT, such as a
merged 96) move +/-25 % on their own grid, which leads back to the powers of two; the rest move +/-1
and +/-25 % (never below 1). Module-level asserts over constants alone (e.g. a divisibility check)
are also evaluated with the mutated values, so a proposal that would die at import never reaches a GPU.

Learning is a small bandit: every (constant, direction) arm scores the outcomes of the earlier
proposals that moved it (improvements up, crashes and regressions down); names and then
directions are sampled from a softmax of those scores mixed with a uniform floor, so nothing
starves. Concurrent candidates are spread: names are sampled among those nothing in flight moves
(``History.pending_changes``, this round's proposals), else those with an arm not in flight, else all;
arms among those not in flight, else all. The RNG is seeded from the seed and the history, so the
same inputs give the same output.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import logging
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from proposer.base import History, Outcome, Proposal, ProposerBase, fingerprint, normalise, parse_python
from proposer.flow import analyse

log = logging.getLogger(__name__)

FACTORS = (1.25, 1.5, 2.0)
SMALL_INT = 32  # ints up to this also step by one (depth, heads, layers of a pattern...)
CPU_PREFIX = "CPU_"
EXPLORE = 0.25  # share of the sampling mass spread uniformly: the floor that keeps every arm alive
TEMPERATURE = 1.5  # softmax temperature of the arm scores
SCORE_CLIP = 4.0
_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SAFE_BUILTINS: dict[str, Any] = {f.__name__: f for f in (abs, min, max, len, int, float, round, all, any, sum)}
_SAFE_NODES = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Name, ast.Constant,
               ast.Tuple, ast.List, ast.Subscript, ast.Slice, ast.Call, ast.keyword, ast.expr_context, ast.operator,
               ast.boolop, ast.unaryop, ast.cmpop)  # fmt: skip


@dataclass(frozen=True)
class _Const:
    name: str
    value: Any  # int | float | str | bool | tuple of numbers
    span: tuple[int, int]  # character offsets of the value in the source
    parts: tuple[tuple[int, int], ...]  # spans of tuple elements
    pow2: bool = False  # written as 2**N or k * 2**N: new values are spelt the same way


@dataclass(frozen=True)
class _Option:
    """One single-constant mutation."""

    name: str
    target: str  # name, or name[i] for a tuple element: the learning arm is (target, direction)
    direction: str  # "+" larger / longer / True, "-" smaller / shorter / False, "~" same length
    new: Any  # the constant's whole new value
    index: int | None
    span: tuple[int, int]
    text: str  # replacement for span


def _sig3(x: float) -> float:
    return float(f"{x:.3g}")


def _fmt(value: Any, like: str) -> str:
    """Source text for value, in the style of the literal it replaces (exponent notation, quotes)."""
    if isinstance(value, float) and "e" in like.lower():
        mant, exp = f"{value:.2e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    if not isinstance(value, str):
        return repr(value)
    q = next(i for i, ch in enumerate(like) if ch in "'\"")
    quote = like[q : q + 3] if like[q : q + 3] in ('"""', "'''") else like[q]
    return f"{like[:q]}{quote}{value}{quote}"


def _number(node: ast.expr) -> int | float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    return None


def _spell_pow2(value: int, like: str) -> str:
    """``value`` as 2**N or k * 2**N (k odd), with the spacing of ``like`` around ``**``."""
    exp = (value & -value).bit_length() - 1
    odd, pow_ = value >> exp, " ** " if " ** " in like else "**"
    if exp == 0:
        return str(value)
    return f"2{pow_}{exp}" if odd == 1 else f"{odd} * 2{pow_}{exp}"


def _literal(node: ast.expr) -> Any:
    """The value of a plain literal (or of 2**N or k * 2**N, the usual spellings of a batch size), or None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):  # k * 2**N: a merged x0.75 / x1.5 step
        pow_ = isinstance(node.right, ast.BinOp) and isinstance(node.right.op, ast.Pow)
        k, power = _number(node.left), _literal(node.right) if pow_ else None
        ok = type(k) is int and k >= 1 and isinstance(node.left, ast.Constant) and isinstance(power, int)
        return k * power if ok else None  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exp = _number(node.left), _number(node.right)
        ints = type(base) is int and type(exp) is int and isinstance(node.right, ast.Constant)
        return 2**exp if ints and base == 2 and 0 <= exp <= 62 else None  # type: ignore[operator]
    if isinstance(node, ast.Constant) and type(node.value) in (bool, str):
        return node.value
    if isinstance(node, ast.Tuple) and node.elts:
        values = [_number(e) for e in node.elts]
        return None if any(v is None for v in values) else tuple(values)
    return _number(node)


def _float_steps(v: float, name: str) -> list[float]:
    beta = ("BETA" in name or "MOMENTUM" in name) and 0 < v < 1
    ratio = 0 <= v <= 1 and re.search(r"(RATIO|FRAC|FRACTION)(\[\d+\])?$", name) is not None
    if ratio and v == 0:  # a ratio switched off (e.g. no warmup): try switching it on a little
        return [0.05, 0.1, 0.2]
    if v == 0 or not math.isfinite(v):
        return []
    out: list[float] = []
    for f in FACTORS:
        for up in (True, False):
            if beta:  # betas live on a log scale of 1 - beta: 0.9, 0.95, 0.99, ...
                d = (1 - v) / f if up else (1 - v) * f
                new = round(1 - _sig3(d), 12) if d < 1 else _sig3(v / f)
            else:
                new = _sig3(v * f if up else v / f)
                if ratio and new >= 1:  # approach 1 geometrically instead of leaving (0, 1)
                    new = round(1 - _sig3((1 - v) / f), 12) if v < 1 else v
            if new != v and new not in out and (not (beta or ratio) or 0 < new < 1):
                out.append(new)
    return out


def _int_steps(v: int, bound: bool = False, granular: bool = False) -> list[int]:
    """Steps of an int; ``bound``: it feeds a divisibility assert, so a power of two stays one;
    ``granular``: it divides something (a head width), so a power of two does not step by one."""
    grain = v & -v if v > 0 else 0  # the largest power of two dividing v
    if v >= 1 and grain == v:
        cands = [v * 2, v // 2]
        if not bound:
            cands += [v * 3 // 4, v * 3 // 2] if v >= 4 else []
            cands += [v + 1, v - 1] if v <= SMALL_INT and not granular else []
    elif v > SMALL_INT and grain >= 8:  # a round number: +/-25 % on its grid (96 -> 128, 64)
        cands = [round(v * f / grain) * grain for f in (1.25, 0.75)]
    else:
        q = max(1, round(abs(v) * 0.25))
        cands = [v + 1, v + q, v - 1, v - q]
    out: list[int] = []
    for c in cands:
        if c >= 1 and c != v and c not in out:
            out.append(c)
    return out


def _pattern_steps(s: str, twin: str = "") -> list[str]:
    """One-letter edits of a pattern string such as "SSSL" (uppercase letters, <= 3 distinct).

    ``twin`` is the value of its GPU/CPU twin, whose letters belong to the alphabet too.
    """
    both = s + twin
    alphabet = sorted(set(both))
    if not s or len(both) < 2 or not (both.isalpha() and both.isupper()) or len(alphabet) > 3:
        return []
    if len(alphabet) == 3 and len(both) == 3:  # three distinct letters: a word, not a pattern
        return []
    out: list[str] = []
    for i in range(len(s) + 1):
        for c in alphabet:
            out.append(s[:i] + c + s[i:])
            if i < len(s) and c != s[i]:
                out.append(s[:i] + c + s[i + 1 :])
        if i < len(s):
            out.append(s[:i] + s[i + 1 :])
    return list(dict.fromkeys(x for x in out if x != s and x))


def _direction(old: Any, new: Any) -> str:
    if isinstance(old, str):
        return "+" if len(new) > len(old) else "-" if len(new) < len(old) else "~"
    return "+" if new > old else "-"


def _scan(source: str) -> tuple[ast.Module, dict[str, _Const]]:
    """The parsed source and its module-level UPPER_CASE literal constants (raises SyntaxError)."""
    tree = parse_python(source)
    starts = [0] + [i + 1 for i, ch in enumerate(source) if ch == "\n"]
    lines = source.split("\n")

    def off(line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return starts[line - 1] + len(lines[line - 1].encode("utf-8")[:col].decode("utf-8", "replace"))

    def span(n: ast.AST) -> tuple[int, int]:
        return off(n.lineno, n.col_offset), off(n.end_lineno, n.end_col_offset)  # type: ignore[attr-defined, arg-type]

    found: dict[str, list[_Const]] = defaultdict(list)
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, node = stmt.target, stmt.value
        else:
            continue
        if not (isinstance(target, ast.Name) and _NAME_RE.match(target.id)):
            continue
        value = _literal(node)
        if value is not None:
            parts = tuple(span(e) for e in node.elts) if isinstance(node, ast.Tuple) else ()
            found[target.id].append(_Const(target.id, value, span(node), parts, isinstance(node, ast.BinOp)))
    # a name given a literal twice is ambiguous: which one counts depends on control flow
    return tree, {name: cs[0] for name, cs in found.items() if len(cs) == 1}


def constant_changes(base: str, new: str) -> tuple[list[dict[str, Any]], bool]:
    """The constants ``new`` moves from their values in ``base``, as meta["changes"] records them (a tuple:
    one record per element moved), in source order, and whether that is all it changes: with the base's
    literals put back, the two normalise() alike (a name added, removed or no longer a literal is code)."""
    try:
        (_, olds), (_, news) = _scan(base), _scan(new)
    except (SyntaxError, ValueError):
        return [], False  # nothing known of a source that does not parse
    out: list[dict[str, Any]] = []
    back = new
    for c in sorted(news.values(), key=lambda c: -c.span[0]):  # from the end: earlier spans stay valid
        o = olds.get(c.name)
        if o is None:
            continue
        back = back[: c.span[0]] + base[o.span[0] : o.span[1]] + back[c.span[1] :]  # 0.05 and 5e-2 alike
        if repr(o.value) == repr(c.value):
            continue
        if isinstance(o.value, tuple) and isinstance(c.value, tuple) and len(o.value) == len(c.value):
            out[:0] = [{"name": c.name, "old": list(o.value), "new": list(c.value), "direction": _moved(a, b),
                        "index": i} for i, (a, b) in enumerate(zip(o.value, c.value)) if repr(a) != repr(b)]
        else:
            old_v, new_v = (list(v) if isinstance(v, tuple) else v for v in (o.value, c.value))
            out.insert(0, {"name": c.name, "old": old_v, "new": new_v, "direction": _moved(o.value, c.value)})
    return out, normalise(back) == normalise(base)


def _moved(old: Any, new: Any) -> str:  # _direction of a change found in a source ("~": a type changed)
    if type(old) is not type(new) and not all(type(v) in (int, float) for v in (old, new)):
        return "~"
    if isinstance(old, tuple):  # one whose length changed
        return _direction("x" * len(old), "x" * len(new))
    return _direction(old, new) if old != new else "~"  # 6 -> 6.0: a type, no direction


class _Surface:
    """The mutable constants and the constant-only asserts of one train.py."""

    def __init__(self, source: str) -> None:
        self.source = source
        tree, self.consts = _scan(source)
        self.asserts = [a for a in self._asserts(tree.body) if self._holds(a, {})]
        flow = analyse(tree)
        self.print_only = flow.print_only & set(self.consts)  # never proposed: only printouts read them
        self.bound = flow.bound & set(self.consts)  # feed a divisibility assert
        self.granular = flow.granular & set(self.consts)  # divide something

    def _asserts(self, body: list[ast.stmt]) -> list[ast.Expression]:
        out: list[ast.Expression] = []
        for stmt in body:
            if isinstance(stmt, ast.Assert):
                names = {n.id for n in ast.walk(stmt.test) if isinstance(n, ast.Name)}
                safe = all(isinstance(n, _SAFE_NODES) for n in ast.walk(stmt.test))
                calls_ok = all(isinstance(c.func, ast.Name) and c.func.id in _SAFE_BUILTINS
                               for c in ast.walk(stmt.test) if isinstance(c, ast.Call))  # fmt: skip
                if safe and calls_ok and names & set(self.consts) and names <= set(self.consts) | set(_SAFE_BUILTINS):
                    out.append(ast.Expression(stmt.test))
            elif not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for key in ("body", "orelse", "finalbody"):
                    out += self._asserts(getattr(stmt, key, []))
                for handler in getattr(stmt, "handlers", []):
                    out += self._asserts(handler.body)
        return out

    def _holds(self, expr: ast.Expression, changes: dict[str, Any]) -> bool:
        env = {name: c.value for name, c in self.consts.items()} | changes
        try:
            return bool(eval(compile(expr, "<assert>", "eval"), {"__builtins__": _SAFE_BUILTINS}, env))
        except Exception:  # any error (ZeroDivisionError, TypeError, ...) means the import would fail
            return False

    def valid(self, changes: dict[str, Any]) -> bool:
        return all(self._holds(a, changes) for a in self.asserts)

    def options(self, name: str) -> list[_Option]:
        c = self.consts[name]
        old_text = self.source[c.span[0] : c.span[1]]
        bound, granular = name in self.bound, name in self.granular
        out: list[_Option] = []
        if isinstance(c.value, tuple):
            for i, (elt, sp) in enumerate(zip(c.value, c.parts)):
                target = f"{name}[{i}]"
                steps = _int_steps(elt, bound, granular) if isinstance(elt, int) else _float_steps(elt, target)
                for new in steps:
                    value = c.value[:i] + (new,) + c.value[i + 1 :]
                    text = _fmt(new, self.source[sp[0] : sp[1]])
                    out.append(_Option(name, target, _direction(elt, new), value, i, sp, text))
            return out
        if c.pow2:  # 2**N or k * 2**N: the int steps, spelt the same way
            for new in _int_steps(c.value, bound, granular):
                text = _spell_pow2(new, old_text)
                out.append(_Option(name, name, _direction(c.value, new), new, None, c.span, text))
            return out
        if isinstance(c.value, bool):
            steps: list[Any] = [not c.value]
        elif isinstance(c.value, int):
            steps = _int_steps(c.value, bound, granular)
        elif isinstance(c.value, float):
            steps = _float_steps(c.value, name)
        else:
            twin = name[len(CPU_PREFIX) :] if name.startswith(CPU_PREFIX) else CPU_PREFIX + name
            twin_value = self.consts[twin].value if twin in self.consts else ""
            steps = _pattern_steps(c.value, twin_value if isinstance(twin_value, str) else "")
        for new in steps:
            out.append(_Option(name, name, _direction(c.value, new), new, None, c.span, _fmt(new, old_text)))
        return out

    def apply(self, opts: list[_Option]) -> str:
        src = self.source
        for o in sorted(opts, key=lambda o: o.span[0], reverse=True):
            src = src[: o.span[0]] + o.text + src[o.span[1] :]
        return src

    def describe(self, o: _Option) -> str:
        c = self.consts[o.name]
        old = self.source[c.span[0] : c.span[1]]
        new = old[: o.span[0] - c.span[0]] + o.text + old[o.span[1] - c.span[0] :]
        return f"{o.name} {' '.join(old.split())} -> {' '.join(new.split())}"


def _reward(o: Outcome) -> float:
    if o.status != "ok":
        return -1.0
    if o.delta is None:
        return 1.0 if o.merged else 0.0
    if o.delta < 0:
        return 1.0 + (1.0 if o.merged else 0.0)
    return -0.5 if o.delta > 0 else 0.0


def arm_scores(outcomes: list[Outcome]) -> dict[tuple[str, str], float]:
    """Score per (target, direction) arm: the summed rewards of the proposals that moved it."""
    scores: dict[tuple[str, str], float] = defaultdict(float)
    for o in outcomes:
        changes = o.meta.get("changes") or []
        for ch in changes:
            scores[_arm(ch)] += _reward(o) / len(changes)
    return dict(scores)


def _arm(ch: dict[str, Any]) -> tuple[str, str]:  # the (target, direction) a change record moves
    return (ch["name"] if ch.get("index") is None else f"{ch['name']}[{ch['index']}]", ch.get("direction", "?"))


def _change(old: Any, o: _Option) -> dict[str, Any]:
    """The JSON record of one change, as Outcome.meta["changes"] carries it back."""
    old, new = (list(v) if isinstance(v, tuple) else v for v in (old, o.new))
    ch = {"name": o.name, "old": old, "new": new, "direction": o.direction}
    return ch if o.index is None else ch | {"index": o.index}


def _weights(scores: list[float]) -> list[float]:
    clipped = [max(-SCORE_CLIP, min(SCORE_CLIP, s)) / TEMPERATURE for s in scores]
    top = max(clipped)
    exp = [math.exp(s - top) for s in clipped]
    total = sum(exp)
    return [(1 - EXPLORE) * e / total + EXPLORE / len(exp) for e in exp]


class MutateProposer(ProposerBase):
    name = "mutate"

    def __init__(self, seed: int = 0, profile: str = "gpu", exclude: tuple[str, ...] = ("SEED",),
                 two_change_prob: float = 0.2) -> None:
        if profile not in ("gpu", "cpu"):
            raise ValueError(f"profile must be 'gpu' or 'cpu', not {profile!r}")
        self.seed, self.profile, self.exclude, self.two_change_prob = seed, profile, tuple(exclude), two_change_prob

    def targets(self, consts: dict[str, Any]) -> list[str]:
        """Names this profile may mutate, in source order (CPU_ twins replace their GPU name on cpu)."""
        out = []
        for name in consts:
            is_cpu = name.startswith(CPU_PREFIX)
            logical = name[len(CPU_PREFIX) :] if is_cpu else name
            other = is_cpu if self.profile == "gpu" else not is_cpu and CPU_PREFIX + name in consts  # the twin counts
            if not other and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude for n in (name, logical)):
                out.append(name)
        return out

    def propose(self, n: int, history: History) -> list[Proposal]:
        try:
            surf = _Surface(history.base_source)
        except SyntaxError as e:
            log.warning("mutate: base train.py does not parse (%s); nothing to propose", e)
            return []
        tried = ",".join(sorted(history.tried))
        key = f"{self.seed}|{self.profile}|{history.base_commit}|{tried}|{len(history.outcomes)}"
        rng = random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
        scores = arm_scores(history.outcomes)
        arms: dict[str, dict[tuple[str, str], list[_Option]]] = {}
        for name in (nm for nm in self.targets(surf.consts) if nm not in surf.print_only):
            by_arm: dict[tuple[str, str], list[_Option]] = defaultdict(list)
            for o in surf.options(name):
                by_arm[(o.target, o.direction)].append(o)
            if by_arm:
                arms[name] = dict(by_arm)
        pools = {name: {a: list(opts) for a, opts in by_arm.items()} for name, by_arm in arms.items()}
        flight = [c for cs in history.pending_changes for c in cs  # what the pending candidates move
                  if isinstance(c, dict) and isinstance(c.get("name"), str)]
        busy, busy_names = {_arm(c) for c in flight}, {c["name"] for c in flight}  # in flight, then this round too

        def pick_name(names: list[str], table: dict[str, dict[tuple[str, str], list[_Option]]]) -> str:
            idle = [nm for nm in names if nm not in busy_names]  # else those with a free arm, else all
            names = idle or [nm for nm in names if any(o and a not in busy for a, o in table[nm].items())] or names
            ns = [sum(scores.get(a, 0.0) for a in arms[nm]) for nm in names]
            return rng.choices(names, weights=_weights(ns))[0]

        def pick_arm(by_arm: dict[tuple[str, str], list[_Option]]) -> tuple[str, str]:
            keys = [a for a, opts in by_arm.items() if opts]
            keys = [a for a in keys if a not in busy] or keys  # an arm in flight only when all are
            return rng.choices(keys, weights=_weights([scores.get(a, 0.0) for a in keys]))[0]

        out: list[Proposal] = []
        seen, pending = set(history.tried), set(history.pending_descriptions)
        pair_seen: set[frozenset[tuple[str, str]]] = set()
        pair_failures, max_pair_failures = 0, 20 + 5 * n
        while len(out) < n:
            avail = [nm for nm, by_arm in pools.items() if any(by_arm.values())]
            can_pair = len(arms) >= 2 and self.two_change_prob > 0 and pair_failures < max_pair_failures
            if not avail and not can_pair:
                break
            if can_pair and (not avail or rng.random() < self.two_change_prob):
                first = pick_name(list(arms), arms)
                second = pick_name([nm for nm in arms if nm != first], arms)
                opts = [rng.choice(arms[nm][pick_arm(arms[nm])]) for nm in (first, second)]
                key2 = frozenset((o.target, repr(o.new)) for o in opts)
                if key2 in pair_seen:
                    pair_failures += 1
                    continue
                pair_seen.add(key2)
            else:
                nm = pick_name(avail, pools)
                pool = pools[nm][pick_arm(pools[nm])]
                opts = [pool.pop(rng.randrange(len(pool)))]
            built = self._build(surf, opts, seen, pending)
            if built is None:
                if len(opts) > 1:
                    pair_failures += 1
                continue
            seen.add(built[1])
            out.append(built[0])
            busy.update((o.target, o.direction) for o in opts)
            busy_names.update(o.name for o in opts)
        return out

    def _build(self, surf: _Surface, opts: list[_Option], seen: set[str], pending: set[str]
               ) -> tuple[Proposal, str] | None:
        """The proposal and its fingerprint, or None if it breaks an assert, repeats or does not compile."""
        if not surf.valid({o.name: o.new for o in opts}):
            return None
        source = surf.apply(opts)
        description = ", ".join(surf.describe(o) for o in opts)
        fp = fingerprint(source)
        if description in pending or fp in seen:
            return None
        try:
            compile(source, "train.py", "exec")
        except (SyntaxError, ValueError):
            return None
        changes = [_change(surf.consts[o.name].value, o) for o in opts]
        return Proposal(description, source, self.name, {"changes": changes, "profile": self.profile}), fp
