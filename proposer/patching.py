"""Apply an LLM's unified diff to train.py in pure Python, and decide whether a new train.py may run.

Why not ``git apply``: proposers run in a Ray actor that may sit on a node without the repository,
and models write sloppy diffs that git refuses outright. The applier here is lenient where a
model is usually wrong and the intent is still unambiguous:

- hunk line counts are ignored (the body is read until the next hunk or file header);
- line numbers are hints: each hunk is searched in the whole file, nearest to its stated line;
- paths with or without ``a/`` / ``b/`` prefixes, quotes or timestamps are accepted;
- context lines match exactly, then ignoring trailing whitespace, then ignoring all layout
  whitespace; a blank context line that lost its leading space still counts as context;
- like GNU patch's fuzz, up to 2 context lines at either end of a hunk may be wrong;
- bare hunks without ``---``/``+++`` headers are taken to be train.py.

It is strict where leniency would change the experiment: a diff that names any file other than
the editable one is refused as a whole, and a hunk whose lines are not in the file is an error
that says which line was not found (the message goes back to the model for one repair round).
"""

from __future__ import annotations

import ast
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Iterable

from proposer.base import fingerprint, normalise, parse_python

_HUNK_RE = re.compile(r"^@@+\s*-(\d+)(?:,(\d+))?\s+\+(\d+)(?:,(\d+))?\s*@@+")
_GIT_RE = re.compile(r'^diff --git\s+("?)(?:a/)?(.+?)\1\s+("?)(?:b/)?(.+?)\3\s*$')


class PatchError(ValueError):
    """The diff cannot be applied; the message says why in words a model can act on."""


@dataclass
class Hunk:
    old_start: int | None  # 1-based line of the hunk's first old line, as the diff states it (a hint)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" " | "-" | "+", text)

    @property
    def old(self) -> list[str]:
        return [t for tag, t in self.lines if tag != "+"]

    @property
    def new(self) -> list[str]:
        return [t for tag, t in self.lines if tag != "-"]


@dataclass
class FilePatch:
    old_path: str | None  # None: bare hunks without a header
    new_path: str | None
    hunks: list[Hunk] = field(default_factory=list)


def clean_path(raw: str) -> str:
    """A header path without its timestamp, quotes, ``a/``/``b/`` or ``./`` prefix."""
    p = raw.split("\t")[0].strip().strip('"')
    if p == "/dev/null":
        return p
    p = re.sub(r"\s+\d{4}-\d\d-\d\d .*$", "", p)  # "train.py 2024-01-01 12:00:00" (diff -u style)
    for prefix in ("a/", "b/", "./"):
        if p.startswith(prefix):
            p = p[len(prefix):]
            break
    return p


def _is_file_header(lines: list[str], i: int) -> bool:
    return lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")


