"""`autoresearch report`: report.md in plain words, progress.png, and a report.html that needs no network."""

from __future__ import annotations

import re
from pathlib import Path

from run_builder import BuiltRun, bulk_ledger, experiment

from server.ledger import Ledger

from harness.report import Night, render_markdown, write_report


def test_the_markdown_counts_in_plain_grammar_and_tells_the_night_and_the_audit(run: BuiltRun) -> None:
    files = write_report(run.run_dir, run.tag, "val_bpb", "minimize", run.ledger.experiments())
    text = files.markdown.read_text()
    assert "Kept: 2 changes (plus the baseline); discarded: 4; pending: 1" in text
    assert "1 result is UNVERIFIED" in text
    assert "2 sessions, 1 restart, 1 resume, 1 stall, 1 backoff" in text and "Cost: $3.42" in text
    assert "Chain intact: 23 records, 17 tool calls, 2 refused or blocked." in text
    assert "| 4 | crash | RuntimeError: shape mismatch |" in text


def test_one_kept_change_is_written_in_the_singular(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append_experiment(experiment(1, metric=1.1, description="baseline", is_baseline=True))
    ledger.append_decision(1, "keep", "baseline", "b" * 40)
    ledger.append_experiment(experiment(2, metric=1.0, description="better"))
    ledger.append_decision(2, "keep", "better", "c" * 40)
    text = render_markdown("t", "val_bpb", "minimize", ledger.experiments(), Night(None, None, None, None))
    assert "Kept: 1 change (plus the baseline)" in text
    assert "No supervisor ran on this run" in text


def test_the_html_report_is_one_self_contained_file_with_the_chart_inline(run: BuiltRun, tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    run.ledger.append_experiment(experiment(9, status="crash", description=hostile, failure="boom"))
    files = write_report(run.run_dir, run.tag, "val_bpb", "minimize", run.ledger.experiments(), tmp_path / "out")
    page = files.html.read_text()  # type: ignore[union-attr]
    assert "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from anywhere
    assert "<link" not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Chain intact" in page and "raise learning rate to 0.04" in page
    assert files.plot is not None and files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_survives_a_long_night_with_outliers(tmp_path: Path) -> None:
    ledger = bulk_ledger(tmp_path / "night", 300, seed=5)
    files = write_report(ledger.run_dir, "night", "val_bpb", "minimize", ledger.experiments())
    assert files.plot is not None and files.plot.stat().st_size > 10_000


def test_the_report_command_writes_all_three_files_and_serve_refuses_a_dashboard_without_http(
        workspace: Path, capsys: object) -> None:
    from harness.cli import main

    assert main(["init", "--workspace", str(workspace), "--tag", "t1"]) == 0
    run_dir = workspace / "runs" / "t1"
    ledger = Ledger(run_dir)
    ledger.append_experiment(experiment(1, metric=1.1, description="baseline", is_baseline=True, tag="t1"))
    ledger.append_decision(1, "keep", "baseline", "b" * 40)
    assert main(["report", "--workspace", str(workspace)]) == 0
    assert {p.name for p in run_dir.iterdir()} >= {"report.md", "report.html", "progress.png"}
    assert main(["serve", "--workspace", str(workspace), "--dashboard"]) == 2
    assert "--dashboard needs --http" in capsys.readouterr().err  # type: ignore[attr-defined]
