"""The soak bar: 50 experiments through the whole stack (supervisor, file guard, the real Claude Code CLI, its MCP
server, the engine) with faults injected at random from the default seed, and nothing lost or left behind.

The soak itself lives in benchmarks/soak.py, which prints the figures; this test runs it and asserts the invariants.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOAK_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autoresearch_soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1200)
def test_fifty_experiments_with_random_faults_lose_no_record_and_leave_nothing_behind(
        tmp_path: Path, claude_bin: Path) -> None:
    soak = _load_soak()

    report = soak.run_soak(tmp_path, seed=0, experiments=50, claude=claude_bin)

    figures = "\n".join(report.figures())
    assert report.failures == [], figures
    assert report.harness_exit == 0 and report.supervisor["state"] == "STOPPED", figures
    ids = [e.id for e in report.experiments]
    assert len(ids) >= 50 and ids == list(range(1, len(ids) + 1)), figures
    assert report.records_lost == 0 and report.leftovers == [], figures
    injected = Counter(f.kind for f in report.faults)
    assert set(injected) == set(soak.FAULTS_PER_50), figures
    assert report.survived == len(report.faults), figures
    # The faults left their marks: the hard limit, the crash, the guard and the supervisor all had work to do.
    statuses = Counter(e.status for e in report.experiments)
    assert statuses["crash"] >= 1 and statuses["timeout"] >= 1 and statuses["invalid"] >= 1, figures
    assert report.violations >= 1, figures
    assert sum(report.refusals.values()) >= injected["edit_locked"], figures
    assert report.refusals["hook"] >= 1 and report.refusals["agent"] >= 1, figures  # the hook and the deny rules
    assert report.supervisor["restarts"] >= injected["agent_death"], figures
    assert report.supervisor["stalls"] >= 1 and report.supervisor["backoffs"] >= 1, figures
    assert any(e.decision == "keep" and not e.is_baseline for e in report.experiments), figures
