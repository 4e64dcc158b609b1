"""The Ray Jobs client: run the farm on a remote Ray cluster, and bring its results home with only the address.

Why this shape (docs/CLUSTER.md has the whole story): a Ray job's working_dir is a throw-away copy
and a job's processes die with it, but a run must outlive its job and stay readable from the
user's clone. So the durable state lives on the head, outside any job, under the head's home
(`head_home`, default `~/autoresearch-farm`; its layout is in cluster/remote/protocol.py), which
every job is told on its command line (`--home`).

`submit_run` ships the repository's committed HEAD (`git archive`, no .git, nothing ignored or
uncommitted) plus a git bundle of HEAD as the job's working_dir; the job fetches the bundle into
the bare repository, adds the worktree and runs `autoresearch-farm run` there against the head's
Redis. `job_status`, `list_runs`, `follow_logs` and `stop_job` watch and stop it. Every later look
is another small job on the same head: `remote_cli` runs `status`, `results` or `submit` there and
returns their output; `pull` has the head bundle the run's branches and fetches them into the
local repository. All of it goes through the Jobs API (the dashboard port), so `ray dashboard
ray_cluster.yaml` (or any forward of port 8265) is all a user needs.

The cluster-side half is `cluster/head.py` (`python -m cluster.head {run,query,bundle,head-redis}`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from cluster.errors import FarmError
from cluster.repo.branches import MAIN_PREFIX
from cluster.remote.protocol import (DEFAULT_HOME, META, QUERY_COMMANDS, SUBMIT_DIR, checked_name, flag_value, git,
                                     parse_payload)

log = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def resolve_address(address: str | None = None) -> str:
    """The Jobs API address: the argument, else RAY_ADDRESS; `host:port` gets http://."""
    address = (address or os.environ.get("RAY_ADDRESS", "")).strip().rstrip("/")
    if not address:
        raise FarmError("no cluster address: pass --address http://127.0.0.1:8265 (forward it with "
                        "`ray dashboard ray_cluster.yaml`) or set RAY_ADDRESS")
    if address.startswith("ray://") or address == "auto":
        raise FarmError(f"{address} is not a Jobs API address; use the dashboard's http://HOST:8265")
    return address if "://" in address else "http://" + address


def auth_headers(token: str | None = None) -> dict[str, str]:
    """Ray token auth (RAY_AUTH_MODE=token clusters): an explicit token, else RAY_AUTH_TOKEN, else the
    file in RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. Harmless for a cluster without auth."""
    if token is None and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled":
        token = os.environ.get("RAY_AUTH_TOKEN")
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
        if not token and path.is_file():
            token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None = None, token: str | None = None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url, headers=auth_headers(token))
    except Exception as e:  # ConnectionError, or RuntimeError from an auth failure
        raise FarmError(f"cannot reach the Ray Jobs API at {url}: {e}. Is the cluster up and its dashboard "
                        f"forwarded (`ray dashboard ray_cluster.yaml`)? With token auth, pass the head's token.") from None


def repo_id(repo: Path | str) -> str:
    """A project's name on the head: its (first) root commit, shared by every clone of it."""
    roots = git(repo, "rev-list", "--max-parents=0", "HEAD").split()
    if not roots:
        raise FarmError(f"{repo} has no commits; commit train.py first")
    return sorted(roots)[0][:12]


