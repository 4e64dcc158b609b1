"""The proposer contract: a pure policy that suggests new versions of train.py, never runs them.

Every source of ideas (the offline mutation search, API LLMs, coding agents, humans) plugs into
the controller through one method, ``propose(n, history)``. The controller owns everything with
side effects: it writes each proposal as a commit, queues it, records what became of it, and
hands that record back as ``History`` on the next call. A proposer is therefore a function of its
history (and its own seed), which is what makes it testable and replayable.

Duplicates are judged on normalised source: a change that only touches comments, blank lines or
whitespace trains exactly the same model, so it must not cost a GPU run.
"""

from __future__ import annotations

import ast
import hashlib
import io
import threading
import tokenize
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Proposal:
    description: str  # one line, e.g. "MATRIX_LR 0.04 -> 0.05"
    source: str  # the complete new train.py
    origin: str  # "mutate", "llm", "agent", "human", ...
    meta: dict[str, Any] = field(default_factory=dict)  # what was applied, for learning and display


@dataclass
class Outcome:
    """What became of an earlier proposal."""

    meta: dict[str, Any]  # the proposal's meta
    status: str  # a RunStatus value: ok / crash / timeout / no-metric / cheat
    delta: float | None = None  # val_bpb minus the main line's at the time; negative = better
    merged: bool = False


@dataclass
class History:
    base_commit: str
    base_source: str  # main-line train.py
    tried: set[str] = field(default_factory=set)  # fingerprint() of everything proposed on this base
    outcomes: list[Outcome] = field(default_factory=list)
    pending_descriptions: list[str] = field(default_factory=list)  # proposed, not yet judged
    best_bpb: float | None = None
    baseline_bpb: float | None = None
    ideas: list[str] = field(default_factory=list)  # human ideas, for proposers that can read them
    # What is in flight, per pending candidate (queued, running, or finished and not yet judged): the
    # constants it moves, each {"name", "old", "new", "direction", ["index"]} as MutateProposer's
    # meta["changes"] records them ("index": one element of a tuple, whose arm is name[index]). A code
    # edit that moves no constant has []; one that also edits code lists the constants it moves.
    # MutateProposer reads it as a collection (order and alignment do not matter to it);
    # Intake.history lists it in the order of pending_descriptions, the baseline's entry []. Empty
    # (the default) when the caller does not say: the search then spreads within its own round only.
    pending_changes: list[list[dict[str, Any]]] = field(default_factory=list)


@runtime_checkable
class Proposer(Protocol):
    """What the farm calls on a proposer (through its actor, :mod:`cluster.actors.proposer`)."""

    name: str

    def propose(self, n: int, history: History) -> list[Proposal]:
        """Up to n new proposals on history.base_source; fewer (even none) when out of ideas."""
        ...

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str] | None = None
               ) -> Proposal | None:
        """One fix of a crashed candidate (``meta``: its record's meta, with its id, description
        and origin; ``source``: its editable file; ``log_tail``: the crash), or None."""
        ...

    def status(self) -> dict[str, Any]:
        """``last_error`` (the latest failure of its source, or None) and ``usage`` (token totals)."""
        ...


class ProposerBase:
    """Defaults for the optional parts of :class:`Proposer`: no repairs, no usage, no error."""

    name = "proposer"
    last_error: str | None = None

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str] | None = None
               ) -> Proposal | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"last_error": self.last_error, "usage": dict(getattr(self, "usage", {}) or {})}


def normalise(source: str) -> str:
    """The source without comments, blank lines and layout whitespace: equal for equivalent edits.

    Tokens are re-joined one logical line at a time, so ``x=1`` and ``x = 1  # note`` agree while
    any change to a name, literal, string or indentation level does not. A source that does not
    tokenize falls back to stripping trailing whitespace and blank lines.
    """
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    lines: list[str] = []
    current: list[str] = []
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in skip:
                continue
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
            elif tok.type == tokenize.NEWLINE:
                if current:
                    lines.append("  " * depth + " ".join(current))
                current = []
            else:
                current.append(tok.string)
    except (tokenize.TokenError, SyntaxError):
        return "\n".join(ln.rstrip() for ln in source.splitlines() if ln.strip())
    if current:
        lines.append("  " * depth + " ".join(current))
    return "\n".join(lines)


def fingerprint(source: str) -> str:
    """sha256 hex digest of normalise(source): the identity of a proposal on one base."""
    return hashlib.sha256(normalise(source).encode("utf-8")).hexdigest()


_AST_LOCK = threading.Lock()


def parse_python(source: str, filename: str = "<proposal>", *, compile_it: bool = False) -> ast.Module:
    """ast.parse (and, if asked, compile) under a lock: proposers validate answers on several
    threads, and CPython 3.11 can fail concurrent parses with "AST constructor recursion depth
    mismatch". Raises SyntaxError (or ValueError for null bytes) like ast.parse."""
    with _AST_LOCK:
        tree = ast.parse(source, filename)
        if compile_it:
            compile(tree, filename, "exec")
        return tree
