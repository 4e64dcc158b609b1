"""Ray glue: connect to (or start) a cluster, and place the farm's actors on it.

Actors are named under the namespace `autoresearch-farm` so the Ray dashboard's actor list reads
as the farm: `<tag>:proposer` and one `<tag>:worker-<i>` per GPU (CPU workers where a machine has
none). Ray pins a worker declared with `num_gpus=1` to one GPU and sets its CUDA_VISIBLE_DEVICES;
workers restart after a crash (`max_restarts=-1`) while the controller re-queues what they ran.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import ray

from .config import FarmConfig
from .errors import FarmError

log = logging.getLogger(__name__)

NAMESPACE = "autoresearch-farm"
MAX_CPU_WORKERS = 4  # CPU workers are for trying the farm out; more would just share cores


def init_ray(address: str = "", *, dashboard: bool = True, num_cpus: int | None = None,
             num_gpus: int | None = None, metrics_port: int | None = None) -> bool:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a local one.
    Returns True if this call started Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    # the farm's own modules must import inside workers on every node
    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    try:
        if address:
            ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=False)
        else:
            extra = {"_metrics_export_port": metrics_port} if metrics_port else {}
            ray.init(namespace=NAMESPACE, include_dashboard=dashboard, num_cpus=num_cpus, num_gpus=num_gpus,
                     runtime_env=runtime_env, log_to_driver=False, **extra)
    except ConnectionError as e:
        raise FarmError(f"cannot connect to the Ray cluster at {address}: {e}. Is it up (`ray status`)?") from None
    return True


def worker_count(cfg: FarmConfig) -> int:
    """How many workers the cluster holds: one per GPU (per gpus_per_worker), else CPU workers."""
    w = cfg.workers
    if w.count:
        return w.count
    resources = ray.cluster_resources()
    if w.gpus_per_worker > 0 and resources.get("GPU", 0) >= w.gpus_per_worker:
        return int(resources["GPU"] // w.gpus_per_worker)
    return max(1, min(MAX_CPU_WORKERS, int(resources.get("CPU", 1) // w.cpus_per_worker)))


def uses_gpus(cfg: FarmConfig) -> bool:
    return cfg.workers.gpus_per_worker > 0 and ray.cluster_resources().get("GPU", 0) >= cfg.workers.gpus_per_worker


@dataclass
class WorkerSlot:
    name: str
    handle: Any  # ray.actor.ActorHandle
    info: dict[str, Any]


def start_workers(cfg: FarmConfig, tag: str, work_root: str) -> list[WorkerSlot]:
    """One actor per worker; each reports its node, GPU ids and accelerator before work starts."""
    from worker.actor import Worker

    n = worker_count(cfg)
    gpu = uses_gpus(cfg)
    resources = ray.cluster_resources()
    need = {"GPU": n * cfg.workers.gpus_per_worker if gpu else 0.0, "CPU": n * cfg.workers.cpus_per_worker}
    for kind, amount in need.items():
        if amount > resources.get(kind, 0):
            raise FarmError(f"{n} workers need {amount:g} {kind}s ({kind.lower()}s_per_worker x workers); the cluster "
                            f"has {resources.get(kind, 0):g}. Use fewer --workers or lower workers.{kind.lower()}s_per_worker")
    options: dict[str, Any] = {"max_restarts": -1, "max_concurrency": 2, "namespace": NAMESPACE}
    if gpu:
        options.update(num_gpus=cfg.workers.gpus_per_worker, num_cpus=cfg.workers.cpus_per_worker)
    else:
        options.update(num_gpus=0, num_cpus=cfg.workers.cpus_per_worker)
    actor_cls = ray.remote(Worker)
    slots = []
    for i in range(n):
        name = f"worker-{i}"
        settings = {
            "name": name,
            "work_root": work_root,
            "command": list(cfg.train.command),
            "frozen": list(cfg.run.frozen),
            "prepare_command": list(cfg.train.prepare_command),
            "budget": cfg.train.budget,
            "grace": cfg.train.grace,
            "cache_dir": cfg.train.cache_dir,
            "isolate_network": cfg.train.isolate_network,
            "env": dict(cfg.train.env),
            "cpu_threads": 0 if gpu else max(1, int(cfg.workers.cpus_per_worker)),
            "device": "" if gpu else "cpu",
        }
        handle = actor_cls.options(name=f"{tag}:{name}", get_if_exists=False, **options).remote(settings)
        slots.append(WorkerSlot(name, handle, {}))
    infos = ray.get([s.handle.info.remote() for s in slots], timeout=300)
    for slot, info in zip(slots, infos):
        slot.info = info
        log.info("%s on %s: GPUs %s (%s)", slot.name, info["node"], info["gpu_ids"] or "none", info["accelerator"])
    return slots


class ProposerActor:
    """Holds a proposer policy in its own process, so slow proposers (LLMs) never stall the loop."""

    def __init__(self, kind: str, settings: dict[str, Any], secrets: dict[str, str] | None = None):
        from proposer import make_proposer

        # an API key arrives as an argument, not in the runtime_env, which the dashboard displays
        os.environ.update(secrets or {})
        self.policy = make_proposer(kind, settings)

    def propose(self, n: int, history: Any) -> list[Any]:
        return self.policy.propose(n, history)

    def repair(self, meta: dict[str, Any], source: str, log_tail: str, tried: set[str]) -> Any:
        """A fix for a crashed candidate, from proposers that can make one (else None)."""
        fix = getattr(self.policy, "repair", None)
        return fix(meta, source, log_tail, tried) if fix else None

    def status(self) -> dict[str, Any]:
        return {"last_error": getattr(self.policy, "last_error", None),
                "usage": dict(getattr(getattr(self.policy, "primary", self.policy), "usage", {}) or {})}


def start_proposer(cfg: FarmConfig, tag: str, profile: str, program: str = "",
                   files: dict[str, str] | None = None) -> Any:
    """The proposer actor. The LLM's API key goes to it alone (never to workers, never into a
    record), from the driver's environment, since an actor on another node does not inherit it."""
    settings = dataclasses.asdict(cfg.proposer)
    settings.update(profile=profile, editable=cfg.run.editable, program=program, files=files or {},
                    near_miss_bpb=cfg.judge.default_noise)
    options: dict[str, Any] = {"name": f"{tag}:proposer", "num_cpus": 0, "namespace": NAMESPACE, "max_restarts": -1}
    key = os.environ.get(cfg.proposer.api_key_env, "")
    secrets = {cfg.proposer.api_key_env: key} if key else {}
    return ray.remote(ProposerActor).options(**options).remote(cfg.proposer.kind, settings, secrets)


def kill_actors(handles: list[Any]) -> None:
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # already gone
            pass