@contextlib.contextmanager
def package(repo: Path | str, *, bundle: bool, files: dict[str, str] | None = None) -> Iterator[tuple[Path, str]]:
    """A temporary working_dir: the committed tree of HEAD, plus (for a run) a bundle of HEAD, plus
    `files` (name -> text) under .farm-submit/ (e.g. a patch for a remote `submit --patch`)."""
    repo = Path(repo).resolve()
    head = git(repo, "rev-parse", "HEAD")
    if git(repo, "status", "--porcelain", "--untracked-files=no"):
        log.warning("uncommitted changes in %s are not shipped: the cluster gets HEAD %s", repo, head[:8])
    with tempfile.TemporaryDirectory(prefix="arf-submit-") as tmp:
        stage = Path(tmp) / "repo"
        stage.mkdir()
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=repo, capture_output=True)
        if archive.returncode:
            raise FarmError(f"git archive failed in {repo}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(stage)], input=archive.stdout, check=True)
        (stage / SUBMIT_DIR).mkdir(exist_ok=True)
        if bundle:
            git(repo, "bundle", "create", "-q", str(stage / SUBMIT_DIR / "head.bundle"), "HEAD")
        for name, text in (files or {}).items():
            (stage / SUBMIT_DIR / checked_name("file name", name)).write_text(text)
        yield stage, head


def submit_entrypoint(address: str | None, repo: Path | str, entrypoint: str, *, kind: str,
                      token: str | None = None, metadata: dict[str, str] | None = None, bundle: bool = False,
                      submission_id: str | None = None, files: dict[str, str] | None = None) -> str:
    """Submit `entrypoint` with `repo`'s committed HEAD as its working_dir; returns the job id."""
    jc = client(address, token)
    with package(repo, bundle=bundle, files=files) as (stage, head), _env("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1"):
        # the stage is exactly the commit: a .gitignore in it must not drop committed files or the bundle
        meta = {f"{META}_kind": kind, f"{META}_repo": repo_id(repo), f"{META}_head": head, **(metadata or {})}
        return jc.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(stage)}, metadata=meta,
                             submission_id=submission_id)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _helper(args: list[str]) -> str:
    return shlex.join(["python", "-m", "cluster.head", *args])


def submit_run(address: str | None, repo: Path | str, run_args: list[str], *, tag: str | None = None,
               token: str | None = None, head_home: str = DEFAULT_HOME) -> tuple[str, str, str]:
    """Submit `autoresearch-farm run <run_args>` on the cluster for `repo`'s HEAD, its durable state under
    `head_home` on the head. Returns (job_id, tag, dashboard_url). The tag is fixed here (default: today's
    date, as `run`)."""
    for bad in ("--repo", "--ray-address"):
        if flag_value(run_args, bad) is not None:
            raise FarmError(f"{bad} makes no sense for a cluster run: the job researches the HEAD of the repository "
                            f"it is submitted from, on the cluster it is submitted to; drop {bad}")
    given = flag_value(run_args, "--tag")
    if given and tag and given != tag:
        raise FarmError(f"two tags given ({tag!r} and --tag {given!r}); pass one")
    if not (tag or given):
        from cluster.launch import default_tag

        tag = default_tag()
    tag = checked_name("tag", tag or given)
    args = [a for i, a in enumerate(run_args) if not (a == "--tag" or a.startswith("--tag=")
                                                      or (i and run_args[i - 1] == "--tag"))]
    live = [r["job_id"] for r in list_runs(address, tag, token) if r["status"] in ("PENDING", "RUNNING")]
    if live:
        raise FarmError(f"run {tag} is still running as job {live[0]}; stop it first (`stop {live[0]}`) "
                        f"or choose another --tag")
    entry = ["run", "--repo-id", repo_id(repo), "--tag", tag, "--home", head_home, "--", *args]
    job_id = submit_entrypoint(address, repo, _helper(entry), kind="run", token=token, metadata={f"{META}_tag": tag},
                               bundle=True, submission_id=f"arf-{tag}-{secrets.token_hex(3)}")
    return job_id, tag, f"{resolve_address(address)}/#/jobs/{job_id}"


def _describe(info: Any) -> dict[str, Any]:
    meta = info.metadata or {}
    return {"job_id": info.submission_id, "status": str(getattr(info.status, "value", info.status)),
            "message": info.message, "tag": meta.get(f"{META}_tag"), "kind": meta.get(f"{META}_kind"),
            "head": meta.get(f"{META}_head"), "entrypoint": info.entrypoint,
            "start_time": (info.start_time or 0) / 1000 or None, "end_time": (info.end_time or 0) / 1000 or None}


