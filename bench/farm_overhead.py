"""Control-plane overhead of the REAL farm at N workers: how close it gets to N/D experiments per second.

What runs: the real Controller, Store on an embedded redis-server, the judge, a proposer Ray actor,
N real worker actors (logical GPUs: ``ray.init(num_gpus=N)``, one GPU and 0.01 CPU per worker, so N
actors fit on a small machine) and a real git repository. The one scripted part is the training
command: a train.py that sleeps D seconds and prints autoresearch's summary block with
val_bpb = 1 - GAIN + N(0, 0.002). The proposer actor proposes endless neutral edits (``KNOB``) and,
with probability ``--win-prob``, a planted improvement (``GAIN`` += 0.01), so merges, confirmations,
main-line re-measurements and rebases of the pending candidates happen as in a real run.

Measured per N, after the baseline phase (from the moment the baseline's runs are all in):
  throughput   D / mean cycle, a cycle being finish-to-finish of two consecutive runs on one worker
               (1.0 = the ideal N/D runs per second; baseline, confirm and re-measure runs count,
               they occupy a GPU like any other);
  gaps         worker side: the next run's start minus the previous run's finish on that worker
               (result timestamps, both taken by the worker: the whole round trip through Ray, the
               controller and Redis); controller side: ``stats.dispatch_gaps`` (noticed idle ->
               dispatched; misses the time until the controller notices a finished run);
  CPU          driver (the controller's process, all threads) and redis-server CPU seconds per run,
               and the machine's busy fraction (on a 2-core box the N workers share it too);
  Redis        commands (``total_commands_processed``) per run, and the top commands;
  memory       driver RSS, redis-server RSS, memory per worker actor (drop of available memory);
  phases       inclusive wall seconds of each controller method (``_collect`` includes the wait).

Run it inside a private network namespace (Ray binds every interface):
  unshare -rn sh -c 'ip link set lo up && RAY_AUTH_MODE=disabled python bench/farm_overhead.py --quick'
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import overhead_kit
from bench.overhead_kit import (  # noqa: F401  (re-exported for tests and readers)
    TRAIN_PY,
    BenchProposer,
    get_constant,
    make_repo,
    memory_fit,
    per_run,
    percentile,
    set_constant,
    summarize,
    throughput_fraction,
    worker_cycles,
)

log = logging.getLogger("bench.farm_overhead")

# controller and intake methods timed (inclusive wall seconds) when they exist: the farm's code moves
PHASES = ("collect", "record", "_heartbeats", "_reap_leases", "judge", "take", "dispatch", "_files", "finished",
          "progress_line")
INTAKE_PHASES = ("step", "_collect_proposals", "ask", "history", "admit", "admit_round", "_read_inbox")
MB = 2**20
TRAINING_MB = 30  # a worker's training subprocess chain while it runs (sh, unshare, python), on top of its PSS


def _timed_controller_class():
    from cluster.loop.controller import Controller

    class TimedController(Controller):
        """The real Controller, with each loop method timed and gaps stamped with the time they happened."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.phase_wall: dict[str, float] = defaultdict(float)
            self.phase_calls: Counter[str] = Counter()
            self.gap_log: list[tuple[float, float]] = []  # (time, gap) of every dispatch but a worker's first
            self._seen: set[str] = set()
            self.on_step = lambda ctrl: None
            for obj, names, prefix in ((self, PHASES, ""), (getattr(self, "intake", None), INTAKE_PHASES, "intake.")):
                for name in names:
                    if obj is not None and callable(getattr(obj, name, None)):
                        setattr(obj, name, self._timed(prefix + name, getattr(obj, name)))

        def _timed(self, name: str, fn: Any) -> Any:
            def wrapper(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    self.phase_wall[name] += time.perf_counter() - t0
                    self.phase_calls[name] += 1
            return wrapper

        def dispatch(self) -> None:
            idle = self.fleet.free()
            gaps = self.progress.stats.dispatch_gaps
            before = len(gaps)
            super().dispatch()
            now = time.time()
            for name, gap in zip(idle, gaps[before:]):  # dispatch walks the idle in order
                if name in self._seen:
                    self.gap_log.append((now, gap))
                self._seen.add(name)

        def step(self) -> None:
            super().step()
            self.on_step(self)

    return TimedController


def _cpu(p: Any) -> float:
    """CPU seconds of a process and of its reaped children (git for the driver, trainings for a worker)."""
    c = p.cpu_times()
    return c.user + c.system + c.children_user + c.children_system


def cpu_groups(named: dict[int, str]) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds so far of this process's tree, by group: the ``named`` pids, Ray's daemons by name, and
    "ray other" (also returned by command line). Other users of the machine are left out (see ``measure``)."""
    import psutil

    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    out: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            name = p.info["name"] or ""
            if p.pid not in ours and p.pid not in named:
                continue
            group = named.get(p.pid) or ("raylet" if "raylet" in name else "gcs_server" if "gcs_server" in name
                                         else "ray other")
            cpu = _cpu(p)
            out[group] += cpu
            if group == "ray other":
                other[" ".join(p.info["cmdline"] or [name])[:60]] += cpu
        except psutil.Error:
            continue
    return dict(out), dict(other)


def _snapshot(store: Any, named: dict[int, str]) -> dict[str, Any]:
    import psutil

    stats = store.r.info("stats")
    cmds = {k.removeprefix("cmdstat_"): v["calls"] for k, v in store.r.info("commandstats").items()}
    mc = psutil.cpu_times()
    cpu, other = cpu_groups(named)
    return {"t": time.time(), "cpu": cpu, "other": other, "machine_busy": sum(mc) - mc.idle - getattr(mc, "iowait", 0.0),
            "machine_total": sum(mc), "commands": stats["total_commands_processed"] - 1, "cmdstats": cmds}  # -1: INFO


def measure(n: int, duration: float, rounds: int, *, win_prob: float, cpus_per_worker: float,
            isolate: bool, root: Path, seed: int = 0, profile: str = "") -> dict[str, Any]:
    """Run the real farm with ``n`` workers for about ``rounds`` runs per worker; return the numbers."""
    import psutil
    import ray

    from cluster.actors import placement
    from cluster.loop.fleet import Fleet, ProposerCalls
    from cluster.config import FarmConfig
    from cluster.launch import open_run

    repo = make_repo(root / f"target-{n}", duration)
    cfg = FarmConfig().with_overrides({
        "run.repo": str(repo), "run.tag": f"b{n}", "run.max_experiments": n * rounds,
        "train.budget": duration, "train.grace": 60.0, "train.prepare_command": [], "train.trusted_eval": False,
        "train.isolate_network": isolate, "workers.count": n, "workers.gpus_per_worker": 1.0,
        "workers.cpus_per_worker": cpus_per_worker,
    })
    out: dict[str, Any] = {"workers": n, "duration": duration}
    with ExitStack() as stack:
        ctx = open_run(cfg, stack)
        ctx.store.create_run({"tag": ctx.tag, "status": "running"})
        stack.callback(ctx.store.update_run, status="done")  # runs before open_run's cleanup: Redis then stops
        avail0 = psutil.virtual_memory().available
        t0 = time.time()
        workers = placement.start_workers(cfg, ctx.tag, str(ctx.run_dir / "workers"))
        stack.callback(placement.stop_workers, workers)  # also gives back the workers' placement group
        out["actor_start_s"] = time.time() - t0
        proposer = ray.remote(BenchProposer).options(num_cpus=0).remote(seed, win_prob)
        stack.callback(placement.kill_actors, [proposer])
        time.sleep(1.0)
        out["mem_per_actor_mb"] = (avail0 - psutil.virtual_memory().available) / n / MB
        out["actor_pss_mb"] = statistics.fmean(psutil.Process(w.info["pid"]).memory_full_info().pss
                                               for w in workers) / MB
        ctrl = _timed_controller_class()(cfg, ctx.tag, ctx.store, ctx.repo, Fleet(workers), ProposerCalls(proposer),
                                         ctx.run_dir,
                                         report=lambda line: log.debug("%s", line))
        ctrl.start(False)
        redis_proc = psutil.Process(int(ctx.store.r.info("server")["process_id"]))
        named = {psutil.Process().pid: "driver", redis_proc.pid: "redis"} | {w.info["pid"]: "workers" for w in workers}
        baseline = ctx.store.run_meta()["baseline"]
        snaps: dict[str, Any] = {}

        def on_step(c: Any) -> None:
            if "start" not in snaps and len(c.measured.of(baseline)) >= cfg.judge.baseline_runs:
                snaps["start"] = _snapshot(ctx.store, named)
                snaps["start"]["runs"] = sum(len(v) for v in c._by_commit.values())

        ctrl.on_step = on_step
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        run_t0 = time.perf_counter()
        try:
            out["why"] = ctrl.run()
        finally:
            out["loop_wall"] = time.perf_counter() - run_t0
            if prof is not None:
                prof.disable()
                prof.dump_stats(profile)
            end = _snapshot(ctx.store, named)
            end["runs"] = sum(len(v) for v in ctrl.measured.by_commit.values())
            out["driver_rss_mb"] = psutil.Process().memory_info().rss / MB
            out["redis_rss_mb"] = redis_proc.memory_info().rss / MB
            ctrl.shutdown()
        start = snaps.get("start", end)
        runs = [r.to_dict() for r in ctx.store.results()]
        cands = ctx.store.candidates()
    cycles, gaps = worker_cycles(runs, start["t"])
    cpu = {g: v - start["cpu"].get(g, 0.0) for g, v in end["cpu"].items()}
    cpu["outside"] = end["machine_busy"] - start["machine_busy"] - sum(cpu.values())  # other users of the machine
    waited = ctrl.phase_wall["collect"] - ctrl.phase_wall["record"]  # ray.wait (or the idle sleep)
    n_runs = end["runs"] - start["runs"]
    span = end["t"] - start["t"]
    out.update(
        runs=len(runs), window_runs=n_runs, window_s=span, throughput=throughput_fraction(cycles, duration),
        cycle_mean=statistics.fmean(cycles) if cycles else math.nan,
        run_wall_mean=statistics.fmean(r["wall_seconds"] for r in runs),
        worker_gap=summarize(gaps),
        ctrl_gap=summarize([g for t, g in ctrl.gap_log if t >= start["t"]]),
        cpu_per_run={g: per_run(v, n_runs) for g, v in cpu.items()},
        machine_busy=(end["machine_busy"] - start["machine_busy"]) / max(1e-9, end["machine_total"] - start["machine_total"]),
        redis_cmds_per_run=per_run(end["commands"] - start["commands"], n_runs),
        redis_by_command={k: per_run(v - start["cmdstats"].get(k, 0), n_runs) for k, v in sorted(
            end["cmdstats"].items(), key=lambda kv: start["cmdstats"].get(kv[0], 0) - kv[1])},
        other_top=dict(sorted(((k, per_run(v - start["other"].get(k, 0.0), n_runs)) for k, v in end["other"].items()),
                              key=lambda kv: -kv[1])[:5]),
        loop_busy_per_run=per_run(out["loop_wall"] - waited, len(runs)),
        phases={k: round(v, 3) for k, v in sorted(ctrl.phase_wall.items(), key=lambda kv: -kv[1])},
        merged=sum(c.state == "merged" and c.origin != "baseline" for c in cands),
        stale=sum(c.state == "stale" for c in cands), candidates=len(cands) - 1,
    )
    return out


# ---------------------------------------------------------------------------------- main

def _row(m: dict[str, Any]) -> str:
    wg, cg, c = m["worker_gap"], m["ctrl_gap"], m["cpu_per_run"]
    return (f"| {m['workers']} | {m['duration']:g} | {m['runs']} | {100 * m['throughput']:.1f} % | "
            f"{m['cycle_mean']:.3f} | {m['run_wall_mean']:.3f} | "
            f"{wg['median']:.3f} / {wg['p99']:.3f} | {cg['median']:.3f} / {cg['p99']:.3f} | "
            f"{1000 * m['loop_busy_per_run']:.0f} | "
            f"{m['cpu_per_run']['driver'] * 1000:.0f} | {m['cpu_per_run']['redis'] * 1000:.1f} | "
            f"{c.get('workers', 0) * 1000:.0f} | {sum(v for k, v in c.items() if k in RAY) * 1000:.0f} | "
            f"{c.get('outside', 0) * 1000:.0f} | "
            f"{m['redis_cmds_per_run']:.0f} | {100 * m['machine_busy']:.0f} % | {m['driver_rss_mb']:.0f} | "
            f"{m['redis_rss_mb']:.0f} | {m['actor_pss_mb']:.0f} | {m['merged']}/{m['stale']} |")


RAY = ("raylet", "gcs_server", "ray other")
COLUMNS = ("N", "D s", "runs", "throughput", "cycle s", "run wall s", "worker gap med / p99 s",
           "ctrl gap med / p99 s", "loop busy ms/run", "CPU ms/run: driver+git", "redis", "workers+trainings", "Ray daemons", "outside",
           "redis cmds/run", "machine busy", "driver RSS MB", "redis RSS MB", "actor PSS MB", "merged/stale")
HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Run inside `unshare -rn` (see the "
                                 "module docstring). Prints a markdown table, then the HEADLINE line last.")
    ap.add_argument("--quick", action="store_true", help="N = 1, 8, 32; D = 4 s; 4 rounds (about 2.5 minutes)")
    ap.add_argument("--workers", default="1,8,32,128", help="comma-separated worker counts (default 1,8,32,128)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds each scripted training sleeps (D)")
    ap.add_argument("--rounds", type=int, default=6, help="candidates per worker (max_experiments = N x rounds)")
    ap.add_argument("--win-prob", type=float, default=0.03, help="share of proposals that are planted wins")
    ap.add_argument("--cpus-per-worker", type=float, default=0.01, help="logical CPUs per worker actor")
    ap.add_argument("--no-isolate", action="store_true", help="run trainings without the network sandbox")
    ap.add_argument("--profile", default="", help="cProfile the controller loop of the largest N into this file")
    ap.add_argument("--json", default="", help="also write every number to this JSON file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.workers, args.duration, args.rounds = "1,8,32", 4.0, 4
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    ns = [int(x) for x in args.workers.split(",")]

    import psutil
    import ray

    from cluster.actors import placement

    avail = psutil.virtual_memory().available
    ray.cloudpickle.register_pickle_by_value(overhead_kit)  # the proposer actor needs it; bench/ is not installed
    ray.init(num_gpus=max(ns), num_cpus=max(2, math.ceil(max(ns) * args.cpus_per_worker) + 1),
             include_dashboard=False, namespace=placement.NAMESPACE, log_to_driver=False)
    results, per_actor = [], 80 * MB
    try:
        with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
            for n in ns:
                fits = memory_fit(psutil.virtual_memory().available, per_actor)
                if n > fits:
                    print(f"skipping N={n}: about {fits} worker actors fit in the memory left "
                          f"({per_actor / MB:.0f} MB each measured)")
                    continue
                print(f"N={n}: D={args.duration:g} s, {n * args.rounds} candidates ...", flush=True)
                m = measure(n, args.duration, args.rounds, win_prob=args.win_prob,
                            cpus_per_worker=args.cpus_per_worker, isolate=not args.no_isolate, root=Path(tmp),
                            profile=args.profile if n == max(ns) else "")
                per_actor = max(per_actor, (m["actor_pss_mb"] + TRAINING_MB) * MB)
                results.append(m)
                print(f"  done: {m['why']}; actors started in {m['actor_start_s']:.0f} s; phases (s): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in list(m["phases"].items())[:6])
                      + "; redis per run: " + ", ".join(f"{k} {v:.0f}" for k, v in list(m["redis_by_command"].items())[:6]), flush=True)
    finally:
        ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "available_mb": avail / MB, "results": results},
                                              indent=1))
    print()
    print(HEADER)
    for m in results:
        print(_row(m))
    if not results:
        return 1
    big = results[-1]
    cmds = ", ".join(f"N={m['workers']}: {m['redis_cmds_per_run']:.0f}" for m in results)
    print(f"\nHEADLINE farm_overhead: N={big['workers']} D={big['duration']:g}s throughput "
          f"{100 * big['throughput']:.1f}% of ideal (target >= 95%) | dispatch gap worker-side median "
          f"{big['worker_gap']['median']:.3f}s p99 {big['worker_gap']['p99']:.3f}s (targets < 0.2 / < 1) | "
          f"controller CPU {1000 * big['cpu_per_run']['driver']:.0f} ms/run, loop busy "
          f"{1000 * big['loop_busy_per_run']:.0f} ms/run (one loop keeps up with about "
          f"{big['duration'] / big['loop_busy_per_run']:.0f} workers at this D) | redis cmds/run {cmds} | "
          f"about {memory_fit(avail, per_actor)} worker actors fit in this machine's memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
