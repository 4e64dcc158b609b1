"""What the LLM and agent proposers say to their models, and how an answer is read back.

Everything here is text in, text out, so prompts can be read and tested without a model. The
response contract (stated in every prompt and in docs/PROPOSERS.md): a one-line description,
then EITHER a unified diff of train.py in a ```diff block OR the complete new train.py in a
```python block. The first diff or python block counts; prose around it is ignored.

Diversity matters more than any one answer: several requests run at once, so each is given a
different focus (and, first of all, one of the humans' ideas to implement), and every request
sees what is already queued or running so it does not propose it again.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass

from proposer.base import History, Outcome, parse_python

FALLBACK_PROGRAM = """Goal: lower val_bpb (validation bits per byte) of train.py within its fixed training time budget.
Only train.py may change; prepare.py (data, tokenizer, evaluation) and the budget are off limits.
No new dependencies. Never read validation data or print results you did not measure.
Keep build_model(vocab_size) returning the model main() trains, model(x) returning logits, and
main() ending with prepare.evaluate_bpb(model, tokenizer, batch_size).
The farm assigns each run its seed through prepare.seed(); train.py seeds torch, CUDA and its train
dataloader from it. Changing how train.py seeds (a seed of its own, extra seeding) is refused."""

SYSTEM = ("You are a careful machine-learning research engineer running experiments on a small GPT "
          "pretraining script. You propose one experiment at a time as a change to train.py, following "
          "the research program you are given. Answer in exactly the format its response contract asks for.")

CONTRACT = """Response contract:
1. The first line is a one-line description of the change (under 100 characters), e.g.
   `Raise MATRIX_LR 0.04 -> 0.05 and shorten WARMDOWN_RATIO to 0.4`.
2. Then EITHER a unified diff of train.py in a ```diff block (headers `--- a/train.py` and
   `+++ b/train.py`, hunks starting with `@@`, 3 lines of context copied exactly from the
   current train.py), OR the complete new train.py in a ```python block (for large rewrites).
Only the first diff or python block is used. Change train.py only."""

FOCI = (
    "optimizer hyperparameters: learning rates, betas, momentum, weight decay",
    "the learning-rate schedule: warmup, warmdown, final learning rate",
    "model shape: depth, width, heads, attention windows; what fits the time budget best",
    "throughput: batch size, sequence handling, anything that trains on more tokens in the budget",
    "architecture details: normalisation, activations, embeddings, residual scaling, logit soft-capping",
    "initialisation and regularisation",
    "simplification: delete code or a feature that does not pay for itself (simpler is better)",
    "combining or refining the near misses listed above",
)


@dataclass(frozen=True)
class Request:
    """One request of a propose() call: what it should focus on, or which human idea to implement."""

    focus: str
    idea: str | None = None


def plan(n: int, history: History) -> list[Request]:
    """n requests: the humans' ideas first, then foci rotated by the history so calls differ."""
    out = [Request("implementing the humans' idea", idea) for idea in history.ideas[:n]]
    seed = hashlib.sha256(f"{history.base_commit}|{len(history.outcomes)}".encode()).digest()[0]
    for i in range(n - len(out)):
        out.append(Request(FOCI[(seed + i) % len(FOCI)]))
    return out


def describe_outcome(o: Outcome) -> str:
    """The one-line description of an earlier proposal (meta["description"] or its mutations)."""
    if o.meta.get("description"):
        return str(o.meta["description"])
    changes = o.meta.get("changes") or []
    if changes:
        return ", ".join(f"{c.get('name')} {c.get('old')} -> {c.get('new')}" for c in changes)
    return "(no description)"


def _tail(text: str, lines: int) -> str:
    return "\n".join("    " + ln for ln in text.strip().splitlines()[-lines:])


