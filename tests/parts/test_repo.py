"""Tests of cluster.repo against real git repositories made in tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cluster.errors import PatchError, RepoError
from cluster.repo import (
    FarmRepo,
    RebaseStatus,
    candidate_branch,
    candidate_prefix,
    main_branch,
    merge_lines,
)

TRAIN = "".join(f"line {i}\n" for i in range(1, 31))
PREPARE = "# fixed data preparation\nMAX_SEQ_LEN = 2048\n"


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd, env=full_env, check=True, capture_output=True, text=True,
    ).stdout


def replace_line(text: str, n: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[n - 1] = new + "\n"
    return "".join(lines)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text(TRAIN)
    (path / "prepare.py").write_text(PREPARE)
    (path / "README.md").write_text("hello\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def farm(target: Path):
    with FarmRepo(target) as repo:
        yield repo


def make_commit(repo: Path, base: str, changes: dict[str, tuple[str, bytes] | None], tmp: Path) -> str:
    """A commit on `base` with `changes` (path -> (mode, content) or None to delete), via plumbing."""
    env = {"GIT_INDEX_FILE": str(tmp / "test-index")}
    git(repo, "read-tree", base, env=env)
    for path, change in changes.items():
        if change is None:
            git(repo, "update-index", "--force-remove", path, env=env)
            continue
        mode, content = change
        blob_file = tmp / "blob"
        blob_file.write_bytes(content)
        blob = git(repo, "hash-object", "-w", "--no-filters", str(blob_file)).strip()
        git(repo, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
    tree = git(repo, "write-tree", env=env).strip()
    os.unlink(env["GIT_INDEX_FILE"])
    return git(repo, "commit-tree", tree, "-p", base, "-m", "test change").strip()


# -- construction, names, main line -----------------------------------------------------------
def test_names():
    assert main_branch("nov25") == "autoresearch/nov25"
    assert candidate_branch("nov25", "c0007") == "candidates/nov25/c0007"
    assert candidate_prefix("nov25") == "candidates/nov25/" and candidate_branch("nov25", "c0007").startswith(
        candidate_prefix("nov25"))


def test_not_a_repo(tmp_path: Path):
    with pytest.raises(RepoError, match="not a git repository"):
        FarmRepo(tmp_path)
    with pytest.raises(RepoError, match="not a git repository"):
        FarmRepo(tmp_path / "missing")


def test_no_commits(tmp_path: Path):
    git(tmp_path, "init", "-q")
    with pytest.raises(RepoError, match="no commits"):
        FarmRepo(tmp_path)


def test_editable_missing(target: Path):
    with pytest.raises(RepoError, match="model.py is not in commit"):
        FarmRepo(target, editable="model.py")


def test_start_main_line(farm: FarmRepo, target: Path):
    head = git(target, "rev-parse", "HEAD").strip()
    assert farm.resolve("HEAD") == head
    assert farm.start_main_line("nov25") == head
    assert farm.main_line("nov25") == head
    assert git(target, "rev-parse", "autoresearch/nov25").strip() == head
    with pytest.raises(RepoError, match=r"run tag nov25 already exists .*--resume"):
        farm.start_main_line("nov25")
    assert farm.start_main_line("nov25", resume=True) == head
    for bad in ("bad..tag", "with space", "a/b", "", "x~1"):
        with pytest.raises(RepoError, match="tag"):
            farm.start_main_line(bad)
    with pytest.raises(RepoError, match="no run with tag other"):
        farm.main_line("other")
    with pytest.raises(RepoError, match="unknown revision"):
        farm.resolve("nope")


def test_read_file(farm: FarmRepo):
    assert farm.read_file("HEAD", "train.py") == TRAIN
    assert farm.read_file("HEAD", "prepare.py") == PREPARE
    with pytest.raises(RepoError, match="missing.py"):
        farm.read_file("HEAD", "missing.py")


# -- candidates ---------------------------------------------------------------------------------
def test_commit_candidate(farm: FarmRepo, target: Path):
    base = farm.start_main_line("t")
    new = replace_line(TRAIN, 5, "LR = 0.02") + "extra\n"
    message = "raise the learning rate\n\nFarm-Candidate: c0001\nFarm-Origin: mutate\n"
    cand = farm.commit_candidate(base, new, candidate_branch("t", "c0001"), message)
    assert git(target, "rev-parse", f"{cand.sha}^").strip() == base
    assert git(target, "rev-parse", "candidates/t/c0001").strip() == cand.sha
    assert farm.read_file(cand.sha, "train.py") == new
    assert (cand.lines_added, cand.lines_removed) == (2, 1)
    assert "-line 5\n+LR = 0.02\n" in cand.diff and "+++ b/train.py" in cand.diff
    changed = lambda d: [ln for ln in d.splitlines() if ln.startswith(("+", "-"))]
    assert changed(farm.diff(base, cand.sha)) == changed(cand.diff), "the same change as git's diff"
    assert farm.check_change(base, cand.sha) is None
    assert git(target, "cat-file", "commit", cand.sha).split("\n\n", 1)[1] == message
    assert "autoresearch-farm <farm@localhost>" in git(target, "cat-file", "commit", cand.sha)
    with pytest.raises(PatchError, match="identical"):
        farm.commit_candidate(base, TRAIN, "candidates/t/c0002", "same")
    with pytest.raises(RepoError, match="already exists"):
        farm.commit_candidate(base, new + "x\n", "candidates/t/c0001", "again")
    again = farm.commit_candidate(base, new + "x\n", "candidates/t/c0001", "again", force=True)
    assert farm.branches("candidates/t") == {"candidates/t/c0001": again.sha}
    with pytest.raises(RepoError, match="not a valid git branch name"):
        farm.commit_candidate(base, new, "candidates/t/bad..name", "m")


def test_commit_candidate_preserves_mode(target: Path, tmp_path: Path):
    git(target, "update-index", "--chmod=+x", "train.py")
    git(target, "commit", "-q", "-m", "executable")
    with FarmRepo(target) as farm:
        cand = farm.commit_candidate("HEAD", TRAIN + "more\n", "c", "m")
        assert git(target, "ls-tree", cand.sha, "train.py").startswith("100755 ")
        assert farm.check_change("HEAD", cand.sha) is None


def test_branches(farm: FarmRepo):
    base = farm.start_main_line("t")
    a = farm.commit_candidate(base, TRAIN + "a\n", candidate_branch("t", "c0001"), "a")
    b = farm.commit_candidate(base, TRAIN + "b\n", candidate_branch("t", "c0002"), "b")
    farm.commit_candidate(base, TRAIN + "c\n", candidate_branch("u", "c0001"), "c")
    assert farm.branches("candidates/t") == {"candidates/t/c0001": a.sha, "candidates/t/c0002": b.sha}
    assert farm.branches("autoresearch/") == {"autoresearch/t": base}
    assert farm.branches("nothing") == {}


# -- diffs --------------------------------------------------------------------------------------
PREFIXED = """--- a/train.py
+++ b/train.py
@@ -3,5 +3,5 @@
 line 3
 line 4
