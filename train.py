"""
The research target: a small GPT pretrained for a fixed wall-clock budget, scored by val_bpb.

This is the one file the farm's proposers edit. The top of the file is the search surface:
UPPER_CASE constants, plain literals, one comment each. `prepare.py` is the frozen harness
(data, tokenizer, dataloader, evaluation) and must not be changed.

Two profiles share this file. On a GPU the main constants are used (bf16 autocast, torch.compile,
FlashAttention-3 when the `kernels` package can load it, else PyTorch SDPA; FlexAttention, which needs no
download, on request: AUTORESEARCH_ATTENTION=flex).
Without a GPU the `CPU_*` twins replace the constants they name, so a laptop or a CI box trains a model
small enough to learn something within a short budget. Set AUTORESEARCH_DEVICE=cpu|cuda to force a
device and AUTORESEARCH_ATTENTION=auto|fa3|flex|sdpa to force an attention path (see select_attention).

The seed is the farm's, not this file's: `prepare.seed()` (AUTORESEARCH_SEED, 42 outside the farm)
seeds torch, CUDA and the train dataloader, so each measurement is an independent draw.

Usage: python train.py   (prints a summary block after `---` at the end)
"""

import gc
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # FlexAttention (torch >= 2.5): sliding windows through a block-sparse mask, nothing to download
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb, make_dataloader, seed

# ---------------------------------------------------------------------------
# Hyperparameters: the search surface

# Model shape
DEPTH = 8  # number of transformer blocks
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # width of one attention head
WINDOW_PATTERN = "SSSL"  # per-layer attention span, cycled: S = half context, L = full; last layer always L
VALUE_EMBEDS = True  # add a token-indexed value embedding on alternating layers (ResFormer-style)
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap); keeps early training stable

# Batch
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step (gradient accumulation fills the gap)
DEVICE_BATCH_SIZE = 128  # rows per forward pass

# Optimization
EMBEDDING_LR = 0.6  # AdamW lr for the token embedding (and value embeddings)
UNEMBEDDING_LR = 0.004  # AdamW lr for the output projection
MATRIX_LR = 0.04  # Muon lr for every 2-D matrix inside the blocks
SCALAR_LR = 0.5  # AdamW lr for the per-layer residual scalars
WEIGHT_DECAY = 0.2  # decoupled weight decay on the Muon matrices
ADAM_BETAS = (0.8, 0.95)  # AdamW betas
MUON_MOMENTUM = 0.95  # Nesterov momentum of Muon
WARMUP_RATIO = 0.0  # fraction of the budget spent ramping the lr up
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying the lr at the end
FINAL_LR_FRAC = 0.0  # lr at the end of warmdown, as a fraction of the peak

# CPU profile: these replace the constants they name when no GPU is present
CPU_DEPTH = 4
CPU_ASPECT_RATIO = 32
CPU_HEAD_DIM = 32
CPU_WINDOW_PATTERN = "L"  # windowed attention needs an explicit mask on CPU, which is slower
CPU_TOTAL_BATCH_SIZE = 2**12
CPU_DEVICE_BATCH_SIZE = 16

assert DEPTH * ASPECT_RATIO >= HEAD_DIM, "the model must be at least one head wide"
assert CPU_DEPTH * CPU_ASPECT_RATIO >= CPU_HEAD_DIM, "the model must be at least one head wide"

# ---------------------------------------------------------------------------
# Device and profile

