"""The morning's read-only commands: `status`, `results`, `report` and `audit`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

from server import history
from server.audit import AuditLog, filter_records, format_record
from server.config import Config
from server.engine import Engine
from server.models import ExperimentRow
from server.private import read_holdout
from server.runstate import RunInfo, load_run
from server.text import for_terminal

from harness.cli_common import CliError, fmt, load, open_run


def status_lines(config: Config, run: RunInfo, engine: Engine) -> list[str]:
    view = engine.read_results(last_n=5)
    c = view.counts
    lines = [f"run {run.tag} on {run.branch}  ({config.metric}, {config.direction})"]
    best = f"{view.best.metric:.6f} (experiment {view.best.id})" if view.best else "-"
    base = f"{view.baseline.metric:.6f}" if view.baseline else "-"
    lines.append(f"baseline {base}   best {best}   noise floor "
                 + (f"{view.noise_floor:.6f} (keep rule: beat the best's mean by max(min_improvement "
                    f"{config.min_improvement:g}, {config.noise_k:g} x floor), {config.confirm_runs} confirmation "
                    "re-run(s))" if view.noise_floor is not None else f"- (noise_runs = {config.noise_runs})"))
    lines.append(f"experiments {c['total']}: ok {c['ok']}, crash {c['crash']}, timeout {c['timeout']}, invalid "
                 f"{c['invalid']}; kept {c['kept']}, discarded {c['discarded']}, pending {c['pending']}")
    lines.append(f"slots {view.slots}" + (f" ({config.slots.executor})" if config.slots.executor != "local" else ""))
    for row in view.in_flight:
        where = f"slot {row.slot} ({row.device})" if row.slot is not None else "queued"
        left = f", hard limit in {row.remaining_s:.0f} s" if row.remaining_s is not None else ""
        lines.append(f"in flight: experiment {row.id} '{row.description}' {where}{left}")
    if not view.in_flight:
        lines.append("in flight: none")
    lines.append(f"violations {view.violations}")
    supervisor = run.run_dir / "supervisor.json"
    if supervisor.exists():
        try:
            data = json.loads(supervisor.read_text(encoding="utf-8"))
            age = time.time() - float(data.get("updated_at", 0))
            stale = f" (stale: last update {age:.0f} s ago; is the harness running?)" if age > 30 else ""
            lines.append(f"supervisor {data.get('state')} session {str(data.get('session_id') or '-')[:8]} uptime "
                         f"{float(data.get('uptime_s', 0)):.0f} s restarts {data.get('restarts', 0)} cost "
                         f"${float(data.get('cost_usd', 0)):.2f}{stale}")
        except (OSError, ValueError):
            pass
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """Best result, counts, the experiment in flight and its remaining budget."""
    config, run, engine = open_run(args)
    if args.json:
        print(json.dumps(engine.read_results(last_n=5).model_dump(mode="json"), indent=2))
        return 0
    print("\n".join(status_lines(config, run, engine)))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """The experiments of a run, one line each (the ledger, not the agent's view)."""
    config, run, engine = open_run(args)
    rows = [ExperimentRow(id=a.experiment.id, status=a.experiment.status, metric=a.experiment.metric, delta=a.delta,
                          decision=a.decision, description=a.experiment.description,  # type: ignore[arg-type]
                          verified=a.experiment.verified) for a in history.annotate(engine.ledger.experiments())]
    total = len(rows)
    if not args.all:
        rows = rows[-args.last:]
    holdout = read_holdout(run.run_dir, config.metric) if args.holdout else {}
    if args.json:
        view = engine.read_results(last_n=1).model_copy(update={"experiments": rows})
        document = view.model_dump(mode="json")
        if args.holdout:  # the person's view: the agent's read_results never carries it
            document["holdout"] = {str(k): v for k, v in sorted(holdout.items())}
        print(json.dumps(document, indent=2))
        return 0
    column = f" {'holdout':>10}" if args.holdout else ""
    print(f"{'id':>4}  {'status':8} {for_terminal(config.metric):>10}{column} {'delta':>10}  {'decision':8}  "
          "description")
    for row in rows:
        delta = "-" if row.delta is None else f"{row.delta:+.6f}"
        # compatibility mode: the script printed its own metric; a failed run has no metric to doubt
        mark = " [unverified]" if row.status == "ok" and not row.verified else ""
        held = f" {fmt(holdout.get(row.id)):>10}" if args.holdout else ""
        print(f"{row.id:>4}  {row.status:8} {fmt(row.metric):>10}{held} {delta:>10}  {row.decision:8}  "
              f"{for_terminal(row.description)}{mark}")
    if args.holdout and not holdout:
        print("(no holdout scores recorded for this run: its evaluation scores no holdout split)", file=sys.stderr)
    if len(rows) < total:
        print(f"(the last {len(rows)} of {total} experiments; --all lists every one)", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write progress.png, report.md and a self-contained report.html for a run."""
    from harness.report import write_report

    config, run, engine = open_run(args)
    files = write_report(run.run_dir, run.tag, config.metric, config.direction, engine.ledger.experiments(),
                         args.out)
    written = [files.markdown, files.html] + ([files.plot] if files.plot else [])
    print("wrote " + ", ".join(str(p) for p in written if p is not None))
    if files.private is not None:
        print(f"your copy, with the holdout scores the agent never sees: {files.private}")
    return 0


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"cannot read time {value!r}: use ISO-8601 such as 2026-11-23T08:00 or 2026-11-23T08:00Z")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the audit chain, or show its records filtered."""
    config = load(args)
    run = load_run(config, args.tag)
    audit = AuditLog(run.run_dir / "audit.jsonl")
    if args.audit_command == "verify":
        from server.gitrepo import GitRepo
        from server.runcheck import verify_run

        verdict = verify_run(run, GitRepo(config.workspace), audit)
        print(verdict.message)
        return 0 if verdict.ok else 1
    records = filter_records(audit.records(), tool=args.tool, status=args.status, actor=args.actor, event=args.event,
                             session=args.session, since=_parse_time(args.since) if args.since else None,
                             until=_parse_time(args.until) if args.until else None)
    if args.last:
        records = records[-args.last:]
    try:
        for record in records:
            print(json.dumps(record.to_json(), ensure_ascii=False) if args.json else format_record(record))
        sys.stdout.flush()
    except BrokenPipeError:  # `audit show --json | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        os.close(devnull)
    return 0
