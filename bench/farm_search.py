"""The REAL farm's search at N workers against 1: wall-clock time to a target TRUE val_bpb, in one invocation.

What runs: the real Controller, Store on an embedded redis-server, the judge, the farm's own offline
search (``proposer.kind = "mutate"``, the real proposer actor), N real worker actors on logical GPUs
(``ray.init(num_gpus=N)``, one GPU and 0.01 CPU per worker) and a real git repository, as in
bench/farm_overhead.py. The one scripted part is the training command: a train.py of its own
(bench/search_kit.py) over a landscape of six independent bowls (learning rate, weight decay,
warmdown ratio, Adam's beta2, depth, batch size; each constant's best single step gains
0.0066-0.0080), three neutral constants and an out-of-memory crash region, with GPU-like noise (the
error of a run is NOISE = 0.002 times a fixed Gaussian of the file's text hash and the seed the farm
hands the run, plus a 0.0002 fresh jitter); each run sleeps ``--run-seconds`` to stand in for training.

Each replicate (``--reps``; replicate r runs the proposer on seed r and salts the noise with r, the
same for every N) starts a fresh farm (its own repository, Redis, workers and proposer) and runs it
until the main line's TRUE value (the landscape applied to the constants of the main line's
train.py, read from the repository after every merge) is at or below ``--target``, or
``--time-limit`` seconds have passed. Measured per replicate, from the moment the controller starts
(baseline measurement included; actor start-up not): seconds to target (never: counted as infinite
in the medians), runs started by then, merges by then and false merges (a merge that did not lower
the TRUE value), GPU-seconds (workers x seconds) per merge. The HEADLINE is the ratio of the median
times to target, 1 worker over the largest N.

Run it inside a private network namespace (Ray binds every interface):
  unshare -rn sh -c 'ip link set lo up && RAY_AUTH_MODE=disabled python bench/farm_search.py --quick'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import search_kit as kit

log = logging.getLogger("bench.farm_search")

DEFAULT_TARGET = 1.04  # TRUE val_bpb; the baseline is ~1.059: at least three improving steps


def search_features(cfg: Any) -> dict[str, Any]:
    """The ``search.*`` keys of the config, if the farm has such a section ({} where it has none)."""
    sec = getattr(cfg, "search", None)
    if sec is None or not dataclasses.is_dataclass(sec):
        return {}
    return {f"search.{f.name}": getattr(sec, f.name) for f in dataclasses.fields(sec)}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set section.key=value`` pairs; the value is read as JSON (true, 2, 0.5, ["a"]), else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set wants section.key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def config(repo: Path, n: int, rep: int, run_seconds: float, overrides: dict[str, Any]) -> Any:
    from cluster.config import FarmConfig

    return FarmConfig().with_overrides({
        "run.repo": str(repo), "run.tag": f"s{n}r{rep}", "train.budget": run_seconds, "train.grace": 30.0,
        "train.prepare_command": [], "train.trusted_eval": False, "workers.count": n, "workers.gpus_per_worker": 1.0,
        "workers.cpus_per_worker": 0.01, "proposer.kind": "mutate", "proposer.seed": rep,
        "proposer.exclude": list(kit.EXCLUDE), **overrides,
    })


def make_repo(path: Path, source: str) -> Path:
    path.mkdir(parents=True)
    (path / "train.py").write_text(source)
    (path / "prepare.py").write_text('"""frozen harness stand-in"""\n')
    for args in (["init", "-q", "-b", "main"], ["add", "train.py", "prepare.py"],
                 ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "baseline"]):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path


def _controller_class():
    from cluster.loop.controller import Controller

    class SearchController(Controller):
        """The real Controller; after every step it reads the main line's TRUE value and stops at the target."""

        target = -math.inf
        limit = math.inf
        t0 = 0.0
        timed_out = False
        trajectory: list[tuple[float, float]]
        hit: dict[str, Any]

        def begin(self, target: float, limit: float) -> None:
            self.target, self.limit, self.t0 = target, limit, time.time()
            self.hit = {}
            self._seen_main = self.main
            self.trajectory = [(0.0, kit.true_value(self.repo.read_file(self.main, self.cfg.run.editable)))]

        def step(self) -> None:
            super().step()
            now = time.time() - self.t0
            if self.main != self._seen_main:
                self._seen_main = self.main
                value = kit.true_value(self.repo.read_file(self.main, self.cfg.run.editable))
                self.trajectory.append((now, value))
                log.info("  %6.1f s  merge -> TRUE %.4f", now, value)
                if value <= self.target + 1e-12 and not self.hit:
                    done = sum(len(rs) for rs in self.measured.by_commit.values())
                    self.hit = {"time": now, "runs": done + len(self.fleet.inflight)}  # started by then
                    self.stop_requested = True
            if now > self.limit and not self.stop_requested:
                self.timed_out = self.stop_requested = True

    return SearchController