DEVICE_TYPE = os.environ.get("AUTORESEARCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
assert DEVICE_TYPE in ("cuda", "cpu"), f"AUTORESEARCH_DEVICE must be cuda or cpu, not {DEVICE_TYPE!r}"
if DEVICE_TYPE == "cpu":
    DEPTH, ASPECT_RATIO, HEAD_DIM = CPU_DEPTH, CPU_ASPECT_RATIO, CPU_HEAD_DIM
    WINDOW_PATTERN = CPU_WINDOW_PATTERN
    TOTAL_BATCH_SIZE, DEVICE_BATCH_SIZE = CPU_TOTAL_BATCH_SIZE, CPU_DEVICE_BATCH_SIZE
USE_CUDA = DEVICE_TYPE == "cuda"
# compile steps are excluded from the budget: on GPU the first steps pay for torch.compile
EXCLUDED_STEPS = 10 if USE_CUDA else 1


def load_flash_attention():
    """(FlashAttention-3 from the `kernels` hub package, None), or (None, why it is unavailable)."""
    if not USE_CUDA:
        return None, "no GPU"
    try:
        from kernels import get_kernel

        major, _ = torch.cuda.get_device_capability()
        repo = "varunneal/flash-attention-3" if major == 9 else "kernels-community/flash-attn3"
        return get_kernel(repo).flash_attn_interface, None
    except Exception as e:  # no package, no network, or an unsupported GPU: FlexAttention or SDPA instead
        return None, f"flash-attention-3 unavailable: {type(e).__name__}"


def select_attention():
    """The attention path, printed: ("fa3", its module), ("flex", None) or ("sdpa", None). By default (auto)
    FA3 where it loads, else SDPA. AUTORESEARCH_ATTENTION=fa3|flex|sdpa forces one: flex runs on CPU too
    (forward only: torch has no CPU backward for it), and a forced fa3 that does not load (it comes from the
    hub) falls back as auto would. FlexAttention is not auto's pick yet: its numerics match SDPA's
    (tests/worker/test_attention.py), its speed on a GPU is unmeasured (bench/gpu_session.sh compares)."""
    choices = ("auto", "fa3", "flex", "sdpa")
    want = os.environ.get("AUTORESEARCH_ATTENTION", "").strip().lower() or "auto"
    if want not in choices:
        raise SystemExit(f"AUTORESEARCH_ATTENTION must be one of {', '.join(choices)}, not {want!r}")
    if want == "flex" and flex_attention is None:  # part of torch, not downloaded: its absence is a set-up error
        raise SystemExit("AUTORESEARCH_ATTENTION=flex, but torch.nn.attention.flex_attention does not import")
    if want in ("flex", "sdpa"):
        path, flash, why = want, None, f"AUTORESEARCH_ATTENTION={want}"
        why += "; forward only on CPU" if want == "flex" and not USE_CUDA else ""
    else:
        flash, why = load_flash_attention()
        if want == "fa3" and flash is None:
            why = f"AUTORESEARCH_ATTENTION=fa3 but {why}; falling back as auto would"
        path = "fa3" if flash is not None else "sdpa"
    print(f"attention: {path}" + (f" ({why})" if why else ""), flush=True)
    return path, flash


# FlexAttention compiled on its own, for the callers that run the model eagerly (evaluate_bpb on the uncompiled
# model, the farm's evaluator): eager flex_attention materialises the T×T scores. Inside the compiled model the
# plain function is traced instead. Only on CUDA (compiling costs seconds on import; the CPU runs it eagerly).
flex_fused = torch.compile(flex_attention, dynamic=False) if USE_CUDA and flex_attention is not None else flex_attention


# ---------------------------------------------------------------------------
# Model


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    window_pattern: str
    value_embeds: bool
    softcap: float


def norm(x):
    return F.rms_norm(x, (x.size(-1),))  # functional RMSNorm: no weights


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # stay in bf16 under autocast (attention kernels want one dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config, layer_idx, flash):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.flash = flash

    def forward(self, x, ve, ve_lambda, cos, sin, window, mask):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            v = v + ve_lambda * ve.view_as(v)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        q, k = q.to(v.dtype), k.to(v.dtype)
        if self.flash is not None:
            y = self.flash.flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0))
            y = y[0] if isinstance(y, tuple) else y
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif isinstance(mask, torch.Tensor):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:  # a FlexAttention BlockMask: only the blocks that meet the window are computed
                called_eagerly = q.is_cuda and not torch.compiler.is_compiling()
                y = (flex_fused if called_eagerly else flex_attention)(q, k, v, block_mask=mask)
            y = y.transpose(1, 2)
        return self.c_proj(y.contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, config, layer_idx, flash):
        super().__init__()
        self.attn = Attention(config, layer_idx, flash)
        self.mlp = MLP(config)

    def forward(self, x, ve, ve_lambda, cos, sin, window, mask):
        x = x + self.attn(norm(x), ve, ve_lambda, cos, sin, window, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config, flash=None, attention=None):
        super().__init__()
        self.config = config
        self.attention = attention or ("fa3" if flash is not None else "sdpa")  # see select_attention
        assert self.attention in ("fa3", "flex", "sdpa") and (flash is not None) == (self.attention == "fa3")
        L, C = config.n_layer, config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        self.blocks = nn.ModuleList([Block(config, i, flash) for i in range(L)])
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)  # untied from wte
        # residual scalars: x_i = resid[i] * x_i + x0[i] * x_0 before each block
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.ve_layers = [i for i in range(L) if config.value_embeds and i % 2 == 1]
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, C) for i in self.ve_layers})
        self.ve_lambdas = nn.Parameter(torch.full((L,), 0.5))
        self.windows = self.layer_windows()
        head_dim = C // config.n_head
        cos, sin = self.rotary_tables(config.sequence_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # FlexAttention block masks for the full sequence, built once (moved by .to() with the buffers)
        self.block_masks = self.flex_masks(config.sequence_len, "cpu") if self.attention == "flex" else {}

    def layer_windows(self):
        cfg = self.config
        pattern = cfg.window_pattern.upper()
        assert pattern and set(pattern) <= {"S", "L"}, f"WINDOW_PATTERN must use S and L only, got {pattern!r}"
        sizes = {"S": cfg.sequence_len // 2, "L": cfg.sequence_len}
        windows = [sizes[pattern[i % len(pattern)]] for i in range(cfg.n_layer)]
        windows[-1] = cfg.sequence_len  # the last layer always sees the whole context
        return windows

    @staticmethod
    def rotary_tables(seq_len, head_dim, base=10000.0):
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        C = self.config.n_embd
        s = 3**0.5 * C**-0.5  # uniform bound with the std of a 1/sqrt(C) normal
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                lin.weight.uniform_(-s, s)
            block.attn.c_proj.weight.zero_()  # blocks start as the identity
            block.mlp.c_proj.weight.zero_()
        nn.init.normal_(self.wte.weight, std=1.0)
        for emb in self.value_embeds.values():
            nn.init.normal_(emb.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)

    @staticmethod
    def block_mask(window, T, device):
        """FlexAttention BlockMask of causal attention within the last `window` positions. create_block_mask
        evaluates the mask_mod over the T×T grid once, here; attention then visits only the blocks it keeps."""
        return create_block_mask(lambda b, h, q, kv: (kv <= q) & (q - kv < window), None, None, T, T, device=device)

    def flex_masks(self, T, device):
        """Block masks for the windows shorter than T. A window that spans T is plain causal attention, which
        SDPA's flash kernel runs with no mask at all: the flex path uses FlexAttention exactly where SDPA
        would need a dense T×T mask."""
        return {w: self.block_mask(w, T, device) for w in set(self.windows) if w < T}

    def _apply(self, fn, recurse=True):  # BlockMasks are not tensors: .to() moves them along with the buffers
        super()._apply(fn, recurse)
        self.block_masks = {w: m.to(self.cos.device) for w, m in self.block_masks.items()}
        return self

    def masks(self, T, device):
        """Per window: None where plain causal attention will do, else a FlexAttention block mask (flex path)
        or a boolean sliding-window mask for SDPA."""
        if self.attention == "flex":
            masks = self.block_masks if T == self.config.sequence_len else self.flex_masks(T, device)
            return {w: masks.get(w) for w in set(self.windows)}
        out = {}
        for w in set(self.windows):
            if w >= T:
                out[w] = None
            else:
                i = torch.arange(T, device=device)
                out[w] = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < w)
        return out

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        masks = self.masks(T, idx.device)
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            w = self.windows[i]
            x = block(x, ve, self.ve_lambdas[i], cos, sin, w, masks[w])
        x = norm(x)
        cap = self.config.softcap
        logits = cap * torch.tanh(self.lm_head(x).float() / cap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction=reduction)

    def num_flops_per_token(self):
        """Matmul FLOPs of one forward+backward per token (embedding lookups excluded)."""
        n_matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and "embed" not in n and not n.startswith("wte"))
        attn = sum(12 * self.config.n_embd * min(w, self.config.sequence_len) for w in self.windows)
        return 6 * n_matmul + attn


