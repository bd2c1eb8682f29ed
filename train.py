"""The experiment: a small GPT trained for a fixed time budget. This is the one file the agent edits.

Run by hand (`python train.py`) it trains, evaluates with prepare.py's evaluation and prints a summary block.
Under the harness (AUTORESEARCH_CHECKPOINT set) it runs in a sandbox that sees the training data only, trains, exports
the model through prepare.save_checkpoint and prints the block without val_bpb; the harness scores the exported
program in another sandbox with the locked prepare.py. No code of this file runs there.

Contract with the evaluation: `model(idx)` returns logits of shape (batch, seq, >= vocab_size) and can be captured by
torch.export (tensor operations, no data-dependent Python branches in forward). The seed comes from the harness
(AUTORESEARCH_SEED, a fresh one per run) and the budget is measured on prepare.training_clock(), the clock the harness
enforces.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare


def pick_device() -> str:
    """The fastest device present: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def by_device(cuda: object, mps: object, cpu: object) -> object:
    return {"cuda": cuda, "mps": mps, "cpu": cpu}[DEVICE]


# ---- Hyperparameters (edit these directly, no CLI flags) ----

DEVICE = pick_device()
SEED = 42                                        # seeds the weights and the data order (by hand; the harness sets one); fixed
DEPTH = by_device(8, 6, 4)                       # transformer blocks
MODEL_DIM = by_device(512, 384, 128)             # residual stream width
HEAD_DIM = by_device(128, 64, 32)                # width of one attention head
MLP_RATIO = 4                                    # MLP hidden width / MODEL_DIM; range: 2..6
TOTAL_BATCH_TOKENS = by_device(2**19, 2**16, 2**12)  # tokens per optimizer step
DEVICE_BATCH_SIZE = by_device(128, 32, 16)       # sequences per forward pass (gradient accumulation fills the rest)
MATRIX_LR = 0.04                                 # Muon learning rate for the blocks' weight matrices; range: 0.005..0.2 log
EMBED_LR = 0.3                                   # AdamW learning rate for the token embedding; range: 0.03..1.5 log
HEAD_LR = 0.008                                  # AdamW learning rate for the output head; range: 0.001..0.05 log
ADAM_BETAS = (0.8, 0.95)                         # AdamW betas
MUON_MOMENTUM = 0.95                             # Muon (Nesterov) momentum; range: 0.8..0.99
WEIGHT_DECAY = 0.0                               # decoupled weight decay on the matrices; range: 0..0.2
WARMDOWN_RATIO = 0.5                             # last share of the budget with the learning rate decaying to 0; range: 0.1..0.9
FINAL_LR_FRAC = 0.05                             # learning rate at the end, as a share of the peak; range: 0..0.3
LOGIT_SOFTCAP = 15.0                             # tanh cap on the logits; range: 5..50 log
UNTIMED_STEPS = by_device(10, 2, 1)              # first steps (compile, warm-up) not counted in the budget
COMPILE = DEVICE == "cuda"                       # torch.compile: worth it on CUDA, costly on two CPU cores
MAX_LOSS = 100.0                                 # a training loss above this (or NaN) fails the run; fixed


# ---- Model ----

@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_embd: int
    head_dim: int
    mlp_ratio: int = 4
    softcap: float = 15.0


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def select_attention(device_type: str, capability: tuple[int, int] | None = None) -> tuple[str, object]:
    """FlashAttention-3 on Hopper when its package is installed; PyTorch's fused SDPA everywhere else."""
    if device_type == "cuda" and capability is not None and capability[0] == 9:
        try:
            from flash_attn_interface import flash_attn_func  # type: ignore[import-not-found]

            def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                out = flash_attn_func(q, k, v, causal=True)
                return out[0] if isinstance(out, tuple) else out
            return "flash-attention-3", fa3
        except ImportError:
            pass

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (B, T, H, D) in and out
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return out.transpose(1, 2)
    return "sdpa", sdpa


ATTENTION_NAME, attention = select_attention("cpu")  # main() picks again for the device it trains on


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_embd // config.head_dim
        self.head_dim = config.head_dim
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # QK-norm
        y = attention(q, k, v)
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        cos, sin = rotary_tables(config.sequence_len, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)  # rebuilt from the config, not saved
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = 3**0.5 * self.config.n_embd**-0.5  # uniform with the std of 1/sqrt(fan_in)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) in float32, or the mean cross-entropy when targets are given."""
        T = idx.size(1)
        cos, sin = self.cos[:, :T].to(self.wte.weight.dtype), self.sin[:, :T].to(self.wte.weight.dtype)
        x = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(rms_norm(x)).float()
        logits = self.config.softcap * torch.tanh(logits / self.config.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ---- Optimizer: Muon for the blocks' matrices, AdamW for the rest ----

def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate U V^T of g's SVD with a quintic Newton-Schulz iteration (the heart of Muon)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if transposed else x).type_as(g)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update for each matrix is orthogonalized, scaled so that tall and wide matrices move alike."""

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))  # Nesterov
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(model: GPT) -> list[torch.optim.Optimizer]:
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    adamw = torch.optim.AdamW([dict(params=[model.wte.weight], lr=EMBED_LR),
                               dict(params=[model.lm_head.weight], lr=HEAD_LR)],
                              betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY)
    for opt in (adamw, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return [adamw, muon]


def lr_multiplier(progress: float) -> float:
    """1 until the warmdown, then linear down to FINAL_LR_FRAC at the end of the budget."""
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    frac = min(1.0, (1 - progress) / WARMDOWN_RATIO)
    return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * frac


# ---- Measuring ----

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
                   "4090": 165e12, "3090": 71e12}  # dense bf16 tensor-core peaks by device-name fragment


