"""The pre-flight: before any worker starts, read the target and say what the farm found in it.

`run` (after Ray is up, before the workers start) and `check` (without Ray) call :func:`preflight`.
It reads the harness from the commit the run starts at (never the working tree) with
:func:`worker.harness.read_harness`, and checks what would otherwise fail on every worker, minutes
later and once per GPU: the harness's shape, the budget, the training command, CUDA, the imports,
the prepared data. Every refusal is collected, so one attempt lists all of them, each naming what
to change; a run the pre-flight refuses records nothing (the caller raises before the run exists).

What it settles for the run: `train.harness` ("auto" resolved to "farm" or "upstream", so a
worker is never told "auto") and, for an upstream harness, `train.budget` (its frozen constant
governs; the deadline is that budget + train.grace). A target of neither shape is still run the
farm's way when `train.trusted_eval = false`: the farm then only runs `train.command` and reads the
summary it prints, with the budget in AUTORESEARCH_TIME_BUDGET and the deadline as the backstop.
Trusted evaluation needs a harness it can score, so there the unknown shape is refused.

The checks of this interpreter (the imports, the data in the cache, the Python version) are of the
machine the farm is started on; on a cluster every node needs the same.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cluster.config import FarmConfig, TrainConfig
from cluster.errors import ConfigError, RepoError, containment_refusal
from cluster.repo import FarmRepo
from worker import tripwire
from worker.harness import FARM, UNKNOWN, UPSTREAM, HarnessInfo, read_harness
from worker.sandbox import RUN_UID, view_support
from worker.sandbox.view import CONTAINMENT

TRUST_FARM = "trusted-eval"
TRUST_UPSTREAM = ("trusted-eval (the model is exported at evaluate_bpb and scored in a separate process), "
                  "validation shard hidden, cache read-only, tripwire")
TRUST_PRINTED = "printed metric, cache read-only, tripwire"
PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "cv2": "opencv-python",
             "bs4": "beautifulsoup4", "google": "protobuf"}  # modules whose distribution is named otherwise
MIN_SHARDS = 2  # an upstream cache: at least one training shard and the validation shard


class PreflightRefused(ConfigError):
    """The pre-flight's refusals, all of them; `lines` is what it found, as printed."""

    def __init__(self, refusals: list[str], lines: list[str]):
        self.refusals, self.lines = list(refusals), list(lines)
        super().__init__("the pre-flight refuses this run:\n" + "\n".join(f"  - {r}" for r in refusals))


@dataclass(frozen=True)
class Preflight:
    cfg: FarmConfig  # the configuration the run uses: train.harness resolved, an upstream budget set
    harness: HarnessInfo
    trust: str
    lines: tuple[str, ...]  # what was printed
    seeds_itself: bool

    def meta(self) -> dict[str, Any]:
        """What the run records about its target (run meta "harness"; `status` prints the trust)."""
        h = self.harness
        return {"kind": self.cfg.train.harness, "read_as": h.kind, "budget": self.cfg.train.budget,
                "budget_source": h.budget_source or "train.budget", "deadline": self.cfg.train.budget + self.cfg.train.grace,
                "trust": self.trust, "needs_cuda": h.needs_cuda, "kernels": list(h.kernels), "imports": list(h.imports),
                "seeding": "itself" if self.seeds_itself else "farm"}


def read_target(repo: FarmRepo, commit: str, editable: str, frozen: tuple[str, ...]) -> dict[str, str]:
    """The target's file names at `commit`, with the text of its editable and frozen Python files
    (the other names only tell the repository's own modules from installed ones)."""
    out = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", commit], cwd=repo.path,
                         capture_output=True, check=False)
    files = {p: "" for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p}
    for path in (editable, *frozen):
        if path.endswith(".py") and (path in files or out.returncode):
            try:
                files[path] = repo.read_file(commit, path)
            except RepoError:  # absent or not text: read_harness says what is missing
                files.pop(path, None)
    if ".python-version" in files:
        try:
            files[".python-version"] = repo.read_file(commit, ".python-version")
        except RepoError:
            pass
    return files


