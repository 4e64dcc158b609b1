"""The farm's configuration: one frozen dataclass per TOML section, loaded once, overridden by flags.

`configs/default.toml` spells out every default (a test keeps it equal to these dataclasses), so
the file a user copies is the reference. Unknown keys and values of the wrong type are refused
with a message that names the key. Nothing else in the farm reads an environment knob of its
own; what is read from the environment is named where it is declared: Ray's own variables
(`RAY_ADDRESS`, `RAY_AUTH_*`), the API key named by `proposer.api_key_env`, and the harness's
cache location behind `train.cache_dir = ""`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from cluster.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    repo: str = "."  # the git repository researched (its train.py); never its working tree
    tag: str = ""  # run name; "" = today's date, e.g. nov25
    editable: str = "train.py"  # the one file candidates may change
    frozen: tuple[str, ...] = ("prepare.py",)  # files a candidate must not touch (hash-checked)
    max_experiments: int = 0  # stop once this many candidates have a final result; 0 = no limit
    hours: float = 0.0  # stop after this many hours; 0 = no limit
    run_dir: str = ""  # "" = <repo's .git>/autoresearch-farm/runs/<tag>


@dataclass(frozen=True)
class TrainConfig:
    command: tuple[str, ...] = ("python", "train.py")  # run in the candidate's tree
    prepare_command: tuple[str, ...] = ("python", "prepare.py")  # once per worker; () = none
    harness: str = "auto"  # auto (read from prepare.py by the pre-flight) | farm (this project's) | upstream
    # (karpathy/autoresearch's shape: a TIME_BUDGET constant, training at import); a run records it resolved
    budget: float = 60.0  # training seconds per experiment (AUTORESEARCH_TIME_BUDGET); 300 on GPUs; an upstream-style
    # harness's TIME_BUDGET constant governs instead (the pre-flight refuses a budget that disagrees)
    grace: float = 90.0  # extra wall-clock seconds for start-up and evaluation before a kill
    cache_dir: str = ""  # AUTORESEARCH_CACHE for prepare and train; "" = on each node, the worker's
    # $AUTORESEARCH_CACHE, else $XDG_CACHE_HOME/autoresearch-farm, else ~/.cache/autoresearch-farm (prepare.py's
    # default); an upstream-style harness: its own CACHE_DIR (~/.cache/autoresearch), moved here when set
    isolate_network: bool = True  # run candidates without network where the OS allows it
    trusted_eval: bool = True  # val_bpb comes from the worker's own evaluation process (docs/TRUST.md)
    disk_quota_gb: float = 20.0  # a run whose directory grows past this is killed (crash); 0 = none
    env: dict[str, str] = field(default_factory=dict)  # extra AUTORESEARCH_* knobs for every run
    visible: tuple[str, ...] = ()  # more host paths a run may read (a conda prefix, a data mount); it sees
    # nothing else of the host but the system, the interpreter, the data cache and its own directory
    accept_missing: tuple[str, ...] = ()  # containment layers this farm may run without ("view",
    # "unprivileged"); where one cannot be had, the pre-flight refuses to start unless it is named here


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 0  # 0 = one per GPU in the cluster; without GPUs, one CPU worker per cpus_per_worker cores (at most 4)
    gpus_per_worker: float = 1.0  # 0 = CPU workers
    cpus_per_worker: float = 1.0  # also the thread count a CPU worker's training uses
    price_per_gpu_hour: float = 0.0  # USD, for cost accounting (per experiment, per merged improvement)
    max_lost: int = 3  # attempts lost with their worker before a candidate is failed as poison
    lease_slack: float = 60.0  # a worker silent this long past budget + grace loses its job to the queue
    heartbeat_seconds: float = 5.0  # how often the controller pings each worker
    silent_after: float = 60.0  # a running worker that answers no ping this long loses its job to the queue


@dataclass(frozen=True)
class StoreConfig:
    redis: str = ""  # "" = an embedded redis-server next to the run; else redis:// or unix://
    prefix: str = "arf"  # key prefix; a run's keys live under <prefix>:<tag>:
    appendfsync: str = "everysec"  # embedded server's AOF policy: always | everysec


@dataclass(frozen=True)
class JudgeSettings:
    baseline_runs: int = 3  # measurements of the baseline, for the noise floor
    confirm: bool = True  # re-measure an apparent winner before it merges
    noise_k: float = 2.0  # a win must beat noise_k standard errors
    default_noise: float = 0.002  # val_bpb std assumed before it is measured (seed noise)
    min_noise: float = 0.0005  # floor under the measured std
    bpb_per_line: float = 0.0001  # gain each net added line must pay for ("simpler is better")
    simplify_merges: bool = True  # merge a deletion that is within the noise
    max_vram_mb: float = 0.0  # soft cap on peak VRAM; 0 = none
    max_overtime: float = 0.2  # training that outlasts the main line's by this fraction (and 5 s) is a cheat; 0 = off
    noise_prior_df: float = 4.0  # weight (degrees of freedom) of default_noise in the pooled noise estimate
    # early cut (cluster/loop/cut.py): off, because no rule met the bar when measured (docs/BENCHMARKS.md,
    # "Early cut (loss curves)"), and not enforced by the workers yet, so `true` is refused
    early_cut: bool = False  # stop a run whose training loss at early_cut_progress is clearly above the main line's
    early_cut_progress: float = 0.2  # the checkpoint: the fraction of the training budget spent
    early_cut_threshold: float = 0.02  # cut above the main line's mean loss there * (1 + this)


@dataclass(frozen=True)
class SearchSettings:
    """How many workers shorten the path of a merge (cluster/loop/plan.py; docs/BENCHMARKS.md measures each)."""

    combine: bool = True  # winners of one judging pass are also measured combined; the combination merges if best
    combine_max: int = 4  # winners combined into one candidate at most
    near_miss: float = 0.5  # a discarded candidate that beat the line by this share of its margin may be combined
    speculate: bool = True  # while a winner is confirmed, new candidates run on top of it (the frontier)
    early_line_runs: bool = True  # a winner's own main-line runs start beside its confirmation, not after its merge
    preempt_seconds: float = 30.0  # a first look younger than this gives its worker to a waiting confirmation or
    # line run, or to the frontier when the work moved on (it goes back to the queue; 0 = never)
    min_workers: int = 4  # speculation, early line runs and preemption only from this many workers on


@dataclass(frozen=True)
class ProposerSettings:
    kind: str = "mutate"  # mutate (offline search) | llm (OpenAI-compatible API) | agent (coding-agent CLI)
    mix: dict[str, float] = field(default_factory=dict)  # e.g. {llm = 0.7, mutate = 0.3}; {} = kind alone
    queue_margin: int = 2  # pending candidates kept beyond one per worker
    # the offline search (also the fallback of llm and agent)
    seed: int = 0  # offline search seed
    profile: str = "auto"  # which constants the offline search mutates: auto | gpu | cpu
    exclude: tuple[str, ...] = ("SEED",)  # constants never mutated (fnmatch patterns)
    two_change_prob: float = 0.2  # chance that one proposal changes two constants
    # llm and agent
    program: str = "program.md"  # the research program, a file of the target repository
    fallback: str = "mutate"  # who keeps the workers fed when the LLM or agent cannot: mutate | ""
    fallback_cooldown: float = 60.0  # seconds before a failing primary is asked again
    concurrency: int = 4  # requests (or agent runs) in flight at once
    crash_repair: bool = True  # a crashed LLM/agent candidate gets one fix attempt from its log tail
    history_limit: int = 20  # recent outcomes shown to the model
    # llm
    base_url: str = "https://api.openai.com/v1"  # any OpenAI-compatible server (vLLM, Ollama, OpenRouter ...)
    model: str = "gpt-4.1"
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key
    temperature: float = 0.8
    max_tokens: int = 16384
    request_timeout: float = 600.0  # seconds per request
    max_retries: int = 4  # retries of timeouts, 429 and 5xx, with exponential backoff
    backoff: float = 2.0  # first retry delay in seconds (doubles)
    price_per_mtok_in: float = 0.0  # USD per million prompt tokens, for cost accounting
    price_per_mtok_out: float = 0.0  # USD per million completion tokens
    # agent (model, base_url, api_key_env and the prices above reach it too)
    agent: str = "opencode"  # opencode | codex | claude (presets: command, env, generated config) | custom
    agent_command: tuple[str, ...] = ()  # () = the preset's command; else this template ({prompt}, {prompt_file},
    # {workdir}, {model}); with agent = "custom" the only thing run
    agent_env: dict[str, str] = field(default_factory=dict)  # extra environment for the agent (never for training)
    agent_timeout: float = 1800.0  # seconds before an agent run is killed
    agent_files: tuple[str, ...] = ("prepare.py",)  # files copied next to train.py for the agent to read


@dataclass(frozen=True)
class FarmConfig:
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    proposer: ProposerSettings = field(default_factory=ProposerSettings)

    def with_overrides(self, overrides: dict[str, Any]) -> "FarmConfig":
        """Apply {"section.key": value} (from CLI flags); None values are skipped."""
        cfg = self
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            sub = getattr(cfg, section)
            cfg = replace(cfg, **{section: replace(sub, **{key: _coerce(f"{dotted}", _hint(type(sub), key), value)})})
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "store.appendfsync": ("always", "everysec"),
    "train.harness": ("auto", "farm", "upstream"),
    "proposer.kind": ("mutate", "llm", "agent"),
    "proposer.agent": ("opencode", "codex", "claude", "custom"),
    "proposer.fallback": ("mutate", ""),
    "proposer.profile": ("auto", "gpu", "cpu"),
}
_NON_NEGATIVE = {"run.max_experiments", "run.hours", "train.grace", "workers.count", "workers.gpus_per_worker",
                 "judge.bpb_per_line", "judge.max_vram_mb", "proposer.queue_margin", "judge.min_noise",
                 "proposer.fallback_cooldown", "proposer.history_limit", "proposer.temperature",
                 "proposer.max_retries", "proposer.backoff", "proposer.price_per_mtok_in",
                 "proposer.price_per_mtok_out", "workers.price_per_gpu_hour", "train.disk_quota_gb",
                 "judge.max_overtime", "search.combine_max", "search.min_workers", "search.near_miss",
                 "search.preempt_seconds"}
_POSITIVE = {"train.budget", "workers.cpus_per_worker", "workers.max_lost", "workers.lease_slack",
             "workers.heartbeat_seconds", "workers.silent_after",
             "judge.baseline_runs", "judge.noise_k", "judge.default_noise", "proposer.concurrency",
             "proposer.max_tokens", "proposer.request_timeout", "proposer.agent_timeout"}


def _hint(cls: type, key: str) -> Any:
    hints = get_type_hints(cls)
    if key not in hints:
        known = ", ".join(f.name for f in fields(cls))
        raise ConfigError(f"unknown key {key!r} (known keys: {known})")
    return hints[key]


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Check one value against its field type; ints become floats where a float is wanted."""
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        value = tuple(value)
    elif origin is dict:
        kind = get_args(hint)[1]
        if kind is float:
            ok = isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                                 for v in value.values())
            if not ok:
                raise ConfigError(f"{name} must be a table of non-negative numbers, got {value!r}")
            value = {str(k): float(v) for k, v in value.items()}
        else:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f"{name} must be a table of strings, got {value!r}")
            value = dict(value)
    elif hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    else:  # pragma: no cover - every field above has one of these types
        raise ConfigError(f"{name}: unsupported type {hint} {get_args(hint)}")
    if name == "proposer.mix" and not set(value) <= set(_CHOICES["proposer.kind"]):
        raise ConfigError(f"{name} keys must be proposer kinds ({', '.join(_CHOICES['proposer.kind'])}), "
                          f"got {', '.join(sorted(value))}")
    if name == "judge.early_cut" and value:
        raise ConfigError(f"{name} cannot be switched on yet: the workers do not enforce it, and no rule met the "
                          "bar when measured (docs/BENCHMARKS.md, \"Early cut (loss curves)\")")
    if name == "judge.early_cut_progress" and not 0 < value < 1:
        raise ConfigError(f"{name} must be between 0 and 1 (a fraction of the budget), got {value!r}")
    if name == "judge.early_cut_threshold" and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"{name} must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    if name in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    if name in _POSITIVE and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return value


def from_dict(data: dict[str, Any], base: FarmConfig | None = None) -> FarmConfig:
    cfg = base or FarmConfig()
    sections = {f.name for f in fields(FarmConfig)}
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(f"unknown section [{section}] (known sections: {', '.join(sorted(sections))})")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        sub = getattr(cfg, section)
        values = {}
        for key, value in table.items():
            try:
                hint = _hint(type(sub), key)
            except ConfigError as e:
                raise ConfigError(f"[{section}] {e}") from None
            values[key] = _coerce(f"{section}.{key}", hint, value)
        cfg = replace(cfg, **{section: replace(sub, **values)})
    return cfg


def load(path: str | Path | None, base: FarmConfig | None = None) -> FarmConfig:
    """The defaults (or `base`), overlaid with a TOML file if one is given."""
    if path is None:
        return base or FarmConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found (the shipped ones are in configs/)")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    try:
        return from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