def history_text(history: History, limit: int = 20, near_miss: float = 0.002, crash_tails: int = 3) -> str:
    """The run so far, as the model should see it: numbers, then what was kept, nearly kept, lost."""
    parts: list[str] = []
    base, best = history.baseline_bpb, history.best_bpb
    if base is not None:
        parts.append(f"Baseline val_bpb: {base:.6f}")
    if best is not None:
        gain = f" ({best - base:+.6f} vs baseline)" if base is not None else ""
        parts.append(f"Best so far (the current main line, the train.py below): {best:.6f}{gain}")
    parts.append("Lower is better. Deltas are val_bpb minus the main line's at the time.")
    recent = history.outcomes[-limit:] if limit > 0 else []
    groups: dict[str, list[str]] = {"kept": [], "near": [], "discarded": [], "crashed": []}
    tails: list[str] = []
    for o in recent:
        delta = f"{o.delta:+.6f}" if o.delta is not None else "   n/a   "
        line = f"- {delta}  {describe_outcome(o)}"
        if o.merged:
            groups["kept"].append(line)
        elif o.status != "ok":
            groups["crashed"].append(f"- {o.status}: {describe_outcome(o)}")
            if o.meta.get("log_tail"):
                tails.append(f"{o.status}: {describe_outcome(o)}\n{_tail(str(o.meta['log_tail']), 15)}")
        elif o.delta is not None and o.delta < near_miss:
            groups["near"].append(line)
        else:
            groups["discarded"].append(line)
    titles = {"kept": "Kept (merged into the main line)",
              "near": f"Near misses (within {near_miss} of the main line, not significant; worth refining or combining)",
              "discarded": "Discarded (no improvement)", "crashed": "Crashed, timed out or printed no metric"}
    for key, title in titles.items():
        if groups[key]:
            parts.append(f"\n{title}:\n" + "\n".join(groups[key]))
    if tails:
        parts.append("\nLog tails of the latest failures:\n" + "\n\n".join(tails[-crash_tails:]))
    shown = len(recent)
    if shown < len(history.outcomes):
        parts.append(f"\n(The {shown} most recent of {len(history.outcomes)} experiments.)")
    elif not history.outcomes:
        parts.append("\nNo experiments have finished yet.")
    return "\n".join(parts)


def task_text(history: History, req: Request, limit: int, near_miss: float) -> str:
    """The sections every proposal request shares: history, queue, ideas, this request's focus."""
    parts = ["# Results so far\n", history_text(history, limit, near_miss)]
    if history.pending_descriptions:
        parts.append("\n# Already queued or running (do not propose these again)\n")
        parts.append("\n".join(f"- {d}" for d in history.pending_descriptions))
    others = [i for i in history.ideas if i != req.idea]
    if others:
        parts.append("\n# Ideas from the humans (other requests implement these; do not duplicate them)\n")
        parts.append("\n".join(f"- {i}" for i in others))
    parts.append("\n# Your task\n")
    if req.idea:
        parts.append(f"Implement this idea from the humans running the research, as well as it can be done:\n"
                     f"{req.idea}\n")
    else:
        parts.append(f"Propose ONE new experiment. Focus on: {req.focus}. Other requests running in parallel "
                     "cover other directions, so be different from everything listed above.\n")
    return "\n".join(parts)


