"""train.py's FlexAttention path on CPU: the block masks against SDPA with a dense mask (output and
gradients), the real GPT on the flex path against the SDPA path, and the AUTORESEARCH_ATTENTION override.

torch has no FlexAttention backward on CPU (flex_attention refuses inputs that require grad there), so
the gradient checks lift that one device check and run torch's dense reference backward: they check the
masks' effect on the gradients, not the fused GPU kernel. The forward checks go through the public API."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from worker.summary import SUMMARY_KEYS, is_valid, parse_summary

ROOT = Path(__file__).resolve().parents[2]
fa = pytest.importorskip("torch.nn.attention.flex_attention")
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on CPU: meant


@pytest.fixture(scope="module")
def train():
    sys.path.insert(0, str(ROOT))
    import train

    return train


@pytest.fixture
def cpu_backward(monkeypatch):
    """Let flex_attention take inputs that require grad on CPU (torch's dense backward then runs)."""
    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)


def dense_mask(T, window):
    i = torch.arange(T)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.mark.parametrize("T,window", [(64, 16), (384, 64), (200, 50), (200, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_block_mask_attends_as_the_dense_sliding_window_mask(train, cpu_backward, T, window, dtype):
    """One block of 128 (64), blocks the window skips (384), a partial last block (200), window == T (causal)."""
    g = torch.Generator().manual_seed(T + window)
    q, k, v, dy = (torch.randn(2, 3, T, 16, generator=g).to(dtype) for _ in range(4))
    block_mask = train.GPT.block_mask(window, T, "cpu")
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(T, window))
    torch.testing.assert_close(train.flex_attention(q, k, v, block_mask=block_mask), reference, **TOLERANCE[dtype])
    if window == T:
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True), reference, **TOLERANCE[dtype])

    q, k, v = (t.requires_grad_() for t in (q, k, v))
    flex = torch.autograd.grad(train.flex_attention(q, k, v, block_mask=block_mask), (q, k, v), dy)
    dense = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(T, window)), (q, k, v), dy)
    for name, a, b in zip("qkv", flex, dense):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=lambda m: f"d{name}: {m}")


def twin_models(train, attention="flex", T=64):
    """A GPT on the SDPA path and the same weights on another path. The blocks' output projections are not
    zero (init_weights zeroes them), so that attention reaches the logits, and the logits are O(1)."""
    cfg = train.GPTConfig(sequence_len=T, vocab_size=64, n_layer=4, n_head=2, n_embd=32, window_pattern="SSSL",
                          value_embeds=True, softcap=15.0)
    torch.manual_seed(0)
    sdpa = train.GPT(cfg)
    sdpa.init_weights()
    with torch.no_grad():
        for block in sdpa.blocks:
            block.attn.c_proj.weight.normal_(std=0.2)
            block.mlp.c_proj.weight.normal_(std=0.05)
        sdpa.lm_head.weight.normal_(std=0.3)
    other = train.GPT(cfg, attention=attention)
    other.load_state_dict(sdpa.state_dict())
    return sdpa, other


def test_the_gpt_on_the_flex_path_computes_what_the_sdpa_path_does(train, cpu_backward):
    sdpa, flex = twin_models(train)
    assert flex.windows == [32, 32, 32, 64] and list(flex.block_masks) == [32], "one block mask, for the short window"
    x = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = sdpa(x)
        torch.testing.assert_close(flex(x), logits, atol=1e-5, rtol=1e-5)
        full = train.GPT(train.GPTConfig(**{**vars(sdpa.config), "window_pattern": "L"}))
        full.load_state_dict(sdpa.state_dict())
        assert (full(x) - logits).abs().max() > 0.1, "the windows matter, so the comparison means something"
        torch.testing.assert_close(flex(x[:, :40]), sdpa(x[:, :40]), atol=1e-5, rtol=1e-5)  # shorter rows: masks for T
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(flex(x, x), sdpa(x, x), atol=2e-2, rtol=2e-2)
    grads = []
    for model in (sdpa, flex):
        model(x, x).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


def test_block_masks_are_built_once_and_follow_the_model(train):
    _, flex = twin_models(train)
    masks = flex.block_masks
    assert flex.masks(64, "cpu") == {32: masks[32], 64: None}, "the built masks are used, full windows get none"
    flex.to("meta")
    assert flex.block_masks[32].kv_num_blocks.device.type == "meta"


def test_the_attention_override(train, monkeypatch, capsys):
    monkeypatch.setattr(train, "USE_CUDA", False)  # the same answers on a GPU box: no hub download tried
    monkeypatch.setenv("AUTORESEARCH_ATTENTION", "flash")
    with pytest.raises(SystemExit, match="AUTORESEARCH_ATTENTION must be one of auto, fa3, flex, sdpa, not 'flash'"):
        train.select_attention()
    for want, path, line in [
        ("flex", "flex", "attention: flex (AUTORESEARCH_ATTENTION=flex; forward only on CPU)"),
        ("sdpa", "sdpa", "attention: sdpa (AUTORESEARCH_ATTENTION=sdpa)"),
        ("fa3", "sdpa", "attention: sdpa (AUTORESEARCH_ATTENTION=fa3 but no GPU; falling back as auto would)"),
        ("auto", "sdpa", "attention: sdpa (no GPU)"),
        ("", "sdpa", "attention: sdpa (no GPU)"),
    ]:
        monkeypatch.setenv("AUTORESEARCH_ATTENTION", want)
        assert train.select_attention() == (path, None)
        assert capsys.readouterr().out.splitlines() == [line]
    monkeypatch.setenv("AUTORESEARCH_ATTENTION", "flex")
    assert train.build_model(64).attention == "flex"


def test_the_summary_keeps_the_attention_path_as_text():
    block = "\n".join(f"{k}: 1.5" for k in SUMMARY_KEYS) + "\nattention:        flex\n"
    summary = parse_summary("step 1\n---\n" + block)
    assert list(summary) == [*SUMMARY_KEYS, "attention"] and summary["attention"] == "flex"
    assert is_valid(summary) is None
