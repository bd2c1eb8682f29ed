"""`autoresearch results` on a long night: every experiment listable, failures not called unverified, agent text shown
with visible escapes instead of being obeyed by the terminal; and the report's counts in plain English."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import render_markdown
from server.config import load_config
from server.ledger import Experiment
from server.runstate import init_run


def experiment(i: int, **changes: object) -> Experiment:
    base = Experiment(
        id=i, tag="night", parent="a" * 40, commit="b" * 40, description=f"idea {i}", hypothesis=None, diff="",
        status="ok", metric_name="val_loss", metric=1.0 - i * 0.001, verified=True, metrics={},
        started_at="2026-11-23T00:00:00.000Z", finished_at="2026-11-23T00:05:00.000Z", duration_s=300.0,
        train_s=290.0, eval_s=5.0, peak_memory_mb=None, failure=None, log_tail="", log_path="", fingerprint=None,
        is_baseline=i == 1, caller=None, decision="keep" if i == 1 else "discard", decision_reason=None,
        kept_commit="a" * 40 if i == 1 else None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def night(workspace: Path) -> Path:
    """A run whose ledger holds 250 experiments: crashes among them, one old record with terminal escapes."""
    config = load_config(workspace)
    info = init_run(config, "night")
    rows = []
    for i in range(1, 251):
        if i % 10 == 0:
            rows.append(experiment(i, status="crash", metric=None, verified=False, failure="boom"))
        elif i == 7:  # written before agent text was checked: the listing must not replay it to the terminal
            rows.append(experiment(i, description="\x1b[2J\x1b]0;owned\x07cleared"))
        elif i == 8:
            rows.append(experiment(i, verified=False))  # compatibility mode: the script printed the metric
        else:
            rows.append(experiment(i))
    (info.run_dir / "experiments.jsonl").write_text(
        "".join(json.dumps({"type": "experiment", **e.to_json()}) + "\n" for e in rows), encoding="utf-8")
    return workspace


def results(capsys: pytest.CaptureFixture[str], workspace: Path, *args: str) -> tuple[int, list[str], str]:
    code = main(["results", "--workspace", str(workspace), *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_a_night_of_250_experiments_is_listed_whole_with_all_or_any_last_n(night: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = results(capsys, night, "--all")
    assert code == 0 and len(lines) == 251 and err == ""
    code, lines, _ = results(capsys, night, "--last", "500")
    assert code == 0 and len(lines) == 251, "more than there are lists them all, without a traceback"
    code, lines, err = results(capsys, night, "--last", "3")
    assert code == 0 and [ln.split()[0] for ln in lines[1:]] == ["248", "249", "250"]
    assert "the last 3 of 250 experiments; --all lists every one" in err
    code, lines, err = results(capsys, night)
    assert code == 0 and len(lines) == 201 and "--all" in err
    code, out, err = results(capsys, night, "--all", "--json")
    assert code == 0 and len(json.loads("\n".join(out))["experiments"]) == 250


def test_a_non_positive_last_is_refused_with_the_value(night: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = results(capsys, night, "--last", "0")
    assert code == 2 and "--last must be at least 1, got 0" in err


def test_only_an_ok_result_from_a_self_reported_metric_is_marked_unverified(night: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, lines, _ = results(capsys, night, "--all")
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert "crash" in rows["10"] and "[unverified]" not in rows["10"]
    assert rows["8"].endswith("[unverified]")
    assert sum("[unverified]" in ln for ln in lines) == 1


def test_terminal_escapes_in_a_stored_description_are_shown_not_obeyed(night: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, lines, _ = results(capsys, night, "--all")
    row = next(ln for ln in lines if ln.split()[0] == "7")
    assert "\x1b" not in "\n".join(lines) and "\x07" not in "\n".join(lines)
    assert "\\x1b[2J\\x1b]0;owned\\x07cleared" in row


def test_the_report_counts_one_kept_change_in_the_singular() -> None:
    rows = [experiment(1), experiment(2, decision="keep", kept_commit="c" * 40), experiment(3)]
    text = render_markdown("night", "val_loss", "minimize", rows)
    assert "Kept: 1 change (plus the baseline)" in text
    rows.append(experiment(4, decision="keep", kept_commit="d" * 40))
    assert "Kept: 2 changes (plus the baseline)" in render_markdown("night", "val_loss", "minimize", rows)
