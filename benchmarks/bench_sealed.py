"""What sealing costs per experiment: the sandbox, the export of the model and the sealed evaluation.

Prints, for the default target's CPU model on this machine, the median of --n repeats of:
- starting a process in the sandbox against starting it plainly (python -c pass, and python -c "import torch");
- prepare.save_checkpoint (torch.export + save) against a torch.save of the state dict (what the unsealed design saved);
- the sealed evaluation (`prepare.py evaluate --model` in its sandbox, Python and torch start-up included) against the
  in-process evaluation of the same model (prepare.evaluate_model), with the two val_bpb values side by side.

Usage: python benchmarks/bench_sealed.py [--n 3]. Needs the offline cache (`python prepare.py`) and bubblewrap.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import prepare  # noqa: E402
from server import sandbox  # noqa: E402


def median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sandboxed(argv: list[str], work: Path, read_only: tuple[Path, ...] = (), binds=()) -> list[str]:
    env = {"PATH": sandbox.SAFE_PATH, "HOME": "/exp/work", "AUTORESEARCH_CACHE": str(prepare.cache_dir())}
    spec = sandbox.SandboxSpec(work=work, work_inside="/exp/work", env=env, read_only=read_only, binds=binds)
    return sandbox.build_argv(spec, argv)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3, help="repeats per figure (median)")
    args = parser.parse_args()
    reason = sandbox.probe()
    if reason:
        print(f"no sandbox here: {reason}", file=sys.stderr)
        return 2
    import torch

    print(f"machine: {platform.processor() or platform.machine()} | {os.cpu_count()} cores | torch {torch.__version__}"
          f" | load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="bench-sealed-"))
    sandbox.prepare_writable(work, os.geteuid() == 0)
    py = sys.executable
    rows: list[tuple[str, float, float]] = []
    for label, code in (("process start (python -c pass)", "pass"), ("process start + import torch", "import torch")):
        plain = median_time(lambda: subprocess.run([py, "-c", code], check=True), args.n)
        sealed = median_time(lambda: subprocess.run(sandboxed([py, "-c", code], work), check=True), args.n)
        rows.append((label, plain, sealed))

    spec = __import__("importlib.util").util.spec_from_file_location("train_bench", REPO / "train.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    prepared = prepare.load_prepared()
    s = prepared.settings
    config = module.GPTConfig(sequence_len=s.seq_len, vocab_size=s.vocab_size, n_layer=module.DEPTH,
                              n_embd=module.MODEL_DIM, head_dim=module.HEAD_DIM, mlp_ratio=module.MLP_RATIO)
    model = module.GPT(config)
    out = work / "model.pt2"
    saved = median_time(lambda: torch.save(model.state_dict(), work / "state.pt"), args.n)
    exported = median_time(lambda: prepare.save_checkpoint(model, out), args.n)
    rows.append(("save the model (state dict / torch.export program)", saved, exported))

    result = {}
    in_process = median_time(lambda: result.update(inproc=prepare.evaluate_model(model.eval(), prepared)[0]), args.n)
    shutil.copy(REPO / "prepare.py", work / "prepare.py")
    files = tuple(prepare.source_dir() / n for n in ("meta.json", "val.bin", "holdout.bin", "token_bytes.npy"))
    argv = sandboxed([py, "-I", "/exp/eval/prepare.py", "evaluate", "--model", "/exp/in/model"], work, files,
                     ((work, "/exp/eval"), (out, "/exp/in/model")))

    def sealed_eval() -> None:
        proc = subprocess.run(argv, check=True, capture_output=True, text=True)
        result["sealed"] = float(proc.stdout.split("val_bpb:")[1].split()[0])

    sealed_s = median_time(sealed_eval, args.n)
    rows.append(("evaluate (in-process / sealed process, start-up included)", in_process, sealed_s))
    print(f"\n{'step':<60} {'unsealed':>10} {'sealed':>10} {'added':>8}")
    for label, a, b in rows:
        print(f"{label:<60} {a:>9.2f}s {b:>9.2f}s {b - a:>7.2f}s")
    added = sum(b - a for _, a, b in rows[1:])
    print(f"\nval_bpb in-process {result['inproc']:.6f}, sealed {result['sealed']:.6f}, "
          f"difference {abs(result['inproc'] - result['sealed']):.2e}")
    print(f"added per experiment (sandbox + export + sealed evaluation): {added:.2f} s = "
          f"{100 * added / 60:.1f}% of the 60 s CPU budget, {100 * added / 300:.1f}% of a 300 s budget")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