-line 5
+LR = 0.02
 line 6
 line 7
"""


def test_apply_diff_prefixes(farm: FarmRepo):
    want = replace_line(TRAIN, 5, "LR = 0.02")
    assert farm.apply_diff("HEAD", PREFIXED) == want
    bare = PREFIXED.replace("a/train.py", "train.py").replace("b/train.py", "train.py")
    assert farm.apply_diff("HEAD", bare) == want
    # wrong hunk counts, a git header, markdown fences and chatter around it
    fenced = ("Here is my change:\n```diff\ndiff --git a/train.py b/train.py\n"
              + PREFIXED.replace("@@ -3,5 +3,5 @@", "@@ -3,9 +3,2 @@") + "```\n")
    assert farm.apply_diff("HEAD", fenced) == want
    # hunks without file headers are taken to be of the editable file
    assert farm.apply_diff("HEAD", PREFIXED.split("\n", 2)[2]) == want


def test_apply_diff_whitespace_tolerant(target: Path, tmp_path: Path):
    # the file has trailing whitespace the LLM dropped from its context lines
    (target / "train.py").write_text(TRAIN.replace("line 4\n", "line 4   \n"))
    git(target, "commit", "-q", "-am", "trailing ws")
    with FarmRepo(target) as farm:
        new = farm.apply_diff("HEAD", PREFIXED)
        assert "LR = 0.02\n" in new and "line 5\n" not in new


def test_apply_diff_whitespace_in_the_diff(farm: FarmRepo):
    want = replace_line(TRAIN, 5, "LR = 0.02")
    # trailing whitespace added to a context line, a whitespace run changed inside another
    assert farm.apply_diff("HEAD", PREFIXED.replace(" line 3\n", " line 3  \n")) == want
    assert farm.apply_diff("HEAD", PREFIXED.replace(" line 6\n", " line  6\n")) == want


def test_apply_diff_refuses_other_paths(farm: FarmRepo):
    touching = PREFIXED + """--- a/prepare.py