def preflight(cfg: FarmConfig, repo: FarmRepo, gpus: float | None, *, commit: str = "HEAD",
              report: Callable[[str], None] = print) -> Preflight:
    """Read the target at `commit` and check it against `cfg` and a cluster of `gpus` GPUs (None: not
    known here). Prints each finding through `report` as it goes; raises :class:`PreflightRefused`
    with every refusal, else returns the resolved configuration and the findings."""
    sha = repo.resolve(commit)
    editable, frozen = cfg.run.editable, tuple(cfg.run.frozen)
    files = read_target(repo, sha, editable, frozen)
    h = read_harness(files, editable=editable, frozen=frozen)
    lines: list[str] = []
    refusals: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        report(line)

    say(f"pre-flight of {repo.path} at {sha[:8]} ({editable} editable; {', '.join(frozen) or 'nothing'} frozen)")
    kind = _kind(cfg, h, refusals, say)
    budget = _budget(cfg, h, kind, refusals, say)
    if kind == UPSTREAM and tuple(cfg.train.command) not in (("python", editable), ("python3", editable)):
        refusals.append(f"train.command is {list(cfg.train.command)}: an upstream harness runs through the farm's "
                        f"launcher, which starts {editable} itself; set train.command = [\"python\", \"{editable}\"]")
    _cuda(cfg, h, gpus, refusals, say)
    _imports(h, refusals, say)
    if h.kernels:  # a guarded `kernels` import is optional: the code runs without the hub's kernels
        say(f"  kernels: {', '.join(h.kernels)} (get_kernel: "
            + ("fetched at prepare time, before runs lose the network)" if "kernels" in h.imports else
               "its import is guarded, so runs go on without them)"))
    _data(cfg, h, kind, say)
    seeds_itself = not tripwire.uses_farm_seed(files.get(editable, ""))
    if seeds_itself:
        say(f"  seeding: {editable} seeds itself: repeats of one commit are one draw (the noise floor stays the "
            "prior judge.default_noise)")
    else:
        say("  seeding: from the farm (prepare.seed() / AUTORESEARCH_SEED): each repeat of a commit is a new draw")
    trust = TRUST_PRINTED if not cfg.train.trusted_eval else TRUST_UPSTREAM if kind == UPSTREAM else TRUST_FARM
    trust += f"; {_containment(cfg, refusals)}"
    say(f"  trust: {trust}" + ("" if cfg.train.trusted_eval else " (validation cannot be hidden: the run scores itself)"))
    _python_version(files.get(".python-version", ""), say)
    if refusals:
        raise PreflightRefused(refusals, lines)
    resolved = cfg.with_overrides({"train.harness": kind, "train.budget": budget})
    return Preflight(resolved, h, trust, tuple(lines), seeds_itself)


def _kind(cfg: FarmConfig, h: HarnessInfo, refusals: list[str], say: Callable[[str], None]) -> str:
    """The harness the run uses: what was read, checked against train.harness."""
    want = cfg.train.harness
    if h.kind == UNKNOWN:
        if want == UPSTREAM or cfg.train.trusted_eval:
            why = ("train.harness = \"upstream\"" if want == UPSTREAM else "trusted evaluation (train.trusted_eval)")
            say(f"  harness: not recognised ({why} needs the farm's or karpathy/autoresearch's shape)")
            refusals.extend(h.problems)
            return UNKNOWN
        say(f"  harness: not recognised ({'; '.join(h.problems)}); with train.trusted_eval = false the farm runs "
            f"train.command as it is and reads the summary it prints: the budget goes in through "
            f"AUTORESEARCH_TIME_BUDGET, which {h.editable} has to honour (a run is killed at budget + train.grace)")
        return FARM
    if want not in ("auto", h.kind):
        refusals.append(f"train.harness = \"{want}\", but {h.harness_file} reads as the {h.kind} harness "
                        f"({h.budget_source}): set train.harness = \"{h.kind}\" (or \"auto\")")
    if h.kind == UPSTREAM:
        say(f"  harness: upstream, karpathy/autoresearch's shape ({h.harness_file} fixes TIME_BUDGET and has "
            f"evaluate_bpb; {h.editable} trains at import), run unchanged through the farm's launcher")
    else:
        say(f"  harness: the farm's own ({h.harness_file} reads AUTORESEARCH_TIME_BUDGET and has evaluate_bpb; "
            f"{h.editable} defines build_model)")
    return h.kind


def _budget(cfg: FarmConfig, h: HarnessInfo, kind: str, refusals: list[str], say: Callable[[str], None]) -> float:
    """The training seconds per run; an upstream constant governs, and a conflicting train.budget is refused."""
    grace = cfg.train.grace
    if kind == UPSTREAM and h.budget is not None:
        if cfg.train.budget not in (TrainConfig().budget, h.budget):
            constant = h.budget_source.removeprefix("the constant ").partition(".")[2]
            refusals.append(f"{h.harness_file} fixes {constant} (frozen): drop --budget/train.budget (it asks for "
                            f"{cfg.train.budget:g}; a fork that wants another budget commits it in {h.harness_file} "
                            "before the run)")
        say(f"  budget: {h.budget:g} s per run, fixed by {h.budget_source} (frozen); a run is killed after "
            f"{h.budget + grace:g} s (budget + train.grace {grace:g} s)")
        return h.budget
    if kind == FARM:
        say(f"  budget: {cfg.train.budget:g} s per run (train.budget), handed over as AUTORESEARCH_TIME_BUDGET; "
            f"a run is killed after {cfg.train.budget + grace:g} s (budget + train.grace {grace:g} s)")
    return cfg.train.budget