def job_status(address: str | None, job_id: str, token: str | None = None) -> dict[str, Any]:
    """The job as a dict: status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), message, tag, times."""
    return _describe(client(address, token).get_job_info(job_id))


def list_runs(address: str | None, tag: str | None = None, token: str | None = None) -> list[dict[str, Any]]:
    """The farm runs submitted to the cluster (optionally of one tag), newest first."""
    runs = [_describe(j) for j in client(address, token).list_jobs()]
    runs = [r for r in runs if r["kind"] == "run" and r["job_id"] and (tag is None or r["tag"] == tag)]
    return sorted(runs, key=lambda r: r["start_time"] or 0, reverse=True)


def resolve_job(address: str | None, job_or_tag: str, token: str | None = None) -> str:
    """A submission id as given, or the newest run job of the tag `job_or_tag`."""
    runs = list_runs(address, None, token)
    if any(r["job_id"] == job_or_tag for r in runs):
        return job_or_tag
    for r in runs:
        if r["tag"] == job_or_tag:
            return r["job_id"]
    known = ", ".join(f"{r['job_id']} ({r['tag']}, {r['status']})" for r in runs[:10]) or "none"
    raise FarmError(f"no farm job or run tag {job_or_tag!r} on the cluster; runs: {known}")


def follow_logs(address: str | None, job_id: str, write: Callable[[str], Any] | None = None,
                token: str | None = None) -> str:
    """Stream the job's log (from its start) to `write` (default: stdout) until the job ends, through
    Ray's async websocket tail; returns the final status. Ctrl-C stops following, not the job."""
    jc, write = client(address, token), write or sys.stdout.write

    async def pump() -> None:
        async for chunk in jc.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(pump())
    return wait_job(jc, job_id, 30.0)


def stop_job(address: str | None, job_id: str, token: str | None = None, wait_s: float = 120.0) -> str:
    """Stop the job (SIGTERM: the farm re-queues its running candidates, then exits) and wait for it
    to end; returns the final status. A run launched again with `--resume` continues."""
    jc = client(address, token)
    jc.stop_job(job_id)
    return wait_job(jc, job_id, wait_s)


