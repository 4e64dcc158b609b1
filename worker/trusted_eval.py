"""The farm's trusted evaluation of one trained candidate: the val_bpb the farm records.

The worker runs this file as a process of its own after the candidate's training process has
exited, in a directory the candidate never saw, holding the shipped ``prepare.py`` (the frozen
harness, as committed: not the copy the candidate's run could write to), the candidate's
``train.py`` as committed, and this file. The training process could not read the validation
split (the worker hides it); it handed over its weights through ``prepare.evaluate_bpb``.

Steps: import the harness and note the identity of every name in it and of the torch functions
the score goes through; import the candidate's train.py (its ``main()`` does not run); rebuild the
model with its ``build_model(vocab_size)`` and load the weights (``weights_only``: data, never
code); score it with the harness's ``evaluate_bpb`` at a batch size fixed by the farm (so every
candidate is scored on the same tokens), which takes logits from the model and computes the loss
itself. Then three checks, each a way to fake a score that the logits alone would not show:

  causal     the predictions for the first half of a few validation rows must not change when
             the second half of those rows is replaced by random tokens (a model that looks at
             the tokens it is asked to predict scores far too well);
  stateless  the first rows score the same after the whole evaluation as before it, and the
             weights are unchanged (a model that learns from the validation data as it is scored);
  untouched  every name in the harness and the torch functions above are the same objects, with
             the same code, after the candidate's code ran (monkeypatching inside this process).

The verdict goes to ``--out`` as JSON: ``{"val_bpb": x, "checks": {...}, "seconds": s}`` or
``{"cheat": reason, ...}``; any exception makes the process exit non-zero (the worker records a
crash with the log's tail). What this cannot stop: the candidate's code runs in this process
(module level and ``forward``), so code written to defeat these checks from inside can; the
static tripwire, the frozen-file hashes and the judge's re-runs are the other layers
(docs/TRUST.md).

Usage (by the worker): ``python trusted_eval.py --weights PATH --out PATH [--batch-size N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TOLERANCE_NATS = 0.02  # largest change of one target's loss the checks accept (bf16 kernels)
CHECK_ROWS = 4


def snapshot(prepare, torch):
    """Identity (and code object) of every name of the harness and of the torch functions it uses."""
    import torch.nn.functional as F

    names = {f"prepare.{k}": v for k, v in vars(prepare).items() if not k.startswith("__")}
    names.update({
        "F.cross_entropy": F.cross_entropy, "F.log_softmax": F.log_softmax, "torch.where": torch.where,
        "torch.zeros": torch.zeros, "torch.empty": torch.empty,
        "sys.modules[prepare]": sys.modules.get("prepare"), "sys.modules[torch]": sys.modules.get("torch"),
        **{f"torch.Tensor.{m}": getattr(torch.Tensor, m)
           for m in ("float", "double", "sum", "item", "flatten", "view", "reshape", "__getitem__", "__setitem__")},
    })
    return {k: (id(v), id(getattr(v, "__code__", None))) for k, v in names.items()}


def changed(before, after):
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def checksum(model):
    return [float(p.detach().double().sum()) for p in model.state_dict().values() if p.is_floating_point()]


def score_and_probe(model, x, y, vocab, weights, losses, evaluate):
    """``evaluate()`` between two looks at the same rows ``x``/``y`` (``losses(x, y)``: every target's
    nats), then one more look with the second half of each row replaced by random tokens. Returns the
    score and the checks: causal (earlier losses unmoved by later tokens), stateless (the rows score
    the same after the evaluation), weights unchanged (``weights``: the checksum taken before)."""
    import torch

    half = x.size(1) // 2
    first = losses(x, y)
    value = evaluate()
    again = losses(x, y)
    noise = torch.randint(0, vocab, (x.size(0), x.size(1) - half), generator=torch.Generator().manual_seed(0))
    perturbed = x.clone()
    perturbed[:, half:] = noise.to(x.device)
    probe = losses(perturbed, y)
    return value, {
        "causal": float((probe[:, :half] - first[:, :half]).abs().max()),
        "stateless": float((again - first).abs().max()),
        "weights_unchanged": checksum(model) == weights,
    }


def after_scoring(checks, trusted, prepare, torch):
    """Why a scored model is a cheat after all (the harness changed while it ran, a probe failed), or None."""
    if touched := changed(trusted, snapshot(prepare, torch)):
        return f"the model's code changed the harness during evaluation: {', '.join(touched[:5])}"
    return probe_failure(checks)


def probe_failure(checks):
    """Why the statelessness or causality probe failed (the cheat recorded), or None."""
    if not (checks["stateless"] <= TOLERANCE_NATS and checks["weights_unchanged"]):
        return (f"it changed while being evaluated (the same rows scored {checks['stateless']:.3g} nats "
                f"apart; weights unchanged: {checks['weights_unchanged']})")
    if not checks["causal"] <= TOLERANCE_NATS:
        return (f"its predictions look ahead: replacing later tokens changed earlier losses by up to "
                f"{checks['causal']:.3g} nats")
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description="Score one candidate's trained weights (run by the farm's worker).")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=0, help="rows per evaluation batch (0: fixed by vocab and length)")
    args = ap.parse_args(argv)
    t0 = time.time()
    sys.path.insert(0, os.getcwd())
    import torch

    import prepare

    def verdict(**out):
        out["seconds"] = round(time.time() - t0, 2)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f)
        return 0

    trusted = snapshot(prepare, torch)
    import train as candidate  # module-level code of the candidate runs here; main() does not

    if touched := changed(trusted, snapshot(prepare, torch)):
        return verdict(cheat=f"importing train.py changed the harness: {', '.join(touched[:5])}")
    use_cuda = torch.cuda.is_available() and os.environ.get("AUTORESEARCH_DEVICE", "") != "cpu"
    device = torch.device("cuda" if use_cuda else "cpu")
    tokenizer = prepare.Tokenizer.from_directory()
    vocab = tokenizer.get_vocab_size()
    model = candidate.build_model(vocab)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"], strict=True)
    model.to(device).eval()
    weights = checksum(model)
    T = prepare.MAX_SEQ_LEN
    batch = args.batch_size or max(1, min(64, 2**31 // (T * vocab * 2)))  # bf16 logits of one batch <= 2 GiB
    autocast = (torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if use_cuda
                else torch.autocast("cpu", enabled=False))
    x, y, _ = next(prepare.make_dataloader(tokenizer, CHECK_ROWS, T, "val", device=device))
    with torch.no_grad(), autocast:
        val_bpb, checks = score_and_probe(model, x, y, vocab, weights,
                                          lambda a, b: prepare.target_nats(model, a, b, vocab),
                                          lambda: prepare.evaluate_bpb(model, tokenizer, batch))
    checks["batch_size"] = batch
    if why := after_scoring(checks, trusted, prepare, torch):
        return verdict(cheat=why, checks=checks)
    return verdict(val_bpb=val_bpb, checks=checks)


if __name__ == "__main__":
    sys.exit(main())