def replicate(n: int, rep: int, *, target: float, limit: float, run_seconds: float, root: Path,
              overrides: dict[str, Any]) -> dict[str, Any]:
    """One fresh farm with ``n`` workers, run until its main line's TRUE value reaches ``target`` (or ``limit`` s)."""
    from cluster.actors import placement
    from cluster.actors.proposer import start_proposer
    from cluster.launch import open_run
    from cluster.loop.fleet import Fleet, ProposerCalls

    repo = make_repo(root / f"target-{n}-{rep}", kit.train_source(run_seconds, rep))
    cfg = config(repo, n, rep, run_seconds, overrides)
    out: dict[str, Any] = {"workers": n, "rep": rep}
    with ExitStack() as stack:
        ctx = open_run(cfg, stack)
        ctx.store.create_run({"tag": ctx.tag, "status": "running"})
        stack.callback(ctx.store.update_run, status="done")  # runs before open_run's cleanup: Redis then stops
        t_start = time.time()
        workers = placement.start_workers(cfg, ctx.tag, str(ctx.run_dir / "workers"))
        stack.callback(placement.stop_workers, workers)
        proposer = start_proposer(cfg, ctx.tag, "gpu")
        stack.callback(placement.kill_actors, [proposer])
        out["actor_start_s"] = time.time() - t_start
        lines: list[str] = []  # the controller's report lines: shown when a replicate ends unexpectedly

        def report(line: str) -> None:
            lines.append(line)
            log.debug("%s", line)

        ctrl = _controller_class()(cfg, ctx.tag, ctx.store, ctx.repo, Fleet(workers), ProposerCalls(proposer),
                                   ctx.run_dir, report=report)
        ctrl.start(False)
        ctrl.begin(target, limit)
        try:
            why = ctrl.run()
            out["why"] = f"time limit {limit:g} s" if ctrl.timed_out else "target reached" if ctrl.hit else why
        finally:
            out["wall"] = time.time() - ctrl.t0
            t_down = time.time()
            ctrl.shutdown()
            out["shutdown_s"] = time.time() - t_down
        results = ctx.store.results()
        cands = ctx.store.candidates()
    traj = ctrl.trajectory
    t_hit = kit.time_to(traj, target)
    cut = t_hit if math.isfinite(t_hit) else out["wall"]
    merges, false = kit.merges_of(traj, cut)
    started = [r for r in results if r.started_at - ctrl.t0 <= cut]
    out.update(
        time=t_hit, runs=ctrl.hit.get("runs", len(results)) if math.isfinite(t_hit) else len(started),
        merges=merges, false=false, trajectory=traj, final_true=traj[-1][1],
        purposes=dict(Counter(r.purpose for r in started)),
        crashes=sum(r.status == "crash" for r in started),
        stale=sum(c.state == "stale" for c in cands),
        candidates=len(cands) - 1,
        run_wall_mean=sum(r.wall_seconds for r in results) / max(1, len(results)),
        report_tail=lines[-12:],
    )
    return out


