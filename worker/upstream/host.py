"""The worker's side of an upstream-style harness: what :class:`worker.actor.Worker` needs around
the launcher (:mod:`worker.upstream.launch`) and the evaluator (:mod:`worker.upstream.evaluate`).

* :func:`launcher_dir`: a fresh copy of both scripts per run, in a directory the run sees
  read-only (the project's own copy may be a writable checkout).
* :func:`command`: ``python X.py`` run through the launcher.
* :func:`hub_cache`: where the hub kernels fetched at prepare time are, which runs see read-only.
* :func:`describe`: the harness's paths and constants (its cache, its validation shard, its
  budget), read by importing the shipped ``prepare.py`` (the frozen file, not candidate code) once
  per distinct harness, in a directory of its own; a harness that cannot be imported is a failed
  prepare (:class:`worker.contract.PrepareFailed`): no run could succeed.
* :func:`not_handed_over` and :func:`unreturned`: the verdicts that need the launcher's report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.contract import PrepareFailed
from worker.harness import read_harness
from worker.upstream import launch

HERE = Path(__file__).parent
LAUNCHER = "_arf_launch.py"  # the launcher's name where runs find it (<root>/launcher)
UPSTREAM_EVAL = "_arf_upstream_eval.py"
FARM_EVAL = "_arf_trusted_eval.py"  # worker.trusted_eval, whose checks the upstream evaluator reuses
SCRIPTS = {LAUNCHER: HERE / "launch.py", UPSTREAM_EVAL: HERE / "evaluate.py",
           FARM_EVAL: HERE.parent / "trusted_eval.py"}
HANDOFF_SUFFIXES = (".pt2", ".pkl", ".json")  # the exported program, the pickled model, their meta


def handoff_files(weights: Path) -> list[Path]:
    """Every file a hand-off at ``weights`` may leave: the farm harness's weights file itself, or the
    launcher's exported program, pickled model and their meta under that prefix."""
    return [weights, *(Path(f"{weights}{x}") for x in HANDOFF_SUFFIXES)]


def hub_cache(env: Mapping[str, str]) -> Path:
    """Where the Hugging Face hub keeps what it fetched (the kernels a prepare step fetches, which
    runs load offline), as ``huggingface_hub`` resolves it from ``env``."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return xdg / "huggingface" / "hub"


def launcher_dir(root: Path) -> Path:
    where = root / "launcher"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for name, src in SCRIPTS.items():
        (where / name).write_bytes(src.read_bytes())
    return where


def command(cmd: Sequence[str], launcher: Path, *, prepare: bool = False) -> list[str]:
    """``cmd`` (already resolved to this interpreter) as the launcher runs it."""
    if len(cmd) < 2 or cmd[0] != sys.executable or not cmd[1].endswith(".py"):
        raise ValueError(f"an upstream-style harness runs as `python <script>.py`, not {' '.join(cmd)}")
    return [cmd[0], str(launcher), *(["--prepare"] if prepare else []), *cmd[1:]]


def describe(where: Path, files: Mapping[str, bytes], editable: str, env: Mapping[str, str], *,
             worker: str) -> dict[str, Any]:
    """The harness's layout (:func:`worker.upstream.launch.describe`) and the hub kernels train.py loads."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for rel, data in files.items():
        if rel != editable and "/" not in rel:
            (where / rel).write_bytes(data)
    out = where / "layout.json"
    cmd = [sys.executable, str(HERE / "launch.py"), "--describe", "prepare.py", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=where, env=dict(env), capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(output.splitlines()[-50:])[-4096:]
        raise PrepareFailed(worker, socket.gethostname(), ["python", "prepare.py", "(imported, to read its layout)"],
                            proc.returncode, tail, "", output)
    layout = json.loads(out.read_text())
    shutil.rmtree(where, ignore_errors=True)
    text = {k: v.decode("utf-8", "replace") for k, v in files.items() if k.endswith(".py")}
    layout["kernels"] = list(read_harness(text, editable=editable).kernels)
    return layout


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def not_handed_over(prefix: Path) -> str | None:
    """Why the launcher left nothing for the trusted evaluator to score, or None."""
    meta = read_json(Path(f"{prefix}.json"))
    if not meta:
        return "the model was not handed over: train.py never called prepare.evaluate_bpb(model, ...)"
    if meta.get("format") not in ("export", "pickle"):
        return (f"the model could not be handed over to the trusted evaluator: torch.export failed "
                f"({meta.get('export_error')}) and so did pickling it ({meta.get('pickle_error')}); "
                "train.trusted_eval = false scores it with its own printed metric instead")
    return None


def unreturned(summary: Mapping[str, Any], seen: Mapping[str, Any]) -> str | None:
    """Why a printed val_bpb is not one the harness's evaluate_bpb returned (printed-metric mode), or None."""
    printed = summary.get("val_bpb")
    if not isinstance(printed, (int, float)) or isinstance(printed, bool):
        return None
    returned = [v for v in seen.get("returned") or [] if isinstance(v, (int, float))]
    if not returned:
        return f"printed a val_bpb ({printed:g}) but never called the harness's evaluate_bpb"
    if abs(printed - returned[-1]) > 1e-6 * max(1.0, abs(returned[-1])):  # printed with 6 decimals
        return f"printed a val_bpb of {printed:g}, but the harness's evaluate_bpb returned {returned[-1]:.6f}"
    return None


def run_env(report: Path, frozen: Sequence[Path]) -> dict[str, str]:
    """What the launcher is told in a training run: where to report, which directories to guard."""
    return {launch.REPORT_ENV: str(report), launch.PROTECT_ENV: os.pathsep.join(map(str, frozen))}
