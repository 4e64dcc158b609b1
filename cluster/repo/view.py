"""The farm's view of the target git repository: main lines, candidate commits, rebases.

The user's checkout is never touched. Objects are read through git's persistent ``cat-file
--batch`` process (GitPython's ``get_object_data``) and candidate commits are written straight
into the object database as loose objects (blob, the trees on the editable file's path, commit;
gitdb's ``LooseObjectDB``), so making a candidate starts no git process; branches move with
``update-ref`` (compare-and-swap against the old value; ``update-ref --stdin``, one transaction,
for a whole proposal round), merges run ``merge-file`` on temp files, patches ``apply --cached``
against a *temporary* index named by ``GIT_INDEX_FILE``. Nothing checks out, resets, stashes or
writes the real index, so a user can keep editing (and staging) ``train.py`` while a run of the
farm goes on in the same repository. Commits are made as "autoresearch-farm" <farm@localhost>;
no git config is read or written for that. Branch names: :mod:`.branches`.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import git
from gitdb import IStream, LooseObjectDB

from cluster.errors import PatchError, RepoError
from cluster.repo.branches import main_branch
from cluster.repo.changes import as_patch, change_refusal, numstat, patch_paths, touches
from cluster.repo.merge import merge_lines
from cluster.repo.objects import (REGULAR_MODES, add_trailer, commit_object, count_lines, tree_entries, tree_entry,
                                  tree_replace, unified_diff, worktree_branches)

log = logging.getLogger(__name__)

DEFAULT_TREE_CAP = 64 * 1024 * 1024


@dataclass(frozen=True)
class CandidateCommit:
    sha: str
    lines_added: int
    lines_removed: int
    diff: str  # unified diff of the editable file against the base (made in Python, difflib)
    base: str = ""
    branch: str = ""


class RebaseStatus(str, Enum):
    CONFLICT = "conflict"  # the change no longer merges: the caller marks the candidate stale
    ALREADY_IN = "already-in"  # the new base already has the change: nothing left to measure
    REBASED = "rebased"  # a new commit on the new base; the candidate's branch was moved to it


@dataclass(frozen=True)
class RebaseOutcome:
    status: RebaseStatus
    commit: CandidateCommit | None = None  # set only when REBASED


class FarmRepo:
    """Plumbing-only access to the target repository (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], editable: str = "train.py",
                 frozen: tuple[str, ...] = ("prepare.py",)) -> None:
        try:
            self._repo = git.Repo(path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise RepoError(f"{path} is not a git repository: pass the root of the repository that "
                            f"holds {editable} (or run `git init` there and commit it)") from None
        self.path = Path(self._repo.working_tree_dir or self._repo.git_dir)
        # writes loose objects in Python (GitPython's own odb.store would start a hash-object per object)
        self._objects = LooseObjectDB(os.path.join(self._repo.common_dir, "objects"))
        self.editable = editable
        self.frozen = tuple(frozen)
        if editable in self.frozen:
            raise RepoError(f"{editable} cannot be both the editable file and frozen")
        status, head, err = self._run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if status:
            raise RepoError(err.strip() or f"{self.path} has no commits yet: commit {editable} "
                            f"(and {', '.join(self.frozen) or 'the rest'}) first")
        self._require_editable(head.strip())

    def close(self) -> None:
        self._repo.close()

    def __enter__(self) -> FarmRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level -------------------------------------------------------------------------
    def _run(self, cmd: str, *args: str, env: dict[str, str] | None = None,
             raw: bool = False) -> tuple[int, str | bytes, str]:
        """Run ``git <cmd> <args>``; return (status, stdout, stderr), never raise."""
        status, out, err = getattr(self._repo.git, cmd.replace("-", "_"))(
            *args, env=env, with_extended_output=True, with_exceptions=False,
            stdout_as_string=not raw, strip_newline_in_stdout=not raw)
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        return status, out, err

    def _git(self, cmd: str, *args: str, env: dict[str, str] | None = None) -> str:
        status, out, err = self._run(cmd, *args, env=env)
        if status:
            raise RepoError(f"git {cmd} failed in {self.path}: {err.strip() or f'exit {status}'}")
        assert isinstance(out, str)
        return out

    def _cat(self, name: str) -> tuple[str, str, bytes]:
        """(sha, type, content) of the object ``name`` names (any revision expression), read by the
        persistent ``cat-file --batch`` process: no git process starts."""
        if not name or name.startswith("-") or "\n" in name:
            raise RepoError(f"invalid revision {name!r}")
        try:
            sha, kind, _, data = self._repo.git.get_object_data(name)
        except ValueError:
            raise RepoError(f"unknown revision {name!r} in {self.path}") from None
        return sha.decode(), kind.decode(), data

    def _root_tree(self, treeish: str) -> bytes:
        """The raw root tree of ``treeish`` (a commit or a tree)."""
        _, kind, data = self._cat(treeish)
        if kind == "commit":
            _, kind, data = self._cat(data[5:45].decode())  # a commit starts "tree <sha>\n"
        if kind != "tree":
            raise RepoError(f"{treeish} is not a commit or tree")
        return data

    def _walk(self, treeish: str, path: str) -> tuple[list[bytes], tuple[str, str, str] | None]:
        """The raw trees from the root of ``treeish`` (a commit or tree) down to ``path``'s folder,
        and (mode, type, sha) of ``path`` in it, or None."""
        trees, parts = [self._root_tree(treeish)], path.split("/")
        for i, name in enumerate(parts):
            found = tree_entry(trees[-1], name.encode())
            if found is None:
                return trees, None
            mode, sha = found
            kind = "tree" if mode == "40000" else "commit" if mode == "160000" else "blob"
            if i == len(parts) - 1:
                return trees, (mode.rjust(6, "0"), kind, sha)
            if kind != "tree":
                return trees, None
            trees.append(self._cat(sha)[2])
        return trees, None

    def _entry(self, treeish: str, path: str) -> tuple[str, str, str] | None:
        """(mode, type, sha) of ``path`` in ``treeish``, or None."""
        return self._walk(treeish, path)[1]

    def _write(self, kind: bytes, data: bytes) -> str:
        """Store one object as a loose object, without a git process; its sha."""
        return self._objects.store(IStream(kind, len(data), io.BytesIO(data))).hexsha.decode()

    def _write_commit(self, trees: list[bytes], base: str, content: bytes, message: str) -> str:
        """A commit on ``base`` whose tree is base's (``trees``, from :meth:`_walk`) with the editable
        file's content replaced (its mode kept); written without a git process."""
        sha = self._write(b"blob", content)
        for data, name in zip(reversed(trees), reversed(self.editable.split("/"))):
            sha = self._write(b"tree", tree_replace(data, name.encode(), sha))
        return self._write(b"commit", commit_object(sha, base, message))

    def _require_editable(self, commit: str) -> tuple[str, str]:
        return self._editable_at(commit)[1:]

    def _editable_at(self, commit: str) -> tuple[list[bytes], str, str]:
        """(trees down to the editable file, its mode, its blob sha) at ``commit``; RepoError if it is
        missing or not a regular file."""
        trees, entry = self._walk(commit, self.editable)
        if entry is None:
            raise RepoError(f"{self.editable} is not in commit {commit[:12]} of {self.path}; "
                            f"commit it first (or pass the right editable file)")
        mode, kind, sha = entry
        if kind != "blob" or mode not in REGULAR_MODES:
            raise RepoError(f"{self.editable} in commit {commit[:12]} is not a regular file (mode {mode})")
        return trees, mode, sha

    def _blob(self, sha: str) -> bytes:
        return self._repo.git.get_object_data(sha)[3]

    def _checked_out(self) -> dict[str, str]:
        """Branch ref -> worktree path, for every worktree's checked-out branch."""
        return worktree_branches(self._git("worktree", "list", "--porcelain"))

    def _update_ref(self, ref: str, new: str, old: str | None, reason: str) -> tuple[int, str]:
        """``update-ref``; ``old`` '' = must not exist, None = unconditional. (status, stderr)."""
        where = self._checked_out().get(ref)
        if where is not None:
            raise RepoError(f"branch {ref.removeprefix('refs/heads/')} is checked out in {where}; "
                            f"the farm never moves a checked-out branch: switch to another branch")
        args = ["-m", f"autoresearch-farm: {reason}", ref, new] + ([] if old is None else [old])
        status, _, err = self._run("update-ref", *args)
        return status, err.strip()

    def _check_ref(self, ref: str, what: str) -> None:
        status, _, _ = self._run("check-ref-format", ref)
        if status:
            raise RepoError(f"{what} is not a valid git branch name ({ref!r}); use letters, digits, "
                            f"'-', '_' and '.', without spaces, '..', '~', '^', ':', '?', '*' or '['")

    def _commit(self, base: str, content: bytes, message: str, branch: str,
                force: bool) -> CandidateCommit:
        ref = f"refs/heads/{branch}"
        trees, _, old_blob = self._editable_at(base)
        sha = self._write_commit(trees, base, content, message)
        status, err = self._update_ref(ref, sha, None if force else "", f"candidate {branch}")
        if status:
            self._check_ref(ref, f"branch {branch!r}")
            if not force and self._run("rev-parse", "--verify", "--quiet", ref)[0] == 0:
                raise RepoError(f"branch {branch} already exists; refusing to overwrite it")
            raise RepoError(f"could not write branch {branch}: {err}")
        diff = unified_diff(self.editable, self._blob(old_blob), content)
        added, removed = count_lines(diff)
        log.debug("committed %s on %s as %s (+%d -%d)", branch, base[:12], sha[:12], added, removed)
        return CandidateCommit(sha, added, removed, diff, base, branch)

    def _create_refs(self, refs: list[tuple[str, str]], reason: str) -> tuple[int, str]:
        """Create every ``(ref, sha)`` (none may exist yet) in one ``update-ref --stdin`` transaction:
        all or none. (status, stderr)."""
        checked_out = self._checked_out()
        for ref, _ in refs:
            if ref in checked_out:
                return 1, f"{ref} is checked out in {checked_out[ref]}"
        proc = subprocess.run([self._repo.git.GIT_PYTHON_GIT_EXECUTABLE or "git", "update-ref", "--stdin",
                               "-m", f"autoresearch-farm: {reason}"],
                              cwd=self._repo.working_dir or self._repo.git_dir, capture_output=True, check=False,
                              input="".join(f"create {ref} {sha}\n" for ref, sha in refs).encode())
        return proc.returncode, proc.stderr.decode("utf-8", "replace").strip()

    # -- public API ------------------------------------------------------------------------
    def tree_of(self, commit: str) -> str:
        """The sha of ``commit``'s root tree: what the commit's code is, whatever commit holds it."""
        sha, kind, data = self._cat(commit)
        if kind != "commit":
            raise RepoError(f"{commit} is not a commit")
        return data[5:45].decode()  # a commit starts "tree <sha>\n"

    def resolve(self, rev: str) -> str:
        """Full sha of the commit ``rev`` names."""
        if not rev or rev.startswith("-"):
            raise RepoError(f"invalid revision {rev!r}")
        try:
            return self._cat(f"{rev}^{{commit}}")[0]
        except RepoError:
            raise RepoError(f"unknown revision {rev!r} in {self.path}") from None

    def start_main_line(self, tag: str, start: str = "HEAD", *, resume: bool = False) -> str:
        """Create the main line ``main_branch(tag)`` at ``start`` (or with ``resume``, return where it is)."""
        ref = f"refs/heads/{main_branch(tag)}"
        if not tag or "/" in tag:
            raise RepoError(f"run tag {tag!r} must be a single name without '/' (e.g. nov25)")
        self._check_ref(ref, f"run tag {tag!r}")
        status, out, _ = self._run("rev-parse", "--verify", "--quiet", ref)
        if status == 0:
            if resume:
                return str(out).strip()
            raise RepoError(f"run tag {tag} already exists (branch {main_branch(tag)}); "
                            f"pass --resume to continue it or choose another --tag")
        sha = self.resolve(start)
        self._require_editable(sha)
        status, err = self._update_ref(ref, sha, "", f"start run {tag}")
        if status:
            if resume and self._run("rev-parse", "--verify", "--quiet", ref)[0] == 0:
                return self.main_line(tag)  # created concurrently
            raise RepoError(f"could not create branch {main_branch(tag)}: {err}")
        log.info("run %s starts at %s (branch %s)", tag, sha[:12], main_branch(tag))
        return sha

    def main_line(self, tag: str) -> str:
        """Current sha of run ``tag``'s main line."""
        status, out, _ = self._run("rev-parse", "--verify", "--quiet",
                                   f"refs/heads/{main_branch(tag)}^{{commit}}")
        if status:
            raise RepoError(f"no run with tag {tag} (branch {main_branch(tag)} does not exist)")
        return str(out).strip()

    def read_file(self, commit: str, path: str) -> str:
        """Text of ``path`` at ``commit`` (a commit or tree)."""
        entry = self._entry(commit, path)
        if entry is None or entry[1] != "blob":
            raise RepoError(f"{path} is not a file in {commit[:12]}")
        try:
            return self._blob(entry[2]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RepoError(f"{path} at {commit[:12]} is not UTF-8 text: {e}") from None

    def commit_candidate(self, base: str, new_source: str, branch: str, message: str, *,
                         force: bool = False) -> CandidateCommit:
        """Commit ``new_source`` as the editable file on top of ``base`` and point ``branch`` at it."""
        base = self.resolve(base)
        if new_source == self.read_file(base, self.editable):
            raise PatchError(f"the proposed {self.editable} is identical to the base {base[:12]}")
        return self._commit(base, new_source.encode("utf-8"), message, branch, force)

    def commit_candidates(self, base: str, items: list[tuple[str, str, str]]) -> list[CandidateCommit | PatchError]:
        """Commit many candidates on one ``base`` at once: ``items`` are (new source, branch, message).
        Reads the base once, writes every object without a git process and creates all the branches
        in one ``update-ref --stdin`` transaction (none of them may exist yet): two git processes in
        all. Returns, per item in order, its CandidateCommit, or the PatchError of a source identical
        to the base. Made only of the editable file's content, these commits pass check_change by
        construction."""
        base = self.resolve(base)
        trees, _, base_blob = self._editable_at(base)
        old = self._blob(base_blob)
        out: list[CandidateCommit | PatchError] = []
        refs: list[tuple[str, str]] = []
        for source, branch, message in items:
            content = source.encode("utf-8")
            if content == old:
                out.append(PatchError(f"the proposed {self.editable} is identical to the base {base[:12]}"))
                continue
            sha = self._write_commit(trees, base, content, message)
            diff = unified_diff(self.editable, old, content)
            out.append(CandidateCommit(sha, *count_lines(diff), diff, base, branch))
            refs.append((f"refs/heads/{branch}", sha))
        if refs:
            status, err = self._create_refs(refs, f"{len(refs)} candidate(s) on {base[:12]}")
            if status:  # one name is bad, taken or checked out: find which, one by one
                log.info("batched branch update failed (%s); creating the branches one by one", err)
                for ref, sha in refs:
                    branch = ref.removeprefix("refs/heads/")
                    status, there, _ = self._run("rev-parse", "--verify", "--quiet", ref)
                    if status == 0 and str(there).strip() != sha:
                        raise RepoError(f"branch {branch} already exists; refusing to overwrite it")
                    if status == 0:
                        continue  # made by this call before the failure
                    self._check_ref(ref, f"branch {branch!r}")
                    status, err = self._update_ref(ref, sha, "", f"candidate {branch}")
                    if status:
                        raise RepoError(f"could not write branch {branch}: {err}")
        return out

    def apply_diff(self, base: str, diff_text: str) -> str:
        """New text of the editable file after applying a unified diff to ``base``."""
        base = self.resolve(base)
        text = as_patch(diff_text, self.editable)
        with tempfile.TemporaryDirectory(prefix="farm-apply-") as d:
            patch = Path(d, "patch.diff")
            patch.write_text(text, "utf-8")
            strip = self._patch_strip(str(patch), text)
            env = {"GIT_INDEX_FILE": os.path.join(d, "index")}
            self._git("read-tree", base, env=env)
            first_err = ""
            # strict; then whitespace runs changed inside context lines; then trailing
            # whitespace on either side (that last one strips it from the hunk's lines)
            for extra in (["--whitespace=nowarn"], ["--whitespace=nowarn", "--ignore-whitespace"],
                          ["--whitespace=fix"]):
                status, _, err = self._run("apply", "--cached", "--recount", f"-p{strip}",
                                           *extra, str(patch), env=env)
                if status == 0:
                    break
                first_err = first_err or err.strip()
            else:
                raise PatchError(f"the diff does not apply to {self.editable} at {base[:12]}: {first_err}")
            tree = self._git("write-tree", env=env).strip()
        reason = self.check_change(base, tree)
        if reason:
            raise PatchError(f"the diff is refused: {reason}")
        new = self.read_file(tree, self.editable)
        if new == self.read_file(base, self.editable):
            raise PatchError(f"the diff does not change {self.editable}")
        return new

    def _patch_strip(self, patch: str, text: str) -> int:
        """The -p level whose paths are exactly the editable file; PatchError otherwise."""
        found, order = patch_paths(text, self.editable)
        if found:
            raise PatchError(touches(found, self.editable, self.frozen))
        errors: list[str] = []
        for strip in order:
            status, out, err = self._run("apply", "--numstat", "--summary", "--recount",
                                         f"-p{strip}", patch)
            if status:
                errors.append(err.strip())
                continue
            paths, changes = numstat(str(out))
            if set(paths) == {self.editable}:
                if changes:
                    raise PatchError(f"the diff may only modify {self.editable}'s content, "
                                     f"not: {'; '.join(changes)}")
                return strip
            found = found or [p for p in paths if p != self.editable]
        if found:
            raise PatchError(touches(found, self.editable, self.frozen))
        raise PatchError(f"not a usable diff of {self.editable}: {errors[0] if errors else 'no file in it'}")

    def rebase_candidate(self, commit: str, new_base: str, branch: str,
                         message: str | None = None) -> RebaseOutcome:
        """Re-apply a candidate's change to the editable file on top of ``new_base`` (3-way)."""
        commit, new_base = self.resolve(commit), self.resolve(new_base)
        parent = self.resolve(f"{commit}^")
        theirs = self._blob(self._require_editable(commit)[1])
        ancestor = self._blob(self._require_editable(parent)[1])
        if parent == new_base:  # already on it: nothing to rewrite
            self._update_ref(f"refs/heads/{branch}", commit, None, f"candidate {branch}")
            diff = unified_diff(self.editable, ancestor, theirs)
            return RebaseOutcome(RebaseStatus.REBASED, CandidateCommit(commit, *count_lines(diff), diff,
                                                                       new_base, branch))
        ours = self._blob(self._require_editable(new_base)[1])
        if theirs == ours:
            return RebaseOutcome(RebaseStatus.ALREADY_IN)
        with tempfile.TemporaryDirectory(prefix="farm-merge-") as d:
            files = [Path(d, n) for n in ("ours", "base", "theirs")]
            for f, data in zip(files, (ours, ancestor, theirs)):
                f.write_bytes(data)
            status, merged, err = self._run("merge-file", "-p", "--quiet", *map(str, files), raw=True)
        if status < 0 or status > 127:
            raise RepoError(f"git merge-file failed: {err.strip()}")
        if status:
            # git refuses changes on adjacent lines; two constants on neighbouring lines are
            # independent edits, so retry with a merge that needs no context between hunks
            merged = merge_lines(ancestor, ours, theirs)
            if merged is None:
                log.info("rebase of %s onto %s: %d conflict(s)", commit[:12], new_base[:12], status)
                return RebaseOutcome(RebaseStatus.CONFLICT)
        assert isinstance(merged, bytes)
        if merged == ours:
            return RebaseOutcome(RebaseStatus.ALREADY_IN)
        if message is None:
            message = self._cat(commit)[2].decode("utf-8", "replace").partition("\n\n")[2]
        if f"Rebased-From: {commit}" not in message:
            message = add_trailer(message, "Rebased-From", commit)
        done = self._commit(new_base, merged, message, branch, force=True)
        return RebaseOutcome(RebaseStatus.REBASED, done)

    def advance_main_line(self, tag: str, expected: str, new: str) -> bool:
        """Fast-forward the main line from ``expected`` to ``new``; False if it moved meanwhile."""
        ref = f"refs/heads/{main_branch(tag)}"
        expected, new = self.resolve(expected), self.resolve(new)
        status, _, err = self._run("merge-base", "--is-ancestor", expected, new)
        if status == 1:
            raise RepoError(f"{new[:12]} is not a descendant of {expected[:12]}: the main line "
                            f"{main_branch(tag)} only fast-forwards")
        if status:
            raise RepoError(f"git merge-base failed: {err.strip()}")
        status, err = self._update_ref(ref, new, expected, f"advance run {tag}")
        if status == 0:
            log.info("main line %s advanced %s -> %s", main_branch(tag), expected[:12], new[:12])
            return True
        if self.main_line(tag) != expected:
            log.info("main line %s moved meanwhile; not advancing to %s", main_branch(tag), new[:12])
            return False
        raise RepoError(f"could not update {main_branch(tag)}: {err}")

    def check_change(self, base: str, commit: str) -> str | None:
        """None if ``commit`` differs from ``base`` only in the editable file's content, else why."""
        raw = self._git("diff-tree", "-r", "-z", "--no-renames", "--raw", base, commit)
        return change_refusal(raw, self.editable, self.frozen)

    def tree_files(self, commit: str, *, max_bytes: int = DEFAULT_TREE_CAP) -> dict[str, bytes]:
        """Every regular file of ``commit`` (path -> bytes), to ship a tree to another node. Read
        through the persistent cat-file processes: no git process starts."""
        blobs, total, trees = [], 0, [("", self._root_tree(commit))]
        while trees:
            prefix, tree = trees.pop()
            for _, nul, mode, name in tree_entries(tree):
                path, sha = prefix + name.decode("utf-8", "surrogateescape"), tree[nul + 1:nul + 21].hex()
                if mode == "40000":
                    trees.append((path + "/", self._cat(sha)[2]))
                elif mode in REGULAR_MODES:
                    blobs.append((path, sha))
                    total += int(self._repo.git.get_object_header(sha)[2])
                else:
                    log.debug("tree_files: skipping %s (mode %s)", path, mode)
        if total > max_bytes:
            raise RepoError(f"the files of {commit[:12]} total {total / 2**20:.1f} MiB, over the "
                            f"{max_bytes / 2**20:.0f} MiB shipped to workers: trim the repository "
                            f"(move data and checkpoints out of git, e.g. into ~/.cache)")
        return {path: self._blob(sha) for path, sha in sorted(blobs)}

    def diff(self, base: str, commit: str) -> str:
        """Unified diff of the editable file from ``base`` to ``commit``."""
        status, out, err = self._run("diff-tree", "-p", "--no-color", "--no-ext-diff",
                                     "--src-prefix=a/", "--dst-prefix=b/", base, commit,
                                     "--", self.editable, raw=True)
        if status:
            raise RepoError(f"git diff-tree failed: {err.strip()}")
        assert isinstance(out, bytes)
        return out.decode("utf-8", "replace")

    def branches(self, prefix: str) -> dict[str, str]:
        """Branch name -> sha for every branch under ``refs/heads/<prefix>``."""
        pattern = "refs/heads/" + prefix.strip("/") if prefix.strip("/") else "refs/heads"
        out = self._git("for-each-ref", "--format=%(objectname) %(refname)", pattern)
        result = {}
        for line in out.splitlines():
            sha, _, ref = line.partition(" ")
            result[ref.removeprefix("refs/heads/")] = sha
        return result

