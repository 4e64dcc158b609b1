"""What a change may touch, read from git's output without a repository: a candidate may change
only the editable file's content (no other path, mode, type or name), so the commit of a diff-tree
and the files of a patch are checked here, and the reasons of a refusal are worded for its author.
"""

from __future__ import annotations

import re

from cluster.repo.objects import REGULAR_MODES, SYMLINK_MODE

_NUMSTAT = re.compile(r"^(\d+|-)\t(\d+|-)\t(.*)$")


def change_refusal(raw: str, editable: str, frozen: tuple[str, ...]) -> str | None:
    """None if ``raw`` (``diff-tree -r -z --no-renames --raw`` output) changes only the content of
    ``editable``, else why not."""
    out = raw.split("\0")
    # each change: ([old mode, new mode, old sha, new sha, status], path)
    changes = [(m[1:].split(), p) for m, p in zip(out[0::2], out[1::2]) if m.startswith(":")]
    added = {meta[3]: p for meta, p in changes if meta[4] == "A"}
    renamed = {p: added[meta[2]] for meta, p in changes if meta[4] == "D" and meta[2] in added}
    reasons, others = [], []
    for (old_mode, new_mode, _, _, st), path in changes:
        if path in renamed.values():
            continue
        if path == editable:
            if st == "D":
                reasons.append(f"{path} was " + (f"renamed to {renamed[path]}" if path in renamed else "deleted"))
            elif new_mode == SYMLINK_MODE:
                reasons.append(f"{path} became a symlink (mode {old_mode} -> {new_mode})")
            elif new_mode not in REGULAR_MODES:
                reasons.append(f"{path} is no longer a regular file (mode {new_mode})")
            elif old_mode != new_mode:
                reasons.append(f"mode change on {path} ({old_mode} -> {new_mode})")
            continue
        what = {"A": "added", "D": "deleted", "M": "modified", "T": "type changed"}.get(st, st)
        if path in renamed:
            what = f"renamed to {renamed[path]}"
        elif st != "D" and old_mode != new_mode and st in "MT":
            what = f"mode change {old_mode} -> {new_mode}"
        notes = [what]
        if new_mode == SYMLINK_MODE:
            notes.append("symlink")
        if path.rsplit("/", 1)[-1] == ".gitattributes":
            notes.append("changes git attributes")
        if path in frozen:
            notes.append("frozen")
        others.append(f"{path} ({', '.join(notes)})")
    if others:
        reasons.append(f"only {editable} may change, but so did: {'; '.join(others)}")
    return "; ".join(reasons) or None


def as_patch(diff_text: str, editable: str) -> str:
    """A diff as a proposer wrote it, made a patch file: Markdown fences dropped, file headers for
    ``editable`` put above bare hunks."""
    lines = [ln for ln in diff_text.splitlines() if not ln.startswith("```")]
    if not any(ln.startswith(("--- ", "diff --git ")) for ln in lines):  # bare hunks
        lines = [f"--- a/{editable}", f"+++ b/{editable}"] + lines
    return "\n".join(lines) + "\n"


def patch_paths(text: str, editable: str) -> tuple[list[str], list[int]]:
    """The paths other than ``editable`` that the file headers of patch ``text`` name (a/ and b/
    dropped), and the -p levels to try, likeliest first."""
    # File headers by hand: with --recount, git would read a "--- a/other.py" that follows a hunk
    # as one of its removed lines.
    lines, heads = text.splitlines(), []
    for i, ln in enumerate(lines[:-2]):
        if ln.startswith("--- ") and lines[i + 1].startswith("+++ ") and lines[i + 2].startswith("@@"):
            heads += [h.split("\t")[0][4:].strip().strip('"') for h in lines[i:i + 2]]
    heads = [h for h in heads if h != "/dev/null"]
    allowed = {editable, "a/" + editable, "b/" + editable}
    found = [h[2:] if h.startswith(("a/", "b/")) else h for h in heads if h not in allowed]
    prefixed = any(ln.startswith("diff --git a/") for ln in lines)
    order = [1, 0] if prefixed or (heads and all(h.startswith(("a/", "b/")) for h in heads)) else [0, 1]
    return found, order


def numstat(out: str) -> tuple[list[str], list[str]]:
    """The paths of ``apply --numstat --summary`` output, and its changes other than line edits
    (a binary change, a mode change, a created or deleted file)."""
    paths, changes = [], []
    for ln in out.splitlines():
        m = _NUMSTAT.match(ln)
        if m:
            paths.append(m.group(3))
            if m.group(1) == "-":
                changes.append(f"binary change of {m.group(3)}")
        elif ln.strip():
            changes.append(ln.strip())
    return paths, changes


def touches(paths: list[str], editable: str, frozen: tuple[str, ...]) -> str:
    """Why a patch that touches ``paths`` is refused."""
    named = ", ".join(p + (" (frozen)" if p in frozen else "") for p in sorted(set(paths)))
    return f"the diff touches {named}; only {editable} may be changed"