def parse_diff(text: str) -> list[FilePatch]:
    """The file patches of a unified diff, tolerant of wrong counts and lost leading spaces."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    patches: list[FilePatch] = []
    cur: FilePatch | None = None
    i = 0
    while i < len(lines):
        ln = lines[i]
        git = _GIT_RE.match(ln)
        if git:
            cur = FilePatch(clean_path(git.group(2)), clean_path(git.group(4)))
            patches.append(cur)
            i += 1
        elif _is_file_header(lines, i):
            old, new = clean_path(ln[4:]), clean_path(lines[i + 1][4:])
            if cur is None or cur.hunks or cur.old_path is None:
                cur = FilePatch(old, new)
                patches.append(cur)
            else:  # the ---/+++ pair that follows a "diff --git" line names the same file
                cur.old_path, cur.new_path = old, new
            i += 2
        elif ln.startswith("@@"):
            m = _HUNK_RE.match(ln)
            hunk = Hunk(int(m.group(1)) if m else None)
            if cur is None:
                cur = FilePatch(None, None)
                patches.append(cur)
            cur.hunks.append(hunk)
            i = _read_hunk(lines, i + 1, hunk)
        else:
            i += 1  # prose, "index ..." lines, mode lines: not part of any hunk
    return patches


def _read_hunk(lines: list[str], i: int, hunk: Hunk) -> int:
    """Read hunk body lines from i; returns the index of the first line after the hunk."""
    loose = 0  # trailing lines that are only guesses (blank or unprefixed): dropped at the end
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("@@") or ln.startswith("diff --git ") or _is_file_header(lines, i):
            break
        if ln[:1] in (" ", "-", "+"):
            hunk.lines.append((ln[:1], ln[1:]))
            loose = 0
        elif ln.startswith("\\"):  # "\ No newline at end of file"
            pass
        else:  # a context line whose leading space was lost (often a blank line), or trailing prose
            hunk.lines.append((" ", ln))
            loose += 1
        i += 1
    if loose:
        del hunk.lines[len(hunk.lines) - loose:]
    return i


def _keys(level: int, lines: Iterable[str]) -> list[str]:
    if level == 0:
        return list(lines)
    if level == 1:
        return [ln.rstrip() for ln in lines]
    return [" ".join(ln.split()) for ln in lines]


def _find(src: list[str], old: list[str], expected: int) -> int | None:
    """Start index of old in src (exact, then looser), the match nearest to expected."""
    for level in range(3):
        keys, want = _keys(level, src), _keys(level, old)
        first = want[0]
        hits = [j for j in range(len(src) - len(old) + 1) if keys[j] == first and keys[j:j + len(old)] == want]
        if hits:
            return min(hits, key=lambda j: (abs(j - expected), j))
    return None


def _why_not_found(src: list[str], old: list[str]) -> str:
    present = set(_keys(2, src))
    for ln, key in zip(old, _keys(2, old)):
        if key not in present:
            return f"this line is not in the file: {ln.strip()!r}"
    return "its lines are in the file but not consecutively in this order"


def _trim(h: Hunk, fuzz: int) -> tuple[Hunk, int]:
    """h without up to ``fuzz`` context lines at each end (GNU patch's fuzz); (hunk, lines cut in front)."""
    lines = list(h.lines)
    front = 0
    while front < fuzz and lines and lines[0][0] == " ":
        lines.pop(0)
        front += 1
    back = 0
    while back < fuzz and lines and lines[-1][0] == " ":
        lines.pop()
        back += 1
    return Hunk(None if h.old_start is None else h.old_start + front, lines), front


def _locate(src: list[str], h: Hunk, expected: int) -> tuple[int, Hunk] | None:
    """Where h applies (exact context first, then with fuzz 1 and 2), and the hunk as trimmed."""
    for fuzz in range(3):
        trimmed, front = _trim(h, fuzz) if fuzz else (h, 0)
        if fuzz and (front == 0 and len(trimmed.lines) == len(h.lines) or not trimmed.old):
            continue
        at = _find(src, trimmed.old, expected + front)
        if at is not None:
            return at, trimmed
    return None


def apply_hunks(source: str, hunks: list[Hunk], path: str = "train.py") -> str:
    """source with the hunks applied one after another (each searched nearest its stated line)."""
    src = source.split("\n")
    trailing_newline = source.endswith("\n")
    if trailing_newline:
        src.pop()
    shift = 0  # lines added minus removed by the hunks applied so far
    for k, h in enumerate(hunks, 1):
        if not any(tag in "+-" for tag, _ in h.lines):
            continue  # context only: nothing to do
        if not h.old:  # pure insertion: only the line number says where
            if h.old_start is None:
                raise PatchError(f"hunk {k} of the diff of {path} only adds lines and has no line number; "
                                 "give it 3 lines of context")
            at = max(0, min(len(src), h.old_start + shift))  # "-N,0" inserts after line N
        else:
            found = _locate(src, h, (h.old_start or 1) - 1 + shift)
            if found is None:
                raise PatchError(f"hunk {k} of the diff does not apply to {path}: {_why_not_found(src, h.old)}. "
                                 f"Copy context and removed lines exactly from the current {path}.")
            at, h = found
        merged: list[str] = []
        j = at
        for tag, text in h.lines:
            if tag == "+":
                merged.append(text)
            else:
                if tag == " ":
                    merged.append(src[j])  # keep the file's own text for context lines
                j += 1
        src[at:j] = merged
        shift += len(merged) - (j - at)
    return "\n".join(src) + ("\n" if trailing_newline else "")


def _matches(path: str, editable: str) -> bool:
    return path == editable or path.endswith("/" + editable)


def apply_patch(source: str, diff_text: str, editable: str = "train.py") -> str:
    """The new editable file after applying a (possibly sloppy) unified diff; PatchError if not."""
    patches = parse_diff(diff_text)
    if not any(p.hunks for p in patches):
        raise PatchError("no hunks (lines starting with @@) were found in the diff")
    others = sorted({p for fp in patches for p in (fp.old_path, fp.new_path)
                     if p and p != "/dev/null" and not _matches(p, editable)})
    if others:
        raise PatchError(f"the diff changes {', '.join(others)}; only {editable} may change "
                         "(prepare.py and everything else are off limits)")
    text = source
    for fp in patches:
        if fp.new_path == "/dev/null":
            raise PatchError(f"the diff deletes {editable}; change it instead")
        if fp.old_path == "/dev/null":  # written as a new file: its added lines are the whole file
            text = "\n".join(t for h in fp.hunks for tag, t in h.lines if tag != "-") + "\n"
            continue
        text = apply_hunks(text, fp.hunks, editable)
    return text


_ELIDED_RE = re.compile(r"^\s*(#\s*)?(\.\.\.|…)\s*(#.*)?$|#.*\b(rest of|unchanged|same as before|existing code)\b",
                        re.I | re.M)


def check_full_file(base: str, new: str, editable: str = "train.py") -> str | None:
    """None if a full-file answer looks complete; else why it looks like a fragment.

    Models asked for the whole file sometimes send only the part they changed, with "# ... rest
    unchanged" in place of the rest. That compiles, so only this check keeps it off a GPU.
    """
    elided = _ELIDED_RE.search(new)
    if elided and not _ELIDED_RE.search(base):
        return (f"the python block leaves code out ({elided.group(0).strip()!r}); send the COMPLETE new "
                f"{editable}, or a diff")
    n_base, n_new = len(base.splitlines()), len(new.splitlines())
    if n_new < n_base // 2:
        return (f"the python block has {n_new} lines but {editable} has {n_base}; send the COMPLETE new "
                f"{editable}, or a diff")
    return None


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def check_source(base: str, new: str, *, tried: Iterable[str] = (), editable: str = "train.py") -> str | None:
    """None if ``new`` may be queued as a change of ``base``; else the reason, phrased for the model."""
    if not new.strip():
        return f"the new {editable} is empty"
    try:
        tree = parse_python(new, editable, compile_it=True)
    except SyntaxError as e:
        where = f" at line {e.lineno}: {e.text.strip()!r}" if e.lineno and e.text else ""
        return f"the new {editable} does not compile: {e.msg}{where}"
    except ValueError as e:  # e.g. null bytes
        return f"the new {editable} does not compile: {e}"
    if new == base:
        return f"the change leaves {editable} exactly as it was"
    if normalise(new) == normalise(base):
        return "the change only touches comments or whitespace, which trains the same model"
    if fingerprint(new) in set(tried):
        return "this exact change was already tried on this main line; propose something different"
    try:
        known = _imports(parse_python(base))
    except SyntaxError:
        known = set()
    new_deps = sorted(_imports(tree) - known - set(sys.stdlib_module_names) - {"prepare", "__future__"})
    if new_deps:
        return (f"the change imports {', '.join(new_deps)}, which {editable} did not use before; "
                "no new dependencies are allowed (use the standard library, torch and what is already imported)")
    return None


class Claims:
    """Fingerprints taken within one propose() call, so parallel requests never queue the same change."""

    def __init__(self, tried: Iterable[str] = ()) -> None:
        self._seen = set(tried)
        self._lock = threading.Lock()

    def claim(self, source: str) -> bool:
        fp = fingerprint(source)
        with self._lock:
            if fp in self._seen:
                return False
            self._seen.add(fp)
            return True
