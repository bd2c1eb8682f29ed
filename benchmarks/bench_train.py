"""Tokens per second and peak memory of train.py's default model on the device found here.

Usage: python benchmarks/bench_train.py [--steps N] [--seq-len T] [--vocab V]
Runs optimizer steps on random tokens (no prepared data needed) with train.py's own model, optimizers, batch and
device choices, and prints one `key: value` block. The first steps (warm-up, compile) are not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import prepare  # noqa: E402
import train  # noqa: E402


def main() -> int:
    defaults = prepare.source_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default 5)")
    parser.add_argument("--warmup", type=int, default=train.UNTIMED_STEPS, help="untimed steps first")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="sequence length (default: source's)")
    parser.add_argument("--vocab", type=int, default=defaults.vocab_size, help="vocabulary (default: source's)")
    args = parser.parse_args()

    device = train.DEVICE
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(train.SEED)
    capability = torch.cuda.get_device_capability() if device == "cuda" else None
    train.ATTENTION_NAME, train.attention = train.select_attention(device, capability)
    config = train.GPTConfig(sequence_len=args.seq_len, vocab_size=args.vocab, n_layer=train.DEPTH,
                             n_embd=train.MODEL_DIM, head_dim=train.HEAD_DIM, mlp_ratio=train.MLP_RATIO,
                             softcap=train.LOGIT_SOFTCAP)
    model = train.GPT(config).to(device)
    optimizers = train.build_optimizers(model)
    step_model = torch.compile(model) if train.COMPILE else model
    batch = min(train.DEVICE_BATCH_SIZE, max(1, train.TOTAL_BATCH_TOKENS // args.seq_len))
    accum = max(1, train.TOTAL_BATCH_TOKENS // (batch * args.seq_len))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast(
        device, enabled=False)
    elapsed = 0.0
    for step in range(args.warmup + args.steps):
        train.sync(device)
        t0 = time.time()
        for _ in range(accum):
            x = torch.randint(0, args.vocab, (batch, args.seq_len), device=device)
            with autocast:
                loss = step_model(x, torch.roll(x, -1, dims=1))
            (loss / accum).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        train.sync(device)
        if step >= args.warmup:
            elapsed += time.time() - t0
    tokens = args.steps * accum * batch * args.seq_len
    print(prepare.format_summary({
        "device": device, "attention": train.ATTENTION_NAME, "threads": torch.get_num_threads(),
        "num_params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "tokens_per_step": accum * batch * args.seq_len, "timed_steps": args.steps,
        "tokens_per_second": round(tokens / elapsed), "seconds_per_step": elapsed / args.steps,
        "peak_memory_mb": train.peak_memory_mb(device)}), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