# ---------------------------------------------------------------------------
# Optimizer: Muon for the block matrices, AdamW for everything else


def zeropower_via_newtonschulz5(G, steps=5):
    """Approximately orthogonalize G with a quintic Newton-Schulz iteration (Muon's core)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()  # bf16 is fast on GPU, slow on CPU
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "buf" not in state:
                    state["buf"] = torch.zeros_like(p)
                buf = state["buf"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                update = zeropower_via_newtonschulz5(g)
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(model):
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    embeddings = [model.wte.weight] + [e.weight for e in model.value_embeds.values()]
    scalars = [model.resid_lambdas, model.x0_lambdas, model.ve_lambdas]
    # AdamW lrs are tuned at width 768; scale them by 1/sqrt(width) as nanochat does
    dim_scale = (model.config.n_embd / 768) ** -0.5
    adam = torch.optim.AdamW(
        [
            dict(params=embeddings, lr=EMBEDDING_LR * dim_scale),
            dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * dim_scale),
            dict(params=scalars, lr=SCALAR_LR),
        ],
        betas=ADAM_BETAS,
        eps=1e-10,
        weight_decay=0.0,
        fused=USE_CUDA,
    )
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    """Learning-rate multiplier as a function of the fraction of the time budget spent."""
    if WARMUP_RATIO > 0 and progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if WARMDOWN_RATIO > 0 and progress > 1.0 - WARMDOWN_RATIO:
        frac = (1.0 - progress) / WARMDOWN_RATIO
        return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * max(frac, 0.0)
    return 1.0


# ---------------------------------------------------------------------------
# Training


def build_model(vocab_size):
    """The model main() trains, before its weights are initialised. The farm's trusted evaluator
    rebuilds the trained model with this function and loads the weights evaluate_bpb handed over,
    so main() must train exactly what this returns. model(x) returns logits [B, T, vocab_size]."""
    n_embd = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    config = GPTConfig(
        sequence_len=MAX_SEQ_LEN,
        vocab_size=vocab_size,
        n_layer=DEPTH,
        n_head=n_embd // HEAD_DIM,
        n_embd=n_embd,
        window_pattern=WINDOW_PATTERN,
        value_embeds=VALUE_EMBEDS,
        softcap=LOGIT_SOFTCAP,
    )
    attention, flash = select_attention()
    return GPT(config, flash=flash, attention=attention)


def main():
    t_start = time.time()
    # the farm assigns every measurement its seed: initialisation and data order follow it
    torch.manual_seed(seed())
    if USE_CUDA:
        torch.cuda.manual_seed(seed())
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device(DEVICE_TYPE)
    autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if USE_CUDA else torch.autocast("cpu", enabled=False)

    tokenizer = Tokenizer.from_directory()
    model = build_model(tokenizer.get_vocab_size()).to(device)
    model.init_weights()
    config = model.config
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.num_flops_per_token()
    print(f"device: {DEVICE_TYPE} | seed: {seed()} | params: {num_params / 1e6:.2f}M | {config}", flush=True)

    # a device batch larger than the whole step would be wasted: clip it (keeps batch mutations safe)
    device_batch = min(DEVICE_BATCH_SIZE, max(TOTAL_BATCH_SIZE // MAX_SEQ_LEN, 1))
    tokens_per_fwdbwd = device_batch * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0, (
        f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN ({tokens_per_fwdbwd})"
    )
    grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_fwdbwd
    optimizers = build_optimizers(model)
    train_model = torch.compile(model, dynamic=False) if USE_CUDA else model
    loader = make_dataloader(tokenizer, device_batch, MAX_SEQ_LEN, "train", device=device, seed=seed())

    step, training_time, smooth_loss = 0, 0.0, 0.0
    while True:
        if USE_CUDA:
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(grad_accum_steps):
            x, y, epoch = next(loader)
            with autocast:
                loss = train_model(x, y)
            (loss / grad_accum_steps).backward()
        progress = min(training_time / TIME_BUDGET, 1.0)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier(progress)
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_f = loss.item()  # syncs with the device
        if not math.isfinite(loss_f) or loss_f > 100:
            print(f"FAIL: loss {loss_f} at step {step}: training diverged", flush=True)
            sys.exit(1)
        dt = time.time() - t0
        step += 1
        if step > EXCLUDED_STEPS:
            training_time += dt
        if step == 1:
            gc.collect()
            gc.freeze()  # Python's GC causes ~500 ms stalls on a large heap; nothing cyclic is made per step
            gc.disable()
        smooth_loss = loss_f if step == 1 else 0.9 * smooth_loss + 0.1 * loss_f
        tok_per_s = TOTAL_BATCH_SIZE / dt
        print(
            f"step {step:05d} | loss {loss_f:.6f} | smooth {smooth_loss:.4f} | lr x{lr_multiplier(progress):.3f} "
            f"| {dt * 1000:.0f} ms | {tok_per_s:,.0f} tok/s | epoch {epoch} | {training_time:.1f}/{TIME_BUDGET:.0f}s",
            flush=True,
        )
        if step > EXCLUDED_STEPS and training_time >= TIME_BUDGET:
            break

    model.eval()
    with autocast:
        val_bpb = evaluate_bpb(model, tokenizer, device_batch)
    trained_steps = max(step - EXCLUDED_STEPS, 1)
    peak_flops = 989.5e12  # H100 dense bf16: MFU is reported against it, as autoresearch does
    mfu = 100 * flops_per_token * TOTAL_BATCH_SIZE * trained_steps / training_time / peak_flops if USE_CUDA else 0.0
    peak_vram_mb = torch.cuda.max_memory_allocated() / 2**20 if USE_CUDA else 0.0
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_time:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {step * TOTAL_BATCH_SIZE / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {DEPTH}")
    print(f"attention:        {model.attention}")


if __name__ == "__main__":
    main()
