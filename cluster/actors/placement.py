"""Placement: connect to (or start) a Ray cluster, and place the farm's workers on it.

Actors are named under the namespace `autoresearch-farm` so the Ray dashboard's actor list reads
as the farm: `<tag>:proposer`, `<tag>:controller` (the controller loop and its judge, pinned to the
driver's node, which holds the repository and the run directory) and one worker per GPU named by
where it runs, `<tag>:<node-ip>:gpu<k>` (`<tag>:<node-ip>:cpu<k>` for CPU workers where a machine
has none). Each worker runs in a bundle of one placement group; a bundle keeps the GPU Ray gave
it, so a worker restarted after a crash (`max_restarts=-1`, while the controller re-queues what it
ran) comes back on the same GPU under the same name. Only a node that dies moves its bundles.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from cluster.config import FarmConfig
from cluster.errors import FarmError, containment_refusal
from cluster.loop.fleet import WorkerSlot
from worker.settings import WorkerSettings

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


PLACEMENT_TIMEOUT_S = 300.0  # how long the workers wait for their GPUs (other jobs may hold them)
# the placement group of each live worker (by actor id) and the workers left in each group, so that
# killing a run's workers (`kill_actors`, `stop_workers`) also gives their GPUs back
_GROUP_OF: dict[str, Any] = {}
_MEMBERS: dict[str, set[str]] = {}


def node_here() -> dict[str, Any]:
    """The node this task or actor runs on."""
    return {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}


def _where() -> dict[str, Any]:
    """Where this task runs: the node and the GPUs Ray gave it (its bundle's)."""
    return {**node_here(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


def worker_names(places: list[dict[str, Any]]) -> list[str]:
    """A name per bundle from where it is: `<node-ip>:gpu<k>` (`gpu<j>+<k>` for a worker of several
    GPUs), `<node-ip>:cpu<k>` for CPU workers numbered per node; a GPU shared by fractional workers
    names its second and later workers `...#2`, `...#3`."""
    names, seen, cpus = [], {}, {}
    for p in places:
        if p["gpu_ids"]:
            base = f"{p['node_ip']}:gpu" + "+".join(p["gpu_ids"])
        else:
            cpus[p["node_ip"]] = cpus.get(p["node_ip"], -1) + 1
            base = f"{p['node_ip']}:cpu{cpus[p['node_ip']]}"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def _gpu_order(place: dict[str, Any]) -> tuple:
    return (place["node_ip"], [int(g) if g.isdigit() else g for g in place["gpu_ids"]])


def _resolved_harness(cfg: FarmConfig) -> str:
    """train.harness as the pre-flight (cluster/preflight.py) resolved it. "auto" never reaches a worker:
    a configuration that skipped the pre-flight (tests and benchmarks that start workers directly) runs
    the farm's own harness, as every run did before upstream-style harnesses were read."""
    return "farm" if cfg.train.harness == "auto" else cfg.train.harness


def worker_settings(cfg: FarmConfig, name: str, work_root: str, gpu: bool) -> WorkerSettings:
    """What the worker `name` is told: the run's and the training's configuration, and whether it has a GPU."""
    return WorkerSettings(
        name=name,
        work_root=work_root,
        command=tuple(cfg.train.command),
        frozen=tuple(cfg.run.frozen),
        editable=cfg.run.editable,
        trusted_eval=cfg.train.trusted_eval,
        disk_quota_gb=cfg.train.disk_quota_gb,
        prepare_command=tuple(cfg.train.prepare_command),
        budget=cfg.train.budget,
        grace=cfg.train.grace,
        cache_dir=cfg.train.cache_dir,
        isolate_network=cfg.train.isolate_network,
        env=dict(cfg.train.env),
        visible=tuple(cfg.train.visible),
        cpu_threads=0 if gpu else max(1, int(cfg.workers.cpus_per_worker)),
        device="" if gpu else "cpu",
        harness=_resolved_harness(cfg),
    )


def start_workers(cfg: FarmConfig, tag: str, work_root: str) -> list[WorkerSlot]:
    """One actor per worker, each in its own bundle of a placement group, named after the node and
    GPU of its bundle (asked of the bundle first, since a name is given at creation), and checked
    against the GPUs the actor itself reports before work starts. `stop_workers` ends them."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from worker.actor import Worker

    n = worker_count(cfg)
    gpu = uses_gpus(cfg)
    resources = ray.cluster_resources()
    gpus = cfg.workers.gpus_per_worker if gpu else 0.0
    need = {"GPU": n * gpus, "CPU": n * cfg.workers.cpus_per_worker}
    for kind, amount in need.items():
        if amount > resources.get(kind, 0):
            raise FarmError(f"{n} workers need {amount:g} {kind}s ({kind.lower()}s_per_worker x workers); the cluster "
                            f"has {resources.get(kind, 0):g}. Use fewer --workers or lower workers.{kind.lower()}s_per_worker")
    bundle = {"CPU": cfg.workers.cpus_per_worker, **({"GPU": gpus} if gpu else {})}
    pg = placement_group([dict(bundle) for _ in range(n)], strategy="PACK", name=f"{tag}:workers")
    if not pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
        remove_placement_group(pg)
        raise FarmError(f"the cluster found no room for {n} workers ({bundle}) within {PLACEMENT_TIMEOUT_S:.0f}s: "
                        "something else holds its GPUs or CPUs (`ray status`). Use fewer --workers")
    try:
        def in_bundle(i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

        probe = ray.remote(_where)
        places = ray.get([probe.options(num_cpus=0, num_gpus=gpus, scheduling_strategy=in_bundle(i)).remote()
                          for i in range(n)],
                         timeout=PLACEMENT_TIMEOUT_S)
        order = sorted(range(n), key=lambda i: _gpu_order(places[i]))
        names = worker_names([places[i] for i in order])
        actor_cls = ray.remote(Worker)
        slots = []
        for i, name in zip(order, names):
            settings = worker_settings(cfg, name, work_root, gpu)
            handle = actor_cls.options(
                name=f"{tag}:{name}", namespace=NAMESPACE, get_if_exists=False, max_restarts=-1, max_concurrency=2,
                num_gpus=gpus, num_cpus=cfg.workers.cpus_per_worker, scheduling_strategy=in_bundle(i),
            ).remote(settings)
            slots.append(WorkerSlot(name, handle, {"node_ip": places[i]["node_ip"]}))
        infos = ray.get([s.handle.info.remote() for s in slots], timeout=PLACEMENT_TIMEOUT_S)
    except BaseException:
        remove_placement_group(pg)  # ends the workers created so far with it
        raise
    _MEMBERS[pg.id.hex()] = {s.handle._actor_id.hex() for s in slots}
    _GROUP_OF.update((s.handle._actor_id.hex(), pg) for s in slots)
    for slot, info, i in zip(slots, infos, order):
        slot.info = {**info, "node_ip": places[i]["node_ip"]}
        if [str(g) for g in info["gpu_ids"]] != places[i]["gpu_ids"]:
            stop_workers(slots)
            raise FarmError(f"worker {slot.name} reports GPUs {info['gpu_ids']}, not its bundle's "
                            f"{places[i]['gpu_ids']}; its name would be wrong")
        log.info("%s on %s: GPUs %s (%s)", slot.name, info["node"], info["gpu_ids"] or "none", info["accelerator"])
    refused = unaccepted_containment(cfg, [s.info for s in slots], [s.name for s in slots])
    if refused:
        stop_workers(slots)
        raise FarmError(refused)
    return slots


def unaccepted_containment(cfg: FarmConfig, infos: list[dict[str, Any]], names: list[str]) -> str | None:
    """Why the farm must not run on these workers: the first whose node lacks a containment layer
    that train.accept_missing does not name (its ``info()``); None when every node has them."""
    for name, info in zip(names, infos):
        refused = containment_refusal(list(info.get("containment_missing", [])), cfg.train.accept_missing,
                                      info.get("containment_why", ""), where=f"on {info.get('node', '?')} ({name})")
        if refused:
            return refused
    return None


def stop_workers(slots: list[WorkerSlot]) -> None:
    """End the workers and give back their placement group's GPUs and CPUs."""
    kill_actors([s.handle for s in slots])


def kill_actors(handles: list[Any]) -> None:
    """Kill the actors; a placement group of workers is removed once all its workers are killed."""
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # already gone
            pass
        group = _GROUP_OF.pop(h._actor_id.hex(), None)
        if group is not None:
            members = _MEMBERS[group.id.hex()]
            members.discard(h._actor_id.hex())
            if not members:
                del _MEMBERS[group.id.hex()]
                try:
                    from ray.util.placement_group import remove_placement_group

                    remove_placement_group(group)
                except Exception:  # already removed, or Ray is gone
                    pass
