"""The farm's actors as the Ray dashboard lists them, on a local Ray with 4 logical GPUs: workers
named by node and GPU (and keeping both through a restart), and the controller loop running in
the named actor `<tag>:controller` on the driver's node."""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack

import pytest
import ray

from cluster.actors import placement
from cluster.launch import open_run, run_farm
from tests.farmkit import farm_config

pytestmark = pytest.mark.slow


def farm_actor_names() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == placement.NAMESPACE}


def wait_back(slot, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            return ray.get(slot.handle.info.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_gpu_workers_are_named_by_node_and_the_gpu_ray_gave_them(ray_local, repo):
    slots = placement.start_workers(farm_config(repo, **{"workers.count": 0}), "names", str(repo / "w"))
    try:
        ip = ray.util.get_node_ip_address()
        assert [s.name for s in slots] == [f"{ip}:gpu{k}" for k in range(4)]
        for s in slots:
            (gpu,) = s.info["gpu_ids"]
            assert s.name == f"{ip}:gpu{gpu}", "the name is the GPU the actor itself reports"
            assert s.info["cuda_visible_devices"] == gpu
            assert ray.get_actor(f"names:{s.name}", namespace=placement.NAMESPACE) is not None
        assert {f"names:{ip}:gpu{k}" for k in range(4)} <= farm_actor_names()
    finally:
        placement.kill_actors([s.handle for s in slots[:3]])
    assert ray.available_resources().get("GPU", 0) == 0, "a group with a worker left keeps its GPUs"
    placement.kill_actors([slots[3].handle])
    assert not any(n.startswith("names:") for n in farm_actor_names())
    deadline = time.time() + 30
    while ray.available_resources().get("GPU", 0) < 4 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) == 4, "their placement group gave the GPUs back"


def test_a_restarted_worker_keeps_its_name_and_its_gpu(ray_local, repo):
    """Two workers on four GPUs: a worker killed twice (while another actor takes a freed GPU)
    comes back on the GPU its name says, not on whichever one is free."""
    slots = placement.start_workers(farm_config(repo, **{"workers.count": 2}), "rs", str(repo / "w"))
    hog = None
    try:
        first = slots[0]
        gpu = first.info["gpu_ids"]
        for _ in range(2):
            os.kill(wait_back(first)["pid"], signal.SIGKILL)
            if hog is None:  # one free GPU taken meanwhile; the others stay free
                hog = ray.remote(num_gpus=1, num_cpus=0)(lambda: ray.get_gpu_ids()).remote()
            info = wait_back(first)
            assert info["gpu_ids"] == gpu and first.name.endswith(f":gpu{gpu[0]}")
        assert ray.get_actor(f"rs:{first.name}", namespace=placement.NAMESPACE) is not None
    finally:
        placement.stop_workers(slots)


def test_cpu_workers_are_named_by_node_and_numbered(ray_local, repo):
    cfg = farm_config(repo, **{"workers.count": 2, "workers.gpus_per_worker": 0.0})
    slots = placement.start_workers(cfg, "cpu", str(repo / "w"))
    try:
        ip = ray.util.get_node_ip_address()
        assert [s.name for s in slots] == [f"{ip}:cpu0", f"{ip}:cpu1"]
        assert all(s.info["gpu_ids"] == [] for s in slots)
    finally:
        placement.stop_workers(slots)


def test_names_of_shared_and_multi_gpu_workers_stay_unique():
    places = [{"node_ip": "10.0.0.1", "gpu_ids": ["0"]}, {"node_ip": "10.0.0.1", "gpu_ids": ["0"]},
              {"node_ip": "10.0.0.1", "gpu_ids": ["1", "2"]}, {"node_ip": "10.0.0.2", "gpu_ids": []},
              {"node_ip": "10.0.0.2", "gpu_ids": []}, {"node_ip": "10.0.0.3", "gpu_ids": []}]
    assert placement.worker_names(places) == ["10.0.0.1:gpu0", "10.0.0.1:gpu0#2", "10.0.0.1:gpu1+2",
                                             "10.0.0.2:cpu0", "10.0.0.2:cpu1", "10.0.0.3:cpu0"]


def test_the_controller_loop_runs_in_the_named_actor_on_the_drivers_node(ray_local, repo):
    cfg = farm_config(repo, **{"run.tag": "ca", "judge.baseline_runs": 1, "run.max_experiments": 2})
    seen: dict = {}
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if "actor" not in seen and line.startswith("run ca:"):  # the controller's first line (the pre-flight's come before it)
            actor = ray.get_actor("ca:controller", namespace=placement.NAMESPACE)
            seen["actor"] = ray.get(actor.where.remote())
            seen["names"] = farm_actor_names()

    why = run_farm(cfg, report=report)
    assert why == "2 experiments done"
    where = seen["actor"]
    assert where["pid"] != os.getpid(), "the loop runs in an actor, not in this process"
    assert where["node_id"] == ray.get_runtime_context().get_node_id(), "on the driver's node"
    ip = ray.util.get_node_ip_address()
    assert {"ca:controller", "ca:proposer", f"ca:{ip}:gpu0", f"ca:{ip}:gpu1"} <= seen["names"]
    assert any(line.startswith("run ca: main line") for line in lines), "the controller's lines reach the driver"
    assert any("[baseline]" in line for line in lines) and lines[-1].startswith("run ca ended: 2 experiments done")
    with ExitStack() as stack:
        meta = open_run(cfg, stack).store.run_meta()
    assert meta["controller"]["actor"] == "ca:controller" and meta["controller"]["pid"] == where["pid"]
    assert meta["workers"] == {f"{ip}:gpu0": f"ca:{ip}:gpu0", f"{ip}:gpu1": f"ca:{ip}:gpu1"}
    assert not any(n.startswith("ca:") for n in farm_actor_names()), "every actor of the run ended with it"