def wait_job(jc: Any, job_id: str, timeout_s: float) -> str:
    """Poll the job through the client `jc` until it ends or `timeout_s` passes; returns its last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(getattr(jc.get_job_status(job_id), "value", ""))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


def _call(address: str | None, repo: Path | str, entry: list[str], token: str | None, timeout_s: float,
          files: dict[str, str] | None = None) -> Any:
    """Run a cluster-side helper as a short job and return the payload it printed."""
    jc = client(address, token)
    job_id = submit_entrypoint(address, repo, _helper(entry), kind="query", token=token, files=files)
    status = wait_job(jc, job_id, timeout_s)
    logs = jc.get_job_logs(job_id)
    if status not in TERMINAL:
        jc.stop_job(job_id)
        raise FarmError(f"the cluster-side `{entry[0]}` (job {job_id}) did not finish in {timeout_s:.0f}s")
    with contextlib.suppress(Exception):
        jc.delete_job(job_id)  # keep the dashboard's job list to the runs
    payload = parse_payload(logs)
    if payload is None:
        raise FarmError(f"the cluster-side `{entry[0]}` (job {job_id}) ended {status} without an answer; "
                        f"its log:\n{logs[-3000:]}")
    if "error" in payload:
        raise FarmError(payload["error"])
    return payload


def _opt(name: str, value: str | None) -> list[str]:
    return [name, value] if value else []


def remote_cli(address: str | None, repo: Path | str, argv: list[str], *, tag: str | None = None,
               token: str | None = None, head_home: str = DEFAULT_HOME, files: dict[str, str] | None = None,
               timeout_s: float = 180.0) -> tuple[int, str, str]:
    """Run `autoresearch-farm <status|results|submit> <args>` on the head against the run `tag` (default:
    the newest submitted) and return (exit code, stdout, stderr), e.g. argv=["results", "--format", "json"].
    `files` ship along under .farm-submit/: argv=["submit", "--patch", ".farm-submit/p.diff"],
    files={"p.diff": text} sends a local patch."""
    if not argv or argv[0] not in QUERY_COMMANDS:
        raise FarmError(f"only {', '.join(QUERY_COMMANDS)} run on the cluster this way, not {argv[:1]}")
    entry = ["query", "--repo-id", repo_id(repo), *_opt("--tag", tag), "--home", head_home, "--", *argv]
    p = _call(address, repo, entry, token, timeout_s, files)
    return p["rc"], p["stdout"], p["stderr"]


def pull(address: str | None, repo: Path | str, tag: str | None = None, *, token: str | None = None,
         head_home: str = DEFAULT_HOME, force: bool = False, timeout_s: float = 300.0) -> dict[str, str]:
    """Fetch the run's main line `autoresearch/<tag>` and candidate branches `candidates/<tag>/*` from the
    head into `repo`. Candidate branches are the farm's (rebases move them); the main line only moves
    forward unless `force`. Returns {branch: sha} of what changed."""
    repo = Path(repo).resolve()
    haves = [git(repo, "rev-parse", "HEAD")] + git(repo, "for-each-ref", "--count=50", "--format=%(objectname)",
                                                   f"refs/heads/{MAIN_PREFIX}/").split()
    base = ["bundle", "--repo-id", repo_id(repo), *_opt("--tag", tag), "--home", head_home]
    p = _call(address, repo, base + ["--have", ",".join(dict.fromkeys(haves))], token, timeout_s)
    if p["bundle"] and not _unbundle(repo, p["bundle"]):
        p = _call(address, repo, base, token, timeout_s)  # a prerequisite is missing here: take it all
        if p["bundle"] and not _unbundle(repo, p["bundle"]):
            raise FarmError(f"could not read the bundle of run {p['tag']} into {repo}")
    current = git(repo, "symbolic-ref", "-q", "HEAD", check=False)
    changed: dict[str, str] = {}
    updates = []
    for name, sha in sorted(p["refs"].items()):
        ref = "refs/heads/" + name
        old = git(repo, "rev-parse", "-q", "--verify", ref, check=False)
        if old == sha:
            continue
        if ref == current:
            log.warning("%s is checked out here: not moving it to %s; `git merge --ff-only %s`", name, sha[:8], sha)
            continue
        is_ff = not old or subprocess.run(["git", "merge-base", "--is-ancestor", old, sha], cwd=repo).returncode == 0
        if name.startswith(f"{MAIN_PREFIX}/") and not is_ff and not force:
            raise FarmError(f"local {name} ({old[:8]}) is not an ancestor of the cluster's ({sha[:8]}): another "
                            f"run used this tag here. Rename or delete the local branch, or pull with force")
        updates.append(f"update {ref} {sha}\n")
        changed[name] = sha
    if updates:
        subprocess.run(["git", "update-ref", "--stdin"], cwd=repo, input="".join(updates), text=True, check=True)
    log.info("pulled run %s: %d branch(es) updated", p["tag"], len(changed))
    return changed


def _unbundle(repo: Path, data_b64: str) -> bool:
    with tempfile.NamedTemporaryFile(suffix=".bundle") as f:
        f.write(base64.b64decode(data_b64))
        f.flush()
        if subprocess.run(["git", "bundle", "verify", "-q", f.name], cwd=repo, capture_output=True).returncode:
            return False
        return subprocess.run(["git", "bundle", "unbundle", f.name], cwd=repo, capture_output=True).returncode == 0
