"""The overhead benchmark runs end to end with tiny counts and prints every figure it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT
from server.summary import parse_summary

SCRIPT = REPO_ROOT / "benchmarks" / "bench_overhead.py"


@pytest.mark.slow
def test_the_overhead_benchmark_prints_bare_harness_and_overhead_figures_and_exits_0(
        tmp_path: Path, isolated_home: Path) -> None:
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "no-cache")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--n", "2", "--sleep", "0", "--default-target"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("machine: ") and " cores | " in out.splitlines()[0]
    assert "bare loop (python; grep)" in out
    for variant in ("stdout, engine", "stdout, mcp", "checkpoint, engine", "checkpoint, mcp"):
        assert f"harness {variant}" in out
    assert "git rev-parse" in out and "child process: evaluation" in out, "the breakdown must name the calls"
    assert "skipped: no prepared data" in out, "without a cache the default target is skipped, not failed"
    figures = parse_summary(out)
    assert figures["bare_median_s"] > 0
    for key in ("stdout_engine", "stdout_mcp", "checkpoint_engine", "checkpoint_mcp"):
        assert figures[f"{key}_median_s"] > 0
        assert figures[f"{key}_ratio"] == pytest.approx(figures[f"{key}_median_s"] / figures["bare_median_s"], rel=1e-2)
        assert isinstance(figures[f"{key}_overhead_median_s"], float)
    assert figures["checkpoint_mcp_overhead_without_evaluation_median_s"] < figures["checkpoint_mcp_overhead_median_s"]
    assert figures["target_met"] in ("yes", "no")
    assert figures["default_target"] == "skipped"
