"""Run an upstream-style harness the farm's way, without changing a byte of it.

An upstream-style target (karpathy/autoresearch and the forks that keep its shape) has no knobs
for the farm: `prepare.py` fixes its budget (``TIME_BUDGET``) and its cache (``CACHE_DIR`` under
``~``), and `train.py` trains at import and scores itself with ``prepare.evaluate_bpb``. The farm
owns how the frozen harness is *run*, so this launcher runs it: it imports the shipped
``prepare`` first, adjusts that module object (never the file), then runs ``train.py`` (or
``prepare.py``'s main block) as ``__main__`` in the same process. What it adds:

* **The hand-off** (trusted mode, ``AUTORESEARCH_HANDOFF`` set): ``prepare.evaluate_bpb`` is
  replaced on the module before train.py imports it. The replacement does not score (the training
  process cannot read the validation shard: the worker hides it); it exports the model with
  :func:`torch.export.export` at the shapes the harness evaluates with, under the autocast state the
  call was made in, and returns nan. The worker's evaluator (:mod:`worker.upstream.evaluate`) loads
  the exported program, which is a graph and weights, no candidate code, and scores it with the
  user's own ``evaluate_bpb``. A model the exporter cannot trace is pickled by value instead
  (cloudpickle), and the evaluator then runs the candidate's classes: the farm's own harness's
  level. Each call replaces the previous hand-off: the last one counts, as the last summary does.
* **The printed metric checked** (``AUTORESEARCH_HANDOFF`` unset): ``evaluate_bpb`` runs as
  shipped, and what it returned is recorded, so the worker can refuse a printed ``val_bpb`` the
  harness never returned.
* **The clock the budget governs**: a global optimizer step hook notes when the first
  ``WARMUP_STEPS + 1`` optimizer steps are done (upstream does not count those steps, which
  include compilation) and the hand-off notes when training ended, so the over-time check can time
  the training the budget governs, not start-up, warm-up or the evaluation (a bigger model
  compiles longer). The steps counted are the farm's, not the script's, which can change its own.
* **The frozen cache guarded in-process**: an audit hook ends the run (exit ``CHEAT_EXIT``, with
  the reason in the report) at the first Python-level write, removal or rename under a protected
  directory (``AUTORESEARCH_FARM_PROTECT``), and a run that dies of a read-only-file-system error
  on one is reported the same way. The sandbox's read-only mount is what stops the write; this is
  what tells a cheat from a crash. Writes from native code (torch's file writer) are not seen
  here: they fail on the mount and leave a traceback that names the path, which is checked.
* **The cache relocated** (``AUTORESEARCH_CACHE`` set): every string constant of ``prepare`` under
  its ``CACHE_DIR`` (and every function default holding one) is moved under the configured
  directory, so ``train.cache_dir`` works for a harness that hard-codes ``~/.cache/autoresearch``.

What the launcher saw goes to ``AUTORESEARCH_FARM_REPORT`` as JSON, rewritten at every event.
Code in the same process can reach it all (it is one layer; docs/TRUST.md lists the others).

Usage (by the worker): ``python launch.py train.py`` | ``python launch.py --prepare prepare.py
[ARGS]`` | ``python launch.py --describe prepare.py --out FILE``.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import runpy
import sys
import time

HANDOFF_ENV = "AUTORESEARCH_HANDOFF"  # trusted mode: the path prefix of the hand-off (.pt2 | .pkl, .json)
REPORT_ENV = "AUTORESEARCH_FARM_REPORT"  # where the launcher writes what it saw
PROTECT_ENV = "AUTORESEARCH_FARM_PROTECT"  # os.pathsep-separated directories the run must not write
CACHE_ENV = "AUTORESEARCH_CACHE"  # move the harness's cache here
KERNELS_ENV = "AUTORESEARCH_FARM_KERNELS"  # --prepare: hub kernels train.py fetches at import, to fetch now
HARNESS = "prepare"
WARMUP_STEPS = 10  # optimizer steps not counted as governed training (upstream's own count)
CHEAT_EXIT = 86  # the exit status of a run the launcher ended for cheating
WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MUTATING_EVENTS = {"os.remove", "os.rename", "os.replace", "os.rmdir", "os.truncate", "os.chmod", "os.chown",
                   "os.utime", "os.link", "os.symlink", "os.mkdir", "shutil.rmtree", "shutil.move",
                   "shutil.copyfile", "shutil.copytree"}

_clock = time.monotonic  # bound here: a script that replaces time.monotonic does not move this clock


class Report:
    """What the run did, as the launcher saw it; written to ``REPORT_ENV`` after every change."""

    def __init__(self, path: str) -> None:
        self.path, self.t0 = path, _clock()
        self.data: dict = {"steps": 0, "warm_at": None, "handoff_at": None, "evaluate_calls": 0,
                           "returned": [], "handoff": None, "cheat": None}

    def set(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def since_start(self) -> float:
        return round(_clock() - self.t0, 3)

    def save(self) -> None:
        if not self.path:
            return
        d = self.data
        if d["handoff_at"] is not None:
            d["governed_seconds"] = round(d["handoff_at"] - (d["warm_at"] if d["warm_at"] is not None else 0.0), 3)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(d, f)
        os.replace(tmp, self.path)


def under(path, roots: list[str]) -> str | None:
    """The protected root that ``path`` (str, bytes or PathLike; not an fd) lies under, or None."""
    if isinstance(path, int) or path is None:
        return None
    try:
        p = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None
    return next((r for r in roots if p == r or p.startswith(r + os.sep)), None)


def guard(roots: list[str], report: Report) -> None:
    """Install the audit hook that ends the run at its first write under ``roots``."""
    busy = []

    def hook(event, args):
        if busy or not (event == "open" or event in MUTATING_EVENTS):
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, 0])[:3]
            writing = bool(WRITE_MODES & set(mode or "")) or bool((flags or 0) & WRITE_FLAGS)
            targets = [path] if writing else []
        else:
            targets = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        hit = next(((t, r) for t in targets if (r := under(t, roots))), None)
        if hit:
            busy.append(1)
            cheat(report, f"wrote to the harness's frozen cache ({event} {os.fsdecode(hit[0])})")

    sys.addaudithook(hook)


def cheat(report: Report, reason: str) -> None:
    """Record ``reason`` and end the process at once (no handler of the script's runs)."""
    try:
        report.set(cheat=reason)
        os.write(2, f"\n=== autoresearch-farm: run ended: {reason} ===\n".encode())
    finally:
        os._exit(CHEAT_EXIT)


def relocate(module, new_root: str) -> dict[str, str]:
    """Move every string constant of ``module`` under its ``CACHE_DIR`` (and every function default
    holding one, functions of its classes included) under ``new_root``. Returns {name: new value}."""
    old = getattr(module, "CACHE_DIR", None)
    new_root = os.path.abspath(os.path.expanduser(new_root)) if new_root else ""
    if not isinstance(old, str) or not new_root or os.path.abspath(old) == new_root:
        return {}
    old = os.path.abspath(old)

    def moved(v):
        if isinstance(v, str) and (v == old or v.startswith(old + os.sep)):
            return new_root + v[len(old):]
        return v

    changed = {}
    for name, value in list(vars(module).items()):
        if (new := moved(value)) is not value:
            setattr(module, name, new)
            changed[name] = new
    funcs = [v for v in vars(module).values() if callable(v) and getattr(v, "__module__", None) == module.__name__]
    for cls in [f for f in funcs if isinstance(f, type)]:
        funcs += [getattr(m, "__func__", m) for m in vars(cls).values()]
    for fn in funcs:
        if getattr(fn, "__defaults__", None):
            fn.__defaults__ = tuple(moved(v) for v in fn.__defaults__)
        if getattr(fn, "__kwdefaults__", None):
            fn.__kwdefaults__ = {k: moved(v) for k, v in fn.__kwdefaults__.items()}
    return changed


def describe(module) -> dict:
    """The harness's paths and constants the worker needs before a run (read from the imported module)."""
    def const(name, kinds):
        v = getattr(module, name, None)
        return v if isinstance(v, kinds) and not isinstance(v, bool) else None

    data, tok = const("DATA_DIR", str), const("TOKENIZER_DIR", str)
    val = const("VAL_FILENAME", str)
    val_path = os.path.join(data, val) if data and val else None
    return {"cache_dir": const("CACHE_DIR", str), "data_dir": data, "tokenizer_dir": tok, "val_path": val_path,
            "time_budget": const("TIME_BUDGET", (int, float)), "max_seq_len": const("MAX_SEQ_LEN", int),
            "eval_tokens": const("EVAL_TOKENS", int)}


def autocast_state(torch) -> dict:
    return {dev: {"enabled": bool(torch.is_autocast_enabled(dev)), "dtype": str(torch.get_autocast_dtype(dev))}
            for dev in ("cuda", "cpu")}


def save_handoff(model, batch_size: int, prefix: str, harness) -> dict:
    """Export the model at the evaluation's shapes (else pickle it by value); return the hand-off's meta."""
    import torch

    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the module it compiled
    param = next(inner.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    T = int(harness.MAX_SEQ_LEN)
    x = torch.zeros(int(batch_size), T, dtype=torch.long, device=device)
    meta = {"batch_size": int(batch_size), "seq_len": T, "device": str(device), "autocast": autocast_state(torch),
            "training": bool(inner.training)}
    t = _clock()
    for stale in (f"{prefix}.pt2", f"{prefix}.pkl"):
        if os.path.exists(stale):
            os.unlink(stale)
    try:
        with torch.no_grad():
            program = torch.export.export(inner, (x, x.clone()), kwargs={"reduction": "none"})
        torch.export.save(program, f"{prefix}.pt2")
        meta["format"] = "export"
    except Exception as e:  # noqa: BLE001 -- any failure of the exporter: fall back to pickling
        meta["export_error"] = f"{type(e).__name__}: {e}"[:500]
        try:
            try:
                import cloudpickle
            except ImportError:  # Ray vendors one
                from ray import cloudpickle
            with open(f"{prefix}.pkl", "wb") as f:
                cloudpickle.dump(inner, f)
            meta["format"] = "pickle"
        except Exception as e2:  # noqa: BLE001
            meta["format"] = None
            meta["pickle_error"] = f"{type(e2).__name__}: {e2}"[:500]
    meta["seconds"] = round(_clock() - t, 3)
    with open(f"{prefix}.json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return meta


def wrap_evaluate(harness, report: Report, prefix: str) -> None:
    """Replace ``harness.evaluate_bpb``: hand the model off (``prefix`` set) or record what it returns."""
    import functools

    shipped = harness.evaluate_bpb

    @functools.wraps(shipped)
    def evaluate_bpb(model, tokenizer, batch_size, *args, **kwargs):
        report.data["evaluate_calls"] += 1
        report.set(handoff_at=report.since_start())
        if prefix:
            report.set(handoff=save_handoff(model, batch_size, prefix, harness))
            return float("nan")
        value = shipped(model, tokenizer, batch_size, *args, **kwargs)
        report.data["returned"].append(float(value))
        report.save()
        return value

    del evaluate_bpb.__wrapped__  # the shipped function stays out of the script's reach
    harness.evaluate_bpb = evaluate_bpb


def count_steps(report: Report) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def after_step(optimizer, args, kwargs):
        report.data["steps"] += 1
        if report.data["steps"] == WARMUP_STEPS + 1:
            report.set(warm_at=report.since_start())

    register_optimizer_step_post_hook(after_step)


def prefetch(kernels: list[str]) -> None:
    """Fetch the hub kernels train.py loads at import (``get_kernel(repo)``) while there is network:
    runs have none, and find them in the local hub cache. A kernel that will not load here (built for
    another GPU: train.py picks one by capability) is a warning, not a failed prepare."""
    for repo in kernels:
        try:
            from kernels import get_kernel

            get_kernel(repo)
            print(f"farm: fetched kernel {repo}", flush=True)
        except Exception as e:  # noqa: BLE001 -- reported, and the run will say if it needed it
            print(f"farm: warning: could not fetch kernel {repo} ({type(e).__name__}: {e})", flush=True)


def main_block(path: str) -> ast.Module:
    """The body of ``path``'s ``if __name__ == "__main__":`` blocks, to run in the imported module."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    body = [stmt for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            for stmt in node.body]
    return ast.Module(body=body, type_ignores=[])


def load_harness(protect: list[str], report: Report):
    sys.path.insert(0, os.getcwd())
    import importlib

    harness = importlib.import_module(HARNESS)
    relocate(harness, os.environ.get(CACHE_ENV, "").strip())
    if protect:
        guard(protect, report)
    return harness


def died_writing(exc: BaseException, roots: list[str]) -> str | None:
    """The protected path a fatal error says the run tried to write, or None."""
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        for name in (exc.filename, exc.filename2):
            if under(name, roots):
                return os.fsdecode(name)
    text = str(exc)
    if roots and ("Read-only file system" in text or "cannot be opened" in text):
        return next((r for r in roots if r in text), None)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    report = Report(os.environ.get(REPORT_ENV, "").strip())
    protect = [os.path.abspath(p) for p in os.environ.get(PROTECT_ENV, "").split(os.pathsep) if p.strip()]
    if argv[:1] == ["--describe"]:
        harness = load_harness([], report)
        out = argv[argv.index("--out") + 1]
        with open(out, "w", encoding="utf-8") as f:
            json.dump(describe(harness), f)
        return 0
    if argv[:1] == ["--prepare"]:
        script, rest = argv[1], argv[2:]
        harness = load_harness([], report)
        sys.argv = [script, *rest]  # the module keeps its name: what it pickles (a Pool's tasks) resolves
        exec(compile(main_block(script), script, "exec"), harness.__dict__)  # noqa: S102 -- the shipped file's own main
        prefetch([k for k in os.environ.get(KERNELS_ENV, "").split(os.pathsep) if k.strip()])
        return 0
    script, rest = argv[0], argv[1:]
    harness = load_harness(protect, report)
    count_steps(report)
    wrap_evaluate(harness, report, os.environ.get(HANDOFF_ENV, "").strip())
    report.save()
    sys.argv = [script, *rest]
    try:
        runpy.run_path(script, run_name="__main__")
    except BaseException as e:
        if not isinstance(e, SystemExit) and (path := died_writing(e, protect)):
            cheat(report, f"wrote to the harness's frozen cache ({path}): the write failed on the read-only cache")
        raise
    finally:
        report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