def proposal_messages(program: str, history: History, req: Request, limit: int = 20,
                      near_miss: float = 0.002, editable: str = "train.py") -> list[dict[str, str]]:
    """The chat messages of one proposal request."""
    user = (f"# Research program\n\n{program.strip() or FALLBACK_PROGRAM}\n\n"
            f"# Current {editable} (main line {history.base_commit[:12]})\n\n```python\n{history.base_source}```\n\n"
            f"{task_text(history, req, limit, near_miss)}\n{CONTRACT}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def fix_message(error: str) -> str:
    """The follow-up after an answer failed validation: the error, and the contract again."""
    return (f"Your answer could not be used: {error}\n\nPlease send a corrected answer for the same idea "
            f"(or a different one if it cannot work).\n{CONTRACT}")


def crash_messages(program: str, description: str, source: str, log_tail: str,
                   editable: str = "train.py") -> list[dict[str, str]]:
    """The chat messages asking to repair a candidate that crashed: its source and its log tail."""
    user = (f"# Research program\n\n{program.strip() or FALLBACK_PROGRAM}\n\n"
            f"# A candidate crashed\n\nThis change was tried: {description}\n"
            f"Here is its {editable}, exactly as it ran:\n\n```python\n{source}```\n\n"
            f"It crashed. The end of its log:\n\n```\n{log_tail.strip()[-6000:]}\n```\n\n"
            f"# Your task\nFix the crash while keeping the idea of the change (or the closest version "
            f"of it that can work). Any diff applies to the {editable} shown here.\n{CONTRACT}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------------- responses


class ResponseError(ValueError):
    """The answer does not follow the contract; the message is sent back to the model."""


@dataclass(frozen=True)
class Parsed:
    kind: str  # "diff" | "python"
    body: str
    description: str | None


_DIFF_LANGS = {"diff", "patch", "udiff"}
_PY_LANGS = {"python", "py", "python3"}


def _blocks(lines: list[str]) -> list[tuple[str, int, int, bool]]:
    """Fenced blocks as (language, first body line, end line, closed)."""
    out: list[tuple[str, int, int, bool]] = []
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        m = re.match(r"^(`{3,})\s*([\w+.-]*)", s)
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.fullmatch(f"{fence}`*", lines[j].strip()):
            j += 1
        out.append((lang, i + 1, j, j < len(lines)))
        i = j + 1
    return out


def _looks_like_diff(body: str) -> bool:
    return bool(re.search(r"^@@", body, re.M)) or ("\n+++ " in "\n" + body and "\n--- " in "\n" + body)


def _clean_description(line: str) -> str:
    line = re.sub(r"^\s*(#+|[-*>]|\d+[.)])\s*", "", line.strip())
    line = re.sub(r"^\**\s*(description|change|summary|title)\s*:?\s*\**\s*:?\s*", "", line, flags=re.I)
    line = line.strip().strip("*_`\"' ").strip()
    return line[:117] + "..." if len(line) > 120 else line


def strip_reasoning(text: str) -> str:
    """The answer without a reasoning model's <think>...</think> section (its drafts are not the answer)."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    return text.rsplit("</think>", 1)[-1].strip("\n")


def parse_response(text: str) -> Parsed:
    """The description and the first diff or python block of an answer; ResponseError if none."""
    lines = strip_reasoning(text).replace("\r\n", "\n").split("\n")
    chosen = None
    for lang, start, end, closed in _blocks(lines):
        body = "\n".join(lines[start:end])
        kind = ("diff" if lang in _DIFF_LANGS else "python" if lang in _PY_LANGS
                else "diff" if not lang and _looks_like_diff(body) else "python" if not lang else None)
        if kind == "python" and not lang:
            try:
                parse_python(body)
            except SyntaxError:
                kind = None
        if kind:
            if not closed:
                raise ResponseError("the answer ends inside its code block, so it was cut off; send a shorter "
                                    "answer (a diff instead of the whole file)")
            chosen = (kind, body, start - 1)
            break
    if chosen is None:
        first = next((i for i, ln in enumerate(lines) if ln.startswith(("--- ", "diff --git "))), None)
        if first is None or not _looks_like_diff("\n".join(lines[first:])):
            raise ResponseError("no ```diff or ```python block was found in the answer")
        chosen = ("diff", "\n".join(lines[first:]), first)
    kind, body, at = chosen
    before = [ln for ln in lines[:at] if ln.strip() and not ln.strip().startswith("```")]
    description = _clean_description(before[0]) if before else ""
    if kind == "python" and not body.endswith("\n"):
        body += "\n"
    return Parsed(kind, body, description or None)


_CONST_RE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*(?::[^=]+)?=\s*(.+?)\s*(?:#.*)?$")


def derive_description(base: str, new: str) -> str:
    """A one-line description for an answer that gave none: the constants moved, else a line count."""
    def consts(src: str) -> dict[str, str]:
        return {m.group(1): m.group(2) for m in map(_CONST_RE.match, src.splitlines()) if m}

    old, cur = consts(base), consts(new)
    moved = [f"{k} {old[k]} -> {v}" for k, v in cur.items() if k in old and old[k] != v]
    if moved:
        return ", ".join(moved[:3]) + (f" (+{len(moved) - 3} more)" if len(moved) > 3 else "")
    diff = list(difflib.unified_diff(base.splitlines(), new.splitlines(), lineterm="", n=0))
    added = [ln[1:].strip() for ln in diff if ln.startswith("+") and not ln.startswith("+++") and ln[1:].strip()]
    removed = sum(1 for ln in diff if ln.startswith("-") and not ln.startswith("---"))
    head = f"edit: {added[0][:70]}" if added else "delete code"
    return f"{head} (+{len(added)} -{removed} lines)"