def _cuda(cfg: FarmConfig, h: HarnessInfo, gpus: float | None, refusals: list[str], say: Callable[[str], None]) -> None:
    per = cfg.workers.gpus_per_worker
    usable = None if gpus is None else (gpus if per > 0 and gpus >= per else 0.0)
    if not h.needs_cuda:
        where = ("the cluster's GPUs are not known here" if usable is None else
                 f"the workers run on {usable:g} GPU(s)" if usable else "the workers run on the CPU")
        say(f"  CUDA: not required (or with a CPU fallback); {where}")
        return
    if usable is None:
        say(f"  CUDA: needed ({h.needs_cuda}); the cluster's GPUs are not known here (pass --gpus N or --ray-address)")
    elif usable:
        say(f"  CUDA: needed ({h.needs_cuda}); the workers have {usable:g} GPU(s)")
    else:
        if per <= 0:
            why = ("workers.gpus_per_worker = 0 makes every worker a CPU worker"
                   + (f" (the cluster has {gpus:g} GPUs)" if gpus else "")
                   + ": set workers.gpus_per_worker = 1 on a GPU cluster (`ray up ray_cluster.yaml`), or")
        elif gpus:
            why = f"the cluster has {gpus:g} GPU(s), fewer than workers.gpus_per_worker = {per:g}: lower it, or"
        else:
            why = "the cluster has no GPU: run it on a GPU cluster (`ray up ray_cluster.yaml`, then --ray-address), or"
        say(f"  CUDA: needed ({h.needs_cuda}); no GPU for the workers")
        refusals.append(f"{h.editable} needs CUDA ({h.needs_cuda}, with no torch.cuda.is_available() fallback) and "
                        f"{why} research a fork that runs on the CPU")


def _imports(h: HarnessInfo, refusals: list[str], say: Callable[[str], None]) -> None:
    missing = []
    for module in h.imports:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
            refusals.append(f"{h.imported_by(module)} imports {module}, which is not installed in {sys.executable}: "
                            f"pip install {PIP_NAMES.get(module, module)}")
    present = [m for m in h.imports if m not in missing]
    say(f"  imports: {', '.join(present) or 'none'} installed in {sys.executable}"
        + (f"; missing: {', '.join(missing)}" if missing else "") + " (every node needs them)")


def _data(cfg: FarmConfig, h: HarnessInfo, kind: str, say: Callable[[str], None]) -> None:
    prepare = " ".join(cfg.train.prepare_command)
    if kind != UPSTREAM:
        say(f"  data: each worker prepares it (`{prepare}`) before its first run" if prepare else
            "  data: train.prepare_command is empty: the prepared data must be on every node already")
        return
    cache = cfg.train.cache_dir or h.cache_default
    first = (f"each worker runs `{prepare}` first; it downloads, so the nodes need network for that step" if prepare
             else "train.prepare_command is empty: run `python prepare.py` on every node yourself")
    if not cache:
        say(f"  data: {h.harness_file}'s CACHE_DIR is not a literal path (set train.cache_dir to check it); {first}")
        return
    root = Path(cache).expanduser()
    shards = sorted((root / "data").glob("*.parquet")) if (root / "data").is_dir() else []
    tokenizer = (root / "tokenizer" / "tokenizer.pkl").is_file()
    if len(shards) >= MIN_SHARDS and tokenizer:
        say(f"  data: found in {cache} on this machine ({len(shards)} shards in data/, tokenizer/tokenizer.pkl)")
        return
    gaps = ([] if len(shards) >= MIN_SHARDS else [f"{len(shards)} of at least {MIN_SHARDS} parquet shards in data/"]) \
        + ([] if tokenizer else ["no tokenizer/tokenizer.pkl"])
    say(f"  data: missing in {cache} on this machine ({', '.join(gaps)}); {first}")


def _containment(cfg: FarmConfig, refusals: list[str]) -> str:
    """The containment runs get on this machine, in words; a layer it lacks that train.accept_missing
    does not name is refused, with what to do (docs/TRUST.md)."""
    s = view_support()
    missing = s.missing()
    unknown = sorted(set(cfg.train.accept_missing) - set(CONTAINMENT))
    if unknown:
        refusals.append(f"train.accept_missing names {', '.join(unknown)}: it may name {', '.join(CONTAINMENT)}")
    refused = containment_refusal(missing, cfg.train.accept_missing, s.why)
    if refused:
        refusals.append(refused)
    who = {"setpriv": f"as uid {RUN_UID}", "user": "as the worker's own user"}.get(s.identity or "", "as root")
    words = (f"containment: own filesystem view, own PIDs, {who}" if s.view else "containment: no private view")
    return words + (f" (accepted without {', '.join(missing)})" if missing and not refused else "")


def _python_version(text: str, say: Callable[[str], None]) -> None:
    m = re.search(r"\d+(?:\.\d+)*", text.strip().splitlines()[0] if text.strip() else "")
    mine = platform.python_version()
    if m and mine != m.group() and not mine.startswith(m.group() + "."):
        say(f"  note: .python-version asks for Python {m.group()}; the farm runs training with {sys.executable} "
            f"(Python {mine}); pyenv may switch `autoresearch-farm` itself inside that clone")
