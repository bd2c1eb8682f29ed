"""The dashboard as a person sees it: the real page in headless Chromium, on a run with every status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser import serve
from playwright.sync_api import expect
from run_builder import BuiltRun, experiment, write_supervisor

from server.jsonl import atomic_write_text
from server.private import private_folder

pytestmark = pytest.mark.slow

WAIT_MS = 10_000  # every wait on the page is bounded


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)


def test_the_page_draws_the_chart_lists_every_experiment_and_shows_a_diff_on_click(
        page: Any, run: BuiltRun, artifacts: Path) -> None:
    with serve(run.run_dir) as served:
        open_page(page, served.url)
        page.wait_for_selector("#chart[data-drawn='8'] canvas", timeout=WAIT_MS)
        canvas = page.locator("#chart canvas").first.bounding_box()
        assert canvas is not None and canvas["width"] > 300 and canvas["height"] > 200
        ids = page.locator("#experiments tbody tr").evaluate_all("rows => rows.map(r => Number(r.dataset.id))")
        assert sorted(ids) == [1, 2, 3, 4, 5, 6, 7, 8]
        statuses = set(page.locator("#experiments tbody td:nth-child(2)").all_inner_texts())
        assert statuses == {"ok", "crash", "timeout", "invalid"}
        assert "unverified" in page.locator("#experiments tbody tr[data-id='7']").inner_text()
        key = page.locator("#chart-key").inner_text()
        for marker in ("running best", "kept", "discarded", "pending", "crash", "timeout", "invalid", "unverified"):
            assert marker in key

        page.click("#experiments tbody tr[data-id='2']")
        page.wait_for_selector("#detail[data-id='2']", timeout=WAIT_MS)
        diff = page.locator("#detail pre.diff").inner_text()
        assert "-LEARNING_RATE = 0.02" in diff and "+LEARNING_RATE = 0.03" in diff
        assert "val_bpb: 1.087" in page.locator("#detail pre.log").inner_text()

        night = page.locator("#night").inner_text()
        assert "RUNNING" in night and "stall" in night and "$3.42" in night
        audit = page.locator("#audit").inner_text()
        assert "chain intact" in audit and "run_experiment" in audit and "prepare.py" in audit
        page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)


def test_a_new_experiment_and_its_decision_appear_without_a_reload(page: Any, run: BuiltRun, artifacts: Path) -> None:
    with serve(run.run_dir) as served:
        open_page(page, served.url)
        page.evaluate("window.__same_document = true")
        atomic_write_text(run.run_dir / "inflight.json",
                          '{"id": 9, "description": "lower the final LR fraction", "started_at": 1.0e12, '
                          '"deadline": 1.0e12}')
        expect(page.locator("#now")).to_contain_text("lower the final LR fraction", timeout=WAIT_MS)
        (run.run_dir / "inflight.json").unlink()
        run.ledger.append_experiment(experiment(9, metric=1.0712, description="lower the final LR fraction"))
        page.wait_for_selector("#experiments tbody tr[data-id='9']", timeout=WAIT_MS)
        page.wait_for_selector("#chart[data-drawn='9']", timeout=WAIT_MS)
        run.ledger.append_decision(9, "keep", "improved", "c" * 40)
        expect(page.locator("#experiments tbody tr[data-id='9']")).to_contain_text("kept", timeout=WAIT_MS)
        write_supervisor(run.run_dir, state="BACKOFF", restarts=2)
        expect(page.locator("#night")).to_contain_text("BACKOFF", timeout=WAIT_MS)
        assert page.evaluate("window.__same_document") is True  # the page was never reloaded
        assert "1.071200" in page.locator("#headline").inner_text()
        page.screenshot(path=str(artifacts / "dashboard-live.png"), full_page=True)


def test_filters_and_search_narrow_the_table(page: Any, run: BuiltRun) -> None:
    with serve(run.run_dir) as served:
        open_page(page, served.url)
        page.select_option("#f-status", "crash")
        expect(page.locator("#experiments")).to_have_attribute("data-rows", "1", timeout=WAIT_MS)
        assert page.locator("#experiments tbody tr").get_attribute("data-id") == "4"
        page.select_option("#f-status", "")
        page.select_option("#f-decision", "keep")
        expect(page.locator("#experiments")).to_have_attribute("data-rows", "3", timeout=WAIT_MS)
        page.select_option("#f-decision", "")
        page.fill("#f-q", "gelu")
        expect(page.locator("#experiments")).to_have_attribute("data-rows", "1", timeout=WAIT_MS)
        assert "swap ReLU for GELU" in page.locator("#experiments tbody").inner_text()


def test_text_written_by_the_agent_is_shown_as_text_never_run_as_markup(page: Any, run: BuiltRun) -> None:
    hostile = '<img src=x onerror="document.body.dataset.pwned=1"><script>document.body.dataset.pwned=1</script>'
    run.ledger.append_experiment(experiment(9, metric=1.2, description=hostile))
    with serve(run.run_dir) as served:
        open_page(page, served.url)
        page.click("#experiments tbody tr[data-id='9']")
        page.wait_for_selector("#detail[data-id='9']", timeout=WAIT_MS)
        assert page.locator("#detail .detail-title").inner_text() == hostile
        assert page.locator("#experiments img, #detail img, #experiments script, #detail script").count() == 0
        assert page.evaluate("document.body.dataset.pwned") is None


def test_fields_a_later_run_may_carry_are_shown_when_present(page: Any, tmp_path: Path) -> None:
    """Seeds, confirmation runs, unsealed results, devices, a holdout and a noise floor appear when the run has
    them (written here as extra keys on the ledger lines and run.json, and the holdout in the private folder)."""
    from run_builder import every_status_run

    built = every_status_run(tmp_path / "runs" / "demo")
    lines = (built.run_dir / "experiments.jsonl").read_text().splitlines()
    atomic_write_text(built.run_dir / "run.json", '{"tag": "demo", "noise_floor": 0.002}')
    built.run_dir.joinpath("experiments.jsonl").write_text("\n".join(lines) + "\n")
    from harness.dashboard import data as data_module

    extra = {7: {"seed": 1, "sealed": False, "device": "cuda:0"}, 2: {"seed": 0}}
    held = private_folder(built.run_dir) / "holdout.jsonl"
    held.write_text("".join(json.dumps({"experiment_id": i, "holdout_score": v}) + "\n"
                            for i, v in ((2, 1.0902), (7, 1.0851))))
    original = data_module.Ledger.experiments

    def with_extras(self: Any) -> list[Any]:
        out = []
        for exp in original(self):
            fields = extra.get(exp.id)
            if fields:
                exp = _Extended(exp, fields)
            out.append(exp)
        return out

    data_module.Ledger.experiments = with_extras  # type: ignore[method-assign]
    try:
        with serve(built.run_dir) as served:
            open_page(page, served.url)
            row = page.locator("#experiments tbody tr[data-id='7']").inner_text()
            assert "unsealed" in row and "seed 1" in row and "cuda:0" in row
            assert "holdout 1.085100" in page.locator("#headline").inner_text()
            assert "noise floor" in page.locator("#chart-key").inner_text()
            assert "holdout (right scale)" in page.locator("#chart-key").inner_text()
            assert page.locator("#chart .u-axis").count() == 3, "the holdout has an axis of its own"
    finally:
        data_module.Ledger.experiments = original  # type: ignore[method-assign]


class _Extended:
    """An experiment with the extra attributes a later ledger adds (stand-in until `Experiment` has them)."""

    def __init__(self, exp: Any, fields: dict[str, Any]) -> None:
        self._exp, self._fields = exp, fields

    def __getattr__(self, name: str) -> Any:
        if name in self._fields:
            return self._fields[name]
        return getattr(self._exp, name)


def test_the_event_stream_and_data_need_the_token_but_the_page_with_it_in_the_fragment_works(
        page: Any, run: BuiltRun) -> None:
    token = "t" * 32
    with serve(run.run_dir, token=token) as served:
        open_page(page, served.url + f"#token={token}")
        assert "token" not in page.url  # taken out of the address bar once read
        assert page.locator("#experiments tbody tr").count() == 8
