"""The locked evaluation of the speed target: correct on every case first, then how much faster than the reference.

    python evaluate.py CANDIDATE.py     # prints a `---` summary block; a `FAIL:` line and exit 1 when wrong

What it guards against, and how:

- A wrong answer: the candidate's output on fixed edge cases and on every timed input is compared with the reference
  implementation's, computed in this process. One mismatch fails the experiment, however fast it was.
- A forged time: the candidate never runs in this process. It runs in worker subprocesses; its answers come back as
  data; its cost is the CPU time the kernel accounts to its worker (RUSAGE_CHILDREN), which it cannot print or patch. The
  start-up cost of a worker is measured by one that computes nothing and subtracted.
- Answers prepared in advance: the timed inputs are drawn from a fresh random seed at every evaluation.
- A quiet machine: each round times the reference and the candidate back to back on the same inputs, in alternating
  order, so load slows both alike; the score is the reference's least CPU time over the rounds divided by the
  candidate's (min-of-k: interference only adds time), a ratio, not a duration. The baseline scores about 1.0
  whatever the machine; `speedup_min`/`speedup_max` are the per-round ratios' range, the noise to expect.
- Work moved out of the measured process: on Linux this process is a child subreaper, so processes a worker starts
  are reaped here and their CPU time is counted; a candidate whose wall time is far above its CPU time, compared
  with the reference's in the same rounds, fails; one that leaves processes running fails.

Not covered: a process the candidate leaves running between evaluations (the harness kills what an experiment
leaves behind), and timing differences below the printed spread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# ---- Settings (locked with this file) ----
ROUNDS = 7             # reference/candidate pairs timed, interleaved
INPUTS = 3             # timed inputs per round, drawn fresh each evaluation
SIZE = 1600            # length of each timed input
WORKER_TIMEOUT_S = 60  # one worker run; the reference takes about 0.3 s on a 2-core x86_64 container
OFFLOAD_FACTOR = 2.0   # candidate wall/CPU may exceed the reference's by this factor (plus 0.5) before it fails
RESULT_MARK = "AUTORESEARCH-RESULT "

CASES = [
    [], [7], [1, 2], [2, 1], [1, 1, 1], [3, 1, 2], list(range(40)), list(range(40, 0, -1)),
    [5, -3, 5, -3, 0, 0, 9, -9], [2**40, -(2**40), 0, 2**40],
    random.Random(1).choices(range(-5, 6), k=300), random.Random(2).sample(range(10_000), 500),
]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


# ---- Worker: runs in a subprocess, imports one implementation, answers on its last line ----

def worker(path: str) -> None:
    inputs = json.loads(sys.stdin.read())
    outputs = []
    if path != "-":  # "-": the null worker, which measures start-up and I/O only
        module = _load(Path(path), "target")
        outputs = [module.solve(list(values)) for values in inputs]
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(outputs) + "\n")
    sys.stdout.flush()


# ---- Parent: never imports the candidate ----

def run_worker(path: str, inputs: list[list[int]]) -> tuple[list[object], float]:
    """(outputs, wall seconds) of one worker run."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(Path(__file__).resolve()), "--worker", path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(inputs), timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        fail(f"{path} took more than {WORKER_TIMEOUT_S} s on {len(inputs)} inputs")
    wall = time.perf_counter() - started
    reap_descendants(proc.pid)
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        fail(f"{Path(path).name} exited with code {proc.returncode}: {last}")
    lines = [line for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        fail(f"{Path(path).name} printed no result line")
    return json.loads(lines[-1][len(RESULT_MARK):]), wall


def become_subreaper() -> bool:
    """Make processes a worker leaves behind our children when it exits, so their CPU time is counted too."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER (Linux)
    except (OSError, AttributeError):
        return False


def reap_descendants(pgid: int) -> None:
    """Kill what is left of a worker's process group and reap every child, adding their CPU to RUSAGE_CHILDREN."""
    try:
        os.killpg(pgid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 5.0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                fail("the candidate left processes running after its worker exited; compute in the worker itself")
            time.sleep(0.01)


def timed(path: str, inputs: list[list[int]]) -> tuple[list[object], float, float]:
    """(outputs, CPU seconds the kernel accounted to the worker and the children it waited for, wall seconds).

    The worker is reaped before this returns, so its usage is the change in RUSAGE_CHILDREN around the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outputs, wall = run_worker(path, inputs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return outputs, cpu, wall


def fail(message: str) -> None:
    sys.stdout.write(f"FAIL: {message}\n")
    sys.stdout.flush()
    sys.exit(1)


def check(name: str, got: list[object], expected: list[int], inputs: list[list[int]]) -> None:
    if len(got) != len(expected):
        fail(f"{name}: {len(got)} answers for {len(expected)} inputs")
    for i, (g, e) in enumerate(zip(got, expected)):
        if type(g) is not int or g != e:
            shown = inputs[i] if len(inputs[i]) <= 12 else f"{inputs[i][:12]}... ({len(inputs[i])} values)"
            fail(f"{name}: wrong answer on input {shown}: expected {e}, got {g!r}")


def evaluate(candidate: Path) -> None:
    started = time.perf_counter()
    become_subreaper()
    if not candidate.is_file():
        fail(f"candidate {candidate} does not exist")
    reference_path = Path(__file__).resolve().with_name("reference.py")
    reference = _load(reference_path, "reference")
    check("fixed cases", timed(str(candidate), CASES)[0], [reference.solve(list(c)) for c in CASES], CASES)

    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    inputs = [[rng.randint(-1000, 1000) for _ in range(SIZE)] for _ in range(INPUTS)]
    expected = [reference.solve(list(values)) for values in inputs]
    ref_cpu, cand_cpu, ref_wall, cand_wall, null_cpu = [], [], [], [], []
    for r in range(ROUNDS):
        order = [("reference", str(reference_path)), ("candidate", str(candidate))]
        for name, path in (order if r % 2 == 0 else order[::-1]):
            outputs, cpu, wall = timed(path, inputs)
            check(f"{name}, round {r + 1}", outputs, expected, inputs)
            (ref_cpu if name == "reference" else cand_cpu).append(cpu)
            (ref_wall if name == "reference" else cand_wall).append(wall)
        null_cpu.append(timed("-", inputs)[1])
    # Interference only ever adds time, so the least time each side needed is its best estimate (min-of-k); the
    # rounds interleave, so both minima come from the same stretch of the machine's load.
    null = min(null_cpu)
    floor = 0.002  # below this the accounting's resolution dominates
    ref_best, cand_best = max(min(ref_cpu) - null, floor), max(min(cand_cpu) - null, floor)
    ratios = [max(r - null, floor) / max(c - null, floor) for r, c in zip(ref_cpu, cand_cpu)]
    cand_offload = statistics.median(cand_wall) / max(statistics.median(cand_cpu), floor)
    ref_offload = statistics.median(ref_wall) / max(statistics.median(ref_cpu), floor)
    if cand_offload > OFFLOAD_FACTOR * ref_offload + 0.5:
        fail(f"the candidate's wall time is {cand_offload:.1f}x its CPU time (the reference's: {ref_offload:.1f}x): "
             "work done outside the measured process does not count as a speed-up")
    print("---")
    print(f"speedup:            {ref_best / cand_best:.4f}")
    print(f"speedup_min:        {min(ratios):.4f}")
    print(f"speedup_max:        {max(ratios):.4f}")
    print(f"cases_passed:       {len(CASES) + ROUNDS * INPUTS}")
    print(f"reference_cpu_ms:   {1000 * ref_best:.1f}")
    print(f"candidate_cpu_ms:   {1000 * cand_best:.1f}")
    print(f"worker_startup_ms:  {1000 * null:.1f}")
    print(f"eval_seconds:       {time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    elif len(sys.argv) == 2:
        evaluate(Path(sys.argv[1]).resolve())
    else:
        print("usage: evaluate.py CANDIDATE.py", file=sys.stderr)
        sys.exit(2)