def device_peak_flops(device_type: str) -> float | None:
    """Peak bf16 FLOP/s of the device in use, or None when it is not known (CPU, MPS, unlisted GPUs)."""
    if device_type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for fragment, flops in PEAK_BF16_FLOPS.items():
        if fragment in name:
            return flops
    return None


def peak_memory_mb(device_type: str) -> float:
    """Peak accelerator memory, or the process's peak resident memory on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if device_type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6 per weight of the matmuls plus attention's score and value products."""
    cfg = model.config
    matmul_params = sum(p.numel() for p in model.blocks.parameters()) + model.lm_head.weight.numel()
    return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_embd * cfg.sequence_len


def summary_block(values: dict[str, object]) -> str:
    return prepare.format_summary(values)


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


# ---- Training ----

def main() -> None:
    global ATTENTION_NAME, attention
    t_start = time.time()
    clock = prepare.training_clock()
    seed = prepare.run_seed(SEED)
    torch.manual_seed(seed)
    device_type = DEVICE
    if device_type == "cpu":
        torch.set_num_threads(prepare.cpu_threads())
    capability = torch.cuda.get_device_capability() if device_type == "cuda" else None
    ATTENTION_NAME, attention = select_attention(device_type, capability)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    checkpoint = prepare.checkpoint_path()
    prepared = prepare.load_prepared(part="train" if checkpoint is not None else "all")
    seq_len = prepared.settings.seq_len
    budget = prepare.time_budget(device_type)
    batch_size = min(DEVICE_BATCH_SIZE, max(1, TOTAL_BATCH_TOKENS // seq_len))
    grad_accum = max(1, TOTAL_BATCH_TOKENS // (batch_size * seq_len))
    config = GPTConfig(sequence_len=seq_len, vocab_size=prepared.settings.vocab_size, n_layer=DEPTH,
                       n_embd=MODEL_DIM, head_dim=HEAD_DIM, mlp_ratio=MLP_RATIO, softcap=LOGIT_SOFTCAP)
    model = GPT(config).to(device_type)
    num_params = sum(p.numel() for p in model.parameters())
    optimizers = build_optimizers(model)
    step_model = torch.compile(model) if COMPILE else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device_type == "cuda" else torch.autocast(
        device_type, enabled=False)
    loader = prepare.train_batches(prepared, batch_size, seq_len, seed=seed)
    print(f"device {device_type} | attention {ATTENTION_NAME} | params {num_params / 1e6:.2f}M | "
          f"batch {batch_size}x{seq_len}x{grad_accum} | budget {budget:.0f}s", flush=True)

    training_time, step, tokens = 0.0, 0, 0
    while True:
        sync(device_type)
        t0 = clock()
        for _ in range(grad_accum):
            x, y, _epoch = next(loader)
            x, y = torch.from_numpy(x).to(device_type), torch.from_numpy(y).to(device_type)
            with autocast:
                loss = step_model(x, y)
            (loss / grad_accum).backward()
        multiplier = lr_multiplier(training_time / budget)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * multiplier
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if not math.isfinite(loss_value) or loss_value > MAX_LOSS:
            fail(f"training loss is {loss_value} at step {step}; the run diverged")
        sync(device_type)
        dt = clock() - t0
        step += 1
        tokens += grad_accum * batch_size * seq_len
        if step > UNTIMED_STEPS:
            training_time += dt
        if step % 10 == 0 or step <= 3:
            print(f"step {step:5d} | loss {loss_value:.4f} | lr x{multiplier:.2f} | {dt * 1000:.0f} ms | "
                  f"{training_time:.1f}/{budget:.0f}s", flush=True)
        if step > UNTIMED_STEPS and training_time >= budget:
            break

    peak_flops = device_peak_flops(device_type)
    mfu = "unknown" if peak_flops is None or training_time == 0 else \
        f"{100 * flops_per_token(model) * tokens / training_time / peak_flops:.2f}"
    results: dict[str, object] = {}
    if checkpoint is not None:
        if ATTENTION_NAME != "sdpa":  # the evaluator runs aten operators only; SDPA computes the same function
            ATTENTION_NAME, attention = select_attention("cpu")
        prepare.save_checkpoint(model, checkpoint, config)
    else:
        model.eval()
        results["val_bpb"], _ = prepare.evaluate_model(model, prepared, device=device_type)
    results.update({
        "training_seconds": training_time,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_memory_mb(device_type),
        "mfu_percent": mfu,
        "total_tokens_M": tokens / 1e6,
        "tokens_per_second": round(tokens / max(training_time, 1e-9)),
        "num_steps": step,
        "num_params_M": num_params / 1e6,
        "depth": DEPTH,
        "device": device_type,
        "seed": seed,
    })
    print(summary_block(results), end="", flush=True)


if __name__ == "__main__":
    try:
        main()
    except prepare.PrepareError as exc:
        print(f"FAIL: {exc}", flush=True)
        sys.exit(1)
