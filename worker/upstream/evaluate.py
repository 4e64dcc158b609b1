"""The farm's trusted evaluation of a model an upstream-style harness handed over.

The worker runs this after the training process has exited, in a directory the candidate never
saw that holds the shipped ``prepare.py`` (as committed), this file and its two helpers (the
launcher, for the cache relocation, and the farm's own evaluator, for its checks). The training
process could not read the validation shard; the launcher exported its model at
``prepare.evaluate_bpb`` (:mod:`worker.upstream.launch`).

An exported program (``.pt2``) is a graph of tensor operations and its weights: loading it runs
none of the candidate's Python, so nothing the candidate wrote executes here; the model runs under
the autocast state it was exported in (an exported graph checks its dtypes). A pickled model
(``.pkl``, when the exporter could not trace it) does run the candidate's classes here, and the
identity checks of the harness matter then. Either way the score is the user's own
``prepare.evaluate_bpb`` at the batch size the script asked for, and the same three checks as the
farm's own evaluator (:mod:`worker.trusted_eval`): causal, stateless, harness untouched.

Usage (by the worker): ``python evaluate.py --handoff PREFIX --out PATH``; the verdict JSON is
``{"val_bpb": x, "checks": {...}}`` or ``{"cheat": reason}``; an exception exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())
try:  # copied next to this file by the worker
    import _arf_launch as launch
    import _arf_trusted_eval as farm_eval
except ImportError:  # run from the package (tests)
    from worker import trusted_eval as farm_eval
    from worker.upstream import launch


def load_model(prefix: str, meta: dict):
    import torch

    if meta.get("format") == "export":
        return torch.export.load(f"{prefix}.pt2").module()
    import pickle

    with open(f"{prefix}.pkl", "rb") as f:
        return pickle.load(f)  # noqa: S301 -- the candidate's own model, by value; see the module docstring


def autocast(torch, state: dict):
    """The autocast the model was handed over under (an exported graph refuses any other)."""
    for dev in ("cuda", "cpu"):
        s = state.get(dev) or {}
        if s.get("enabled"):
            return torch.autocast(dev, dtype=getattr(torch, s["dtype"].removeprefix("torch.")))
    return contextlib.nullcontext()


def target_losses(model, x, y):
    """The loss of every target of a batch, (B, T): what the harness's evaluate_bpb sums."""
    return model(x, y, reduction="none").float().reshape(x.size(0), -1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Score the model an upstream-style harness handed over.")
    ap.add_argument("--handoff", required=True, help="the hand-off's path prefix")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    import torch

    import prepare

    launch.relocate(prepare, os.environ.get(launch.CACHE_ENV, "").strip())

    def verdict(**out):
        out["seconds"] = round(time.time() - t0, 2)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f)
        return 0

    with open(f"{args.handoff}.json", encoding="utf-8") as f:
        meta = json.load(f)
    trusted = farm_eval.snapshot(prepare, torch)
    model = load_model(args.handoff, meta)
    if touched := farm_eval.changed(trusted, farm_eval.snapshot(prepare, torch)):
        return verdict(cheat=f"loading the model changed the harness: {', '.join(touched[:5])}")
    weights = farm_eval.checksum(model)
    B, T = int(meta["batch_size"]), int(prepare.MAX_SEQ_LEN)
    tokenizer = prepare.Tokenizer.from_directory()
    vocab = tokenizer.get_vocab_size()
    x, y, *_ = next(prepare.make_dataloader(tokenizer, B, T, "val"))
    with torch.no_grad(), autocast(torch, meta.get("autocast") or {}):
        val_bpb, checks = farm_eval.score_and_probe(model, x, y, vocab, weights,
                                                    lambda a, b: target_losses(model, a, b),
                                                    lambda: prepare.evaluate_bpb(model, tokenizer, B))
    checks |= {"batch_size": B, "format": meta.get("format")}
    if why := farm_eval.after_scoring(checks, trusted, prepare, torch):
        return verdict(cheat=why, checks=checks)
    return verdict(val_bpb=float(val_bpb), checks=checks)


if __name__ == "__main__":
    sys.exit(main())
