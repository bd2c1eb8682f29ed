"""The dashboard with a big ledger: how long until the page is drawn, and how much the first responses weigh.

Usage: python benchmarks/bench_dashboard.py [--n 10000] [--loads 3]

Writes a ledger of N experiments (in the ledger's own line format, with diffs and log tails like real ones) and a
short audit chain into a temporary run, serves the dashboard on loopback and opens it in headless Chromium (the system
browser, see scripts/install_browser.sh). It prints:

- the size of every response the page needs to draw (the HTML document first; then the static files, cached after
  the first visit; then the summary, the chart series and the first page of the table, as sent and unzipped);
- server times for those views, cold (the ledger read for the first time) and warm (cached until the file changes);
- the time to first render: from navigation start until the chart is drawn and the table filled, first visit and
  warm reloads (median);
- the time from a new experiment appended to the ledger until its row is on the page.
The figures end with a `---` block of `key: value` lines.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "dashboard")]

import httpx  # noqa: E402
from browser import chromium, serve  # noqa: E402
from run_builder import bulk_ledger, experiment, write_supervisor  # noqa: E402

from server.audit import AuditLog  # noqa: E402

from harness.dashboard.data import RunData, RunMeta  # noqa: E402


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="experiments in the ledger (default 10000)")
    parser.add_argument("--loads", type=int, default=3, help="warm page loads to time (default 3)")
    args = parser.parse_args()
    figures: dict[str, object] = {"experiments": args.n, "machine": f"{platform.machine()} {platform.system()}"}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "bench"
        ledger, ms = timed(lambda: bulk_ledger(run_dir, args.n, seed=1))
        audit = AuditLog(run_dir / "audit.jsonl")
        for i in range(100):
            audit.append("server", "tool_call", tool="run_experiment", status="ok", summary={"id": i})
        write_supervisor(run_dir, cost_usd=12.5)
        figures["ledger_mb"] = round(ledger.path.stat().st_size / 1e6, 1)
        print(f"ledger: {args.n} experiments, {figures['ledger_mb']} MB (written in {ms:.0f} ms)")

        data = RunData(RunMeta("bench", "val_bpb", "minimize", run_dir))
        _, figures["cold_summary_ms"] = timed(data.summary)  # reads and folds the whole ledger once
        _, figures["warm_summary_ms"] = timed(data.summary)
        _, figures["warm_chart_ms"] = timed(lambda: data.chart().to_json())
        _, figures["warm_page_ms"] = timed(lambda: data.rows(limit=50))
        for key in ("cold_summary_ms", "warm_summary_ms", "warm_chart_ms", "warm_page_ms"):
            figures[key] = round(float(figures[key]), 1)  # type: ignore[arg-type]

        with serve(run_dir, tag="bench", poll_s=0.5) as served:
            sizes: dict[str, tuple[int, int]] = {}
            for name, path in [("html", ""), ("js", "static/dashboard.js"), ("css", "static/dashboard.css"),
                               ("uplot_js", "static/uPlot.iife.min.js"), ("summary", "api/summary"),
                               ("chart", "api/chart"), ("table_page", "api/experiments?offset=0&limit=50")]:
                plain = httpx.get(served.url + path, headers={"Accept-Encoding": "identity"}, timeout=60).content
                sent = httpx.get(served.url + path, headers={"Accept-Encoding": "gzip"}, timeout=60)
                wire = int(sent.headers.get("content-length") or len(gzip.compress(plain)))
                sizes[name] = (len(plain), wire if sent.headers.get("content-encoding") == "gzip" else len(plain))
            for name, (plain, wire) in sizes.items():
                print(f"  {name:11} {plain / 1024:8.1f} KiB   sent {wire / 1024:8.1f} KiB")
                figures[f"{name}_kib"] = round(plain / 1024, 1)
                figures[f"{name}_sent_kib"] = round(wire / 1024, 1)

            with chromium() as browser:
                context = browser.new_context(viewport={"width": 1440, "height": 1000})
                page = context.new_page()
                renders = []
                for _ in range(1 + args.loads):
                    page.goto(served.url)
                    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                    renders.append(int(page.locator("body").get_attribute("data-ready-ms") or 0))
                    assert page.locator("#experiments tbody tr").count() == 50
                figures["first_render_ms_first_visit"] = renders[0]
                figures["first_render_ms_warm_median"] = statistics.median(renders[1:])
                start = time.perf_counter()
                ledger.append_experiment(experiment(args.n + 1, metric=0.5, description="the newest", tag="bench"))
                appended = time.perf_counter()
                page.wait_for_selector(f"#experiments tbody tr[data-id='{args.n + 1}']", timeout=60_000)
                figures["ledger_append_ms"] = round((appended - start) * 1000)
                figures["append_to_row_ms"] = round((time.perf_counter() - appended) * 1000)
                context.close()
    print(f"time to first render: first visit {figures['first_render_ms_first_visit']} ms, warm median "
          f"{figures['first_render_ms_warm_median']} ms; a new experiment is on the page "
          f"{figures['append_to_row_ms']} ms after its append returned (the append itself took "
          f"{figures['ledger_append_ms']} ms; both re-read the whole ledger through Ledger.experiments())")
    print("---")
    for key, value in figures.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
