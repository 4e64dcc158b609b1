"""Git objects and plumbing output as bytes and text, without a repository: raw tree entries, the
farm's commit objects, one file's unified diff and its line counts, commit-message trailers, and
``worktree list --porcelain``.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterator

from cluster.errors import RepoError

FARM_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch-farm",
    "GIT_AUTHOR_EMAIL": "farm@localhost",
    "GIT_COMMITTER_NAME": "autoresearch-farm",
    "GIT_COMMITTER_EMAIL": "farm@localhost",
}
REGULAR_MODES = ("100644", "100755")
SYMLINK_MODE = "120000"
_TRAILER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*: ")


# -- trees ---------------------------------------------------------------------------------------
def tree_entries(data: bytes) -> Iterator[tuple[int, int, str, bytes]]:
    """(start, name end, mode, name) of every entry of a raw tree object."""
    i = 0
    while i < len(data):
        sp = data.index(b" ", i)
        nul = data.index(b"\0", sp)
        yield i, nul, data[i:sp].decode(), data[sp + 1:nul]
        i = nul + 21


def tree_entry(data: bytes, name: bytes) -> tuple[str, str] | None:
    """(mode, sha) of ``name`` in a raw tree object, or None."""
    for _, nul, mode, entry in tree_entries(data):
        if entry == name:
            return mode, data[nul + 1:nul + 21].hex()
    return None


def tree_replace(data: bytes, name: bytes, sha: str) -> bytes:
    """A raw tree object with the sha of entry ``name`` replaced (mode and order kept)."""
    for _, nul, _, entry in tree_entries(data):
        if entry == name:
            return data[:nul + 1] + bytes.fromhex(sha) + data[nul + 21:]
    raise RepoError(f"{name.decode()!r} is not in the tree")


# -- commits ---------------------------------------------------------------------------------------
def commit_object(tree: str, parent: str, message: str) -> bytes:
    """The body of a commit of ``tree`` on ``parent``, made now by the farm's identity (local time
    zone); ``message`` gets a final newline."""
    when = int(time.time())
    offset = time.localtime(when).tm_gmtoff
    tz = f"{'-' if offset < 0 else '+'}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    ident = lambda who: f"{FARM_IDENTITY[f'GIT_{who}_NAME']} <{FARM_IDENTITY[f'GIT_{who}_EMAIL']}> {when} {tz}"
    body = (f"tree {tree}\nparent {parent}\nauthor {ident('AUTHOR')}\ncommitter {ident('COMMITTER')}\n\n"
            + (message if message.endswith("\n") else message + "\n"))
    return body.encode("utf-8")


def add_trailer(message: str, key: str, value: str) -> str:
    """``message`` with a ``key: value`` trailer, joined to a last paragraph that is all trailers."""
    body = message.rstrip("\n")
    paragraphs = body.split("\n\n")
    last = paragraphs[-1].splitlines()
    joiner = "\n" if len(paragraphs) > 1 and last and all(_TRAILER.match(ln) for ln in last) else "\n\n"
    return f"{body}{joiner}{key}: {value}\n"


# -- diffs -----------------------------------------------------------------------------------------
def unified_diff(path: str, old: bytes, new: bytes) -> str:
    """Unified diff (3 lines of context) of one file's two versions, git's a/ b/ prefixes."""
    a = old.decode("utf-8", "replace").splitlines(keepends=True)
    b = new.decode("utf-8", "replace").splitlines(keepends=True)
    lines = difflib.unified_diff(a, b, f"a/{path}", f"b/{path}")
    return "".join(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n" for ln in lines)


def count_lines(diff: str) -> tuple[int, int]:
    """(added, removed) lines of a one-file unified diff."""
    body = diff.splitlines()
    body = body[next((i for i, ln in enumerate(body) if ln.startswith("@@")), len(body)):]
    return sum(ln.startswith("+") for ln in body), sum(ln.startswith("-") for ln in body)


# -- plumbing output -------------------------------------------------------------------------------
def worktree_branches(porcelain: str) -> dict[str, str]:
    """Branch ref -> worktree path, for every checked-out branch in ``git worktree list --porcelain``."""
    result, where = {}, ""
    for line in porcelain.splitlines():
        if line.startswith("worktree "):
            where = line[len("worktree "):]
        elif line.startswith("branch "):
            result[line[len("branch "):]] = where
    return result