+++ b/prepare.py
@@ -1,2 +1,2 @@
 # fixed data preparation
-MAX_SEQ_LEN = 2048
+MAX_SEQ_LEN = 4096
"""
    with pytest.raises(PatchError, match=r"prepare.py \(frozen\)"):
        farm.apply_diff("HEAD", touching)
    new_file = "--- /dev/null\n+++ b/notes.txt\n@@ -0,0 +1 @@\n+hi\n"
    with pytest.raises(PatchError, match="notes.txt"):
        farm.apply_diff("HEAD", new_file)
    mode = "diff --git a/train.py b/train.py\nold mode 100644\nnew mode 100755\n"
    with pytest.raises(PatchError, match="mode change"):
        farm.apply_diff("HEAD", mode)


def test_apply_diff_does_not_apply(farm: FarmRepo):
    wrong = PREFIXED.replace("line 4", "line forty")
    with pytest.raises(PatchError, match="patch does not apply") as info:
        farm.apply_diff("HEAD", wrong)
    assert "train.py" in str(info.value)
    with pytest.raises(PatchError):
        farm.apply_diff("HEAD", "I could not think of a change.\n")


# -- rebase -------------------------------------------------------------------------------------
def _setup_rebase(farm: FarmRepo):
    base = farm.start_main_line("t")
    winner = farm.commit_candidate(base, replace_line(TRAIN, 2, "WIN"), "candidates/t/c0001", "win")
    assert farm.advance_main_line("t", base, winner.sha)
    return base, winner


def test_rebase_clean(farm: FarmRepo, target: Path):
    base, winner = _setup_rebase(farm)
    msg = "deeper model\n\nFarm-Candidate: c0002\nFarm-Origin: mutate\n"
    pending = farm.commit_candidate(base, replace_line(TRAIN, 20, "DEPTH = 12"), "candidates/t/c0002", msg)
    out = farm.rebase_candidate(pending.sha, winner.sha, "candidates/t/c0002")
    assert out.status is RebaseStatus.REBASED and out.commit is not None
    sha = out.commit.sha
    assert git(target, "rev-parse", f"{sha}^").strip() == winner.sha
    assert git(target, "rev-parse", "candidates/t/c0002").strip() == sha
    assert farm.read_file(sha, "train.py") == replace_line(replace_line(TRAIN, 2, "WIN"), 20, "DEPTH = 12")
    assert (out.commit.lines_added, out.commit.lines_removed) == (1, 1)
    body = git(target, "cat-file", "commit", sha).split("\n\n", 1)[1]
    assert body == msg + f"Rebased-From: {pending.sha}\n"
    assert farm.check_change(winner.sha, sha) is None
    # rebasing onto its own parent leaves it as it is
    same = farm.rebase_candidate(sha, winner.sha, "candidates/t/c0002")
    assert same.status is RebaseStatus.REBASED and same.commit and same.commit.sha == sha


def test_rebase_conflict_and_already_in(farm: FarmRepo, target: Path):
    base, winner = _setup_rebase(farm)
    clash = farm.commit_candidate(base, replace_line(TRAIN, 2, "OTHER"), "candidates/t/c0002", "clash")
    out = farm.rebase_candidate(clash.sha, winner.sha, "candidates/t/c0002")
    assert out.status is RebaseStatus.CONFLICT and out.commit is None
    assert git(target, "rev-parse", "candidates/t/c0002").strip() == clash.sha  # left alone
    dup = farm.commit_candidate(base, replace_line(TRAIN, 2, "WIN"), "candidates/t/c0003", "dup")
    assert farm.rebase_candidate(dup.sha, winner.sha, "candidates/t/c0003").status is RebaseStatus.ALREADY_IN
    # a candidate whose change is a subset of the winner's merges to the winner's file
    both = replace_line(replace_line(TRAIN, 2, "WIN"), 25, "ALSO")
    big = farm.commit_candidate(winner.sha, both, "candidates/t/c0004", "big")
    assert farm.advance_main_line("t", winner.sha, big.sha)
    sub = farm.commit_candidate(base, replace_line(TRAIN, 25, "ALSO"), "candidates/t/c0005", "sub")
    assert farm.rebase_candidate(sub.sha, big.sha, "candidates/t/c0005").status is RebaseStatus.ALREADY_IN



def test_rebase_accepts_a_change_on_the_line_next_to_the_winners(farm: FarmRepo, target: Path):
    # neighbouring constants are independent hyperparameters: git merge-file calls this a conflict
    base, winner = _setup_rebase(farm)
    neighbour = farm.commit_candidate(base, replace_line(TRAIN, 3, "NEXT"), "candidates/t/c0002", "next line")
    out = farm.rebase_candidate(neighbour.sha, winner.sha, "candidates/t/c0002")
    assert out.status is RebaseStatus.REBASED and out.commit is not None
    assert farm.read_file(out.commit.sha, "train.py") == replace_line(replace_line(TRAIN, 2, "WIN"), 3, "NEXT")


@pytest.mark.parametrize("ours, theirs, expect", [
    (b"a\nB\nc\n", b"a\nb\nC\n", b"a\nB\nC\n"),  # adjacent lines: both kept
    (b"a\nB\nc\n", b"a\nX\nc\n", None),  # the same line changed two ways
    (b"a\nB\nc\n", b"a\nB\nc\n", b"a\nB\nc\n"),  # the same edit on both sides
    (b"a\nb\nc\nx\n", b"y\na\nb\nc\n", b"y\na\nb\nc\nx\n"),  # insertions at both ends
    (b"a\nx\nb\nc\n", b"a\ny\nb\nc\n", None),  # two insertions at one place
    (b"a\nc\n", b"a\nB\nc\n", None),  # a deleted line that the other side changed
])
def test_merge_lines(ours, theirs, expect):
    assert merge_lines(b"a\nb\nc\n", ours, theirs) == expect


# -- main line ----------------------------------------------------------------------------------
def test_advance_main_line(farm: FarmRepo, target: Path):
    base = farm.start_main_line("t")
    a = farm.commit_candidate(base, TRAIN + "a\n", "candidates/t/c0001", "a")
    b = farm.commit_candidate(base, TRAIN + "b\n", "candidates/t/c0002", "b")
    assert farm.advance_main_line("t", base, a.sha) is True
    assert farm.main_line("t") == a.sha
    # stale expected value: someone else already moved the line
    c = farm.commit_candidate(base, TRAIN + "c\n", "candidates/t/c0003", "c")
    assert farm.advance_main_line("t", base, c.sha) is False
    assert farm.main_line("t") == a.sha
    # not a fast-forward of the current line
    with pytest.raises(RepoError, match="only fast-forwards"):
        farm.advance_main_line("t", a.sha, b.sha)
    assert farm.main_line("t") == a.sha


def test_never_moves_a_checked_out_branch(farm: FarmRepo, target: Path):
    base = farm.start_main_line("t")
    a = farm.commit_candidate(base, TRAIN + "a\n", "candidates/t/c0001", "a")
    git(target, "symbolic-ref", "HEAD", "refs/heads/autoresearch/t")
    with pytest.raises(RepoError, match="checked out"):
        farm.advance_main_line("t", base, a.sha)
    assert farm.main_line("t") == base


# -- check_change -------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, expect", [
    ({"train.py": ("100644", b"new\n"), "README.md": ("100644", b"changed\n")}, r"README.md \(modified\)"),
    ({"train.py": ("100644", b"new\n"), "prepare.py": ("100644", b"x\n")}, r"prepare.py \(modified, frozen\)"),
    ({"train.py": ("100644", b"new\n"), "data/extra.py": ("100644", b"x\n")}, r"data/extra.py \(added\)"),
    ({"README.md": None, "README2.md": ("100644", b"hello\n")}, r"README.md \(renamed to README2.md\)"),
    ({"train.py": None, "train2.py": ("100644", TRAIN.encode())}, r"train.py was renamed to train2.py"),
    ({"train.py": ("100755", TRAIN.encode())}, r"mode change on train.py \(100644 -> 100755\)"),
    ({"train.py": ("120000", b"prepare.py")}, r"train.py became a symlink"),
    ({"link": ("120000", b"/etc/passwd")}, r"link \(added, symlink\)"),
    ({".gitattributes": ("100644", b"*.py filter=evil\n")}, r"\.gitattributes \(added, changes git attributes\)"),
    ({"train.py": None}, r"train.py was deleted"),
])
def test_check_change_refusals(farm: FarmRepo, target: Path, tmp_path: Path, changes, expect):
    sha = make_commit(target, farm.resolve("HEAD"), changes, tmp_path)
    reason = farm.check_change("HEAD", sha)
    assert reason is not None
    assert __import__("re").search(expect, reason), reason


def test_check_change_ok(farm: FarmRepo, target: Path, tmp_path: Path):
    sha = make_commit(target, farm.resolve("HEAD"), {"train.py": ("100644", b"new\n")}, tmp_path)
    assert farm.check_change("HEAD", sha) is None
    assert farm.check_change("HEAD", "HEAD") is None


# -- tree_files ---------------------------------------------------------------------------------
def test_tree_files(farm: FarmRepo, target: Path, tmp_path: Path):
    sha = make_commit(target, farm.resolve("HEAD"), {
        "sub/data.bin": ("100644", bytes(range(256))),
        "link": ("120000", b"train.py"),
        "run.sh": ("100755", b"#!/bin/sh\n"),
    }, tmp_path)
    files = farm.tree_files(sha)
    assert files == {"train.py": TRAIN.encode(), "prepare.py": PREPARE.encode(),
                     "README.md": b"hello\n", "sub/data.bin": bytes(range(256)),
                     "run.sh": b"#!/bin/sh\n"}
    with pytest.raises(RepoError, match="trim the repository"):
        farm.tree_files(sha, max_bytes=100)


# -- the user's checkout is never touched -------------------------------------------------------
def snapshot(repo: Path) -> dict:
    git_dir = repo / ".git"
    files = {}
    for p in sorted(repo.rglob("*")):
        if ".git" in p.relative_to(repo).parts or not p.is_file():
            continue
        files[str(p.relative_to(repo))] = (p.read_bytes(), p.stat().st_mtime_ns)
    index = git_dir / "index"
    state = {
        "files": files,
        "index": (index.read_bytes(), index.stat().st_mtime_ns),
        "HEAD": (git_dir / "HEAD").read_bytes(),
        "main": git(repo, "rev-parse", "refs/heads/main"),
        "stash": git(repo, "stash", "list"),
    }
    # GIT_OPTIONAL_LOCKS=0: status must not refresh (rewrite) the index itself
    state["status"] = git(repo, "status", "--porcelain", env={"GIT_OPTIONAL_LOCKS": "0"})
    return state


def test_user_checkout_untouched(farm: FarmRepo, target: Path):
    (target / "train.py").write_text(TRAIN + "# my uncommitted experiment\n")
    (target / "README.md").write_text("staged edit\n")
    git(target, "add", "README.md")
    (target / "untracked.txt").write_text("scratch\n")
    before = snapshot(target)
    assert " M train.py" in before["status"] and "M  README.md" in before["status"]

    base = farm.start_main_line("t")
    cands = [farm.commit_candidate(base, replace_line(TRAIN, n, f"CHANGE {n}"), candidate_branch("t", f"c000{n}"),
                                   f"change {n}\n\nFarm-Candidate: c000{n}\n") for n in (1, 10, 20)]
    farm.apply_diff(base, PREFIXED)
    assert farm.advance_main_line("t", base, cands[0].sha)
    for cand, cid in zip(cands[1:], ("c00010", "c00020")):
        out = farm.rebase_candidate(cand.sha, cands[0].sha, candidate_branch("t", cid))
        assert out.status is RebaseStatus.REBASED and out.commit
        assert farm.check_change(cands[0].sha, out.commit.sha) is None
        farm.tree_files(out.commit.sha)
    assert farm.advance_main_line("t", cands[0].sha, out.commit.sha)

    assert snapshot(target) == before


def test_works_without_git_config(target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                "EMAIL", "GIT_CONFIG_GLOBAL"):
        monkeypatch.delenv(var, raising=False)
    # commit.gpgSign in the repo's own config must not make the farm try to sign
    subprocess.run(["git", "config", "commit.gpgSign", "true"], cwd=target, check=True)
    with FarmRepo(target) as farm:
        base = farm.start_main_line("t")
        cand = farm.commit_candidate(base, TRAIN + "x\n", candidate_branch("t", "c0001"), "x")
        out = farm.rebase_candidate(cand.sha, base, candidate_branch("t", "c0001"))
        assert out.status is RebaseStatus.REBASED
        assert farm.advance_main_line("t", base, cand.sha)
    raw = subprocess.run(["git", "cat-file", "commit", cand.sha], cwd=target, check=True,
                         capture_output=True, text=True).stdout
    assert "author autoresearch-farm <farm@localhost>" in raw
    assert "committer autoresearch-farm <farm@localhost>" in raw


# -- git processes per proposal round and per rebase ----------------------------------------------
@pytest.fixture
def count_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Counts the git processes started from now on (a `git` first on PATH that logs, then runs git)."""
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True, check=True).stdout.strip()
    bindir, log = tmp_path / "count-bin", tmp_path / "git-calls.log"
    bindir.mkdir()
    (bindir / "git").write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec {real} "$@"\n')
    (bindir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    def calls() -> list[str]:
        out = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return out
    return calls


def test_commit_candidates_makes_a_round_with_two_git_processes(farm: FarmRepo, target: Path, count_git):
    base = farm.start_main_line("t")
    farm.tree_files(base)  # (GitPython's persistent cat-file processes start once, here)
    for first, size in ((1, 2), (3, 8)):
        count_git()
        items = [(replace_line(TRAIN, n, f"CHANGE {n}"), candidate_branch("t", f"c{n:04d}"),
                  f"change {n}\n\nFarm-Candidate: c{n:04d}\nFarm-Origin: test\n") for n in range(first, first + size)]
        made = farm.commit_candidates(base, items)
        assert sorted(count_git()) == ["update-ref", "worktree"], f"git processes for a round of {size}"
        for (source, branch, message), cand in zip(items, made):
            assert git(target, "rev-parse", branch).strip() == cand.sha
            assert git(target, "rev-parse", f"{cand.sha}^").strip() == base
            assert farm.read_file(cand.sha, "train.py") == source and farm.check_change(base, cand.sha) is None
            assert git(target, "cat-file", "commit", cand.sha).split("\n\n", 1)[1] == message
            assert (cand.lines_added, cand.lines_removed) == (1, 1) and cand.base == base
    count_git()
    assert farm.tree_files(made[0].sha)["train.py"] == items[0][0].encode()
    farm.rebase_candidate(made[0].sha, base, items[0][1])  # already on it: the branch is set again
    assert sorted(count_git()) == ["update-ref", "worktree"], "reading a tree to ship it starts no git process"
    assert git(target, "log", "-1", "--format=%an <%ae>|%cn <%ce>", made[0].sha).strip() == \
        "autoresearch-farm <farm@localhost>|autoresearch-farm <farm@localhost>"
    assert git(target, "fsck", "--no-progress", "--strict").strip() == ""


def test_commit_candidates_refuses_identical_sources_and_taken_branches(farm: FarmRepo, target: Path):
    base = farm.start_main_line("t")
    taken = farm.commit_candidate(base, TRAIN + "a\n", candidate_branch("t", "c0001"), "a")
    made = farm.commit_candidates(base, [(TRAIN, "candidates/t/c0002", "same"), (TRAIN + "b\n", "candidates/t/c0003", "b")])
    assert isinstance(made[0], PatchError) and "identical" in str(made[0])
    assert git(target, "rev-parse", "candidates/t/c0003").strip() == made[1].sha
    with pytest.raises(RepoError, match="already exists"):
        farm.commit_candidates(base, [(TRAIN + "c\n", "candidates/t/c0004", "c"), (TRAIN + "d\n", "candidates/t/c0001", "d")])
    assert git(target, "rev-parse", "candidates/t/c0001").strip() == taken.sha, "never overwritten"
    with pytest.raises(RepoError, match="not a valid git branch name"):
        farm.commit_candidates(base, [(TRAIN + "e\n", "candidates/t/bad..name", "e")])


def test_a_round_and_a_rebase_leave_the_user_checkout_alone(farm: FarmRepo, target: Path, count_git):
    (target / "train.py").write_text(TRAIN + "# my uncommitted experiment\n")
    git(target, "add", "README.md")
    before = snapshot(target)
    base = farm.start_main_line("t")
    win, a, b = farm.commit_candidates(base, [
        (replace_line(TRAIN, 2, "WIN"), candidate_branch("t", "c0001"), "win"),
        (replace_line(TRAIN, 20, "A"), candidate_branch("t", "c0002"), "a"),
        (replace_line(TRAIN, 2, "CLASH"), candidate_branch("t", "c0003"), "clash")])
    assert farm.advance_main_line("t", base, win.sha)
    count_git()
    out = farm.rebase_candidate(a.sha, win.sha, candidate_branch("t", "c0002"))
    assert out.status is RebaseStatus.REBASED and len(count_git()) <= 3, "merge-file, worktree, update-ref"
    assert farm.rebase_candidate(b.sha, win.sha, candidate_branch("t", "c0003")).status is RebaseStatus.CONFLICT
    assert snapshot(target) == before


def test_a_mix_with_an_llm_share_gets_the_research_program_even_when_its_kind_is_mutate(tmp_path):
    from contextlib import ExitStack

    from cluster.config import FarmConfig
    from cluster.launch import RunContext, _proposer_inputs, open_repo
    from tests.farmkit import git, make_repo

    target = make_repo(tmp_path / "t")
    (target / "program.md").write_text("# the program\n")
    git(target, "add", "program.md")
    git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "program")
    cfg = FarmConfig().with_overrides({"run.repo": str(target), "proposer.mix": {"mutate": 0.5, "llm": 0.5}})
    with ExitStack() as stack:
        ctx = RunContext(cfg, "t", open_repo(cfg, stack), None, tmp_path, "", target)
        program, files = _proposer_inputs(cfg, ctx, lambda line: None)
        alone = _proposer_inputs(cfg.with_overrides({"proposer.mix": {}}), ctx, lambda line: None)
    assert program == "# the program\n" and "prepare.py" in files
    assert alone == ("", {})  # the offline search alone reads neither