def _line(m: dict[str, Any]) -> str:
    t = "never" if math.isinf(m["time"]) else f"{m['time']:.0f} s"
    p = m["purposes"]
    return (f"  N={m['workers']} rep {m['rep']}: target {t} ({m['why']}); {m['runs']} runs started "
            f"(finished: measure {p.get('measure', 0)}, confirm {p.get('confirm', 0)}, line {p.get('baseline', 0)}), "
            f"{m['merges']} merges ({m['false']} false), {m['stale']} stale, {m['crashes']} crashes; "
            f"TRUE {m['trajectory'][0][1]:.4f} -> {m['final_true']:.4f}; run wall {m['run_wall_mean']:.1f} s; "
            f"actors {m['actor_start_s']:.0f} s, shutdown {m['shutdown_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Run inside `unshare -rn` (see the "
                                 "module docstring). Prints a markdown table, then the HEADLINE line last.")
    ap.add_argument("--quick", action="store_true",
                    help="1 replicate each, 2.5 s runs, target 1.045 (two or three gains), 240 s limit: about 100 s")
    ap.add_argument("--workers", default="1,8", help="comma-separated worker counts (default 1,8)")
    ap.add_argument("--reps", type=int, default=5, help="replicates per worker count (proposer seeds 0..reps-1)")
    ap.add_argument("--target", type=float, default=None,
                    help=f"TRUE val_bpb to reach (default {DEFAULT_TARGET}; the baseline is "
                         f"{kit.baseline_true():.4f}, the optimum {kit.optimum_true():.1f})")
    ap.add_argument("--run-seconds", type=float, default=3.0, help="seconds each scripted training sleeps")
    ap.add_argument("--time-limit", type=float, default=420.0, help="seconds a replicate may run before it gives up")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a farm config override for every replicate, e.g. --set judge.confirm=false (repeatable)")
    ap.add_argument("--json", default="", help="also write every number to this JSON file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each merge as it happens")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.run_seconds, args.time_limit = 1, 2.5, 240.0
        args.target = 1.045 if args.target is None else args.target
    target = DEFAULT_TARGET if args.target is None else args.target
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("cluster").setLevel(logging.WARNING)
    ns = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    overrides = parse_set(args.set)

    import ray

    from cluster.actors import placement

    probe = config(Path("."), max(ns), 0, args.run_seconds, overrides)
    features = search_features(probe)
    print(f"landscape: baseline TRUE {kit.baseline_true():.4f}, optimum {kit.optimum_true():.4f}, target {target:.4f}; "
          f"{args.run_seconds:g} s runs; noise {kit.NOISE:g} (+ jitter {kit.JITTER:g}); {args.reps} replicate(s) per N; "
          f"limit {args.time_limit:g} s")
    print("config: judge " + ", ".join(f"{k}={getattr(probe.judge, k)}" for k in ("baseline_runs", "confirm", "noise_k"))
          + f"; proposer queue_margin={probe.proposer.queue_margin}, two_change_prob={probe.proposer.two_change_prob}"
          + (f"; overrides {overrides}" if overrides else ""))
    print("search features: " + (", ".join(f"{k}={v}" for k, v in features.items()) if features
                                 else "none (this farm's config has no [search] section)"), flush=True)
    t_all = time.time()
    ray.init(num_gpus=max(ns), num_cpus=2, include_dashboard=False, namespace=placement.NAMESPACE,
             log_to_driver=False)
    reps: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
    try:
        with tempfile.TemporaryDirectory(prefix="farm-search-") as tmp:
            for rep in range(args.reps):  # interleaved, so a change of the machine's load hits every N alike
                for n in ns:
                    m = replicate(n, rep, target=target, limit=args.time_limit, run_seconds=args.run_seconds,
                                  root=Path(tmp), overrides=overrides)
                    reps[n].append(m)
                    print(_line(m), flush=True)
                    if m["why"] != "target reached" and not m["why"].startswith("time limit"):
                        print("    the controller's last lines:\n" + "\n".join(f"    | {x}" for x in m["report_tail"]))
    finally:
        ray.shutdown()
    wall = time.time() - t_all
    rows = [kit.row(n, reps[n]) for n in ns]
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "target": target, "features": features,
                                               "rows": rows, "reps": reps, "wall_s": wall}, indent=1, default=str))
    print()
    print(kit.HEADER)
    for x in rows:
        print(kit.table_row(x))
    one, many = rows[0], rows[-1]
    sp = kit.speedup(one["times"], many["times"])
    lo, hi = kit.bootstrap(one["times"], many["times"])
    sp_text = "n/a" if math.isnan(sp) else f"{sp:.1f}x" + ("" if math.isnan(lo) or len(one["times"]) < 2
                                                          else f" (80 % bootstrap over replicates {lo:.1f}x-{hi:.1f}x)")
    ratio = (many["gpu_s_per_merge"] / one["gpu_s_per_merge"]
             if math.isfinite(one["gpu_s_per_merge"]) and math.isfinite(many["gpu_s_per_merge"]) else math.nan)
    fr = lambda x: f"{100 * x['false'] / max(1, x['merged']):.0f}% ({x['false']} of {x['merged']})"  # noqa: E731
    print(f"\n({wall:.0f} s in all)")
    print(f"HEADLINE farm_search: {many['workers']} workers reach TRUE {target:.4f} {sp_text} sooner than "
          f"{one['workers']} (median {kit._s(many['median_s'])} s vs {kit._s(one['median_s'])} s, "
          f"{many['reached']}/{many['reps']} and {one['reached']}/{one['reps']} replicates reached it) | GPU-s per "
          f"merge {'n/a' if math.isnan(ratio) else f'{ratio:.2f}x'} | false merges {fr(many)} at "
          f"{many['workers']}, {fr(one)} at {one['workers']} | "
          f"search features: {', '.join(f'{k}={v}' for k, v in features.items()) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
