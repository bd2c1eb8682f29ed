"""`autoresearch`: set up a run, serve the locked tools, run an agent, and read what happened."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from server.audit import AuditLog
from server.config import Config
from server.engine import Engine
from server.runstate import RunError, RunInfo, default_tag, init_run, load_run, set_current

from harness.cli_common import USER_ERRORS, CliError, common_flags, fmt, load
from harness.cli_views import cmd_audit, cmd_report, cmd_results, cmd_status, status_lines

if TYPE_CHECKING:
    from harness.dashboard.data import RunData

log = logging.getLogger("autoresearch")


# ---- commands ----

UNSEALED_HELP = ("create the run even where experiments cannot be sealed (no bubblewrap or user namespaces): "
                 "train.py could then forge its score, and every result is marked unsealed")

def cmd_init(args: argparse.Namespace) -> int:
    """Create branch autoresearch/<tag>, pin the locked files and create runs/<tag>/."""
    config = load(args)
    info = init_run(config, args.tag or default_tag(), allow_unsealed=args.allow_unsealed)
    pins = ", ".join(f"{p.path} {p.sha256[:12]}" for p in info.pins)
    print(f"run {info.tag}: branch {info.branch} at {info.base_commit[:7]}; pinned {pins}")
    print(f"profile {config.profile or '(none)'}: budget {config.time_budget_s:g} s, hard limit "
          f"{config.hard_timeout_s:g} s; files in {info.run_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the locked tools over stdio (default) or streamable HTTP."""
    from server.serve import main_serve

    mount = None
    if args.dashboard:
        if not args.http:
            raise CliError("--dashboard needs --http: the page is served beside /mcp on the same port")
        from harness.dashboard.app import build_dashboard_app, page_url

        # The page shares /mcp's token here, and an agent that holds it could read the page: no holdout on it.
        data = _dashboard_data(args, show_holdout=False)
        mount = lambda policy: build_dashboard_app(data, policy)  # noqa: E731
        print(f"autoresearch dashboard at {page_url(args.host, args.port, None)} (read-only; beyond loopback add "
              "#token=<the bearer token> to the address; without the holdout, which `autoresearch dashboard` "
              "shows on a port and token of its own)", file=sys.stderr, flush=True)
    return main_serve(args.workspace.resolve(), args.tag, args.config, args.profile, http=args.http, host=args.host,
                      port=args.port, token=args.token, verbose=args.verbose, mount=mount)


def _dashboard_data(args: argparse.Namespace, show_holdout: bool = True) -> "RunData":
    from harness.dashboard.data import RunData, RunMeta

    config = load(args)
    run = load_run(config, args.tag)
    return RunData(RunMeta(run.tag, config.metric, config.direction, run.run_dir), show_holdout=show_holdout)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve a live, read-only page of a run: progress, experiments, the supervisor's night, the audit verdict."""
    from harness.dashboard.app import serve_dashboard

    return serve_dashboard(_dashboard_data(args), host=args.host, port=args.port, token=args.token)


def cmd_stop(args: argparse.Namespace) -> int:
    """Ask a running loop to stop after the experiment in flight (the agent is told at its next stop attempt)."""
    config = load(args)
    run = load_run(config, args.tag)
    flag = run.run_dir / "stop"
    if args.cancel:
        flag.unlink(missing_ok=True)
        print(f"stop request for run {run.tag} withdrawn")
        return 0
    flag.write_text(datetime.now(timezone.utc).isoformat() + "\n", encoding="utf-8")
    AuditLog(run.run_dir / "audit.jsonl").append("cli", "stop_requested", status="ok", summary={"file": str(flag)})
    print(f"stop requested for run {run.tag}: the supervisor stops the agent once the experiment in flight is done")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run an agent on the loop: random or tpe (offline), claude (Claude Code, headless) or api (built-in)."""
    config = load(args)
    if args.agent == "claude" and args.allow_bash:
        from harness.run_agent import require_shell_sandbox

        require_shell_sandbox(args)
    run = _init_or_resume(config, args)
    if args.agent == "random":
        return _run_random(config, run, args)
    if args.agent == "tpe":
        return _run_tpe(config, run, args)
    from harness.run_agent import run_supervised

    return run_supervised(config, run, args)


def _init_or_resume(config: Config, args: argparse.Namespace) -> RunInfo:
    tag = args.tag or default_tag()
    try:
        run = load_run(config, tag)
    except RunError:
        if args.resume:
            raise CliError(f"--resume given but there is no run {tag!r}: drop --resume to create it")
        return init_run(config, tag, allow_unsealed=getattr(args, "allow_unsealed", False))
    if not args.resume:
        raise CliError(f"run {tag!r} already exists: add --resume to continue it, or pick a new --tag")
    set_current(config, tag)
    return run


def _run_random(config: Config, run: RunInfo, args: argparse.Namespace) -> int:
    from harness.agents.random_agent import AgentError, RandomAgentOptions, Step, run_random_agent_sync

    if args.max_experiments is None:
        raise CliError("--agent random needs --max-experiments N (it runs exactly N experiments)")
    started = time.monotonic()

    def show(step: Step) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] experiment {step.experiment_id}: {step.status:7} "
              f"{fmt(step.metric)}  {step.decision:8}  {step.description}", flush=True)

    options = RandomAgentOptions(workspace=config.workspace, tag=run.tag, max_experiments=args.max_experiments,
                                 seed=args.seed, mutable_file=config.mutable[0],
                                 extra_server_args=tuple(_server_flags(args)), log_dir=run.run_dir / "agent")
    try:
        run_random_agent_sync(options, show)
    except AgentError as exc:
        raise CliError(str(exc))
    return 0


def _run_tpe(config: Config, run: RunInfo, args: argparse.Namespace) -> int:
    from harness.agents.random_agent import AgentError, AgentOptions, Step
    from harness.agents.tpe_agent import TpeProposer, run_tpe_agent_sync

    if args.max_experiments is None:
        raise CliError("--agent tpe needs --max-experiments N (it runs exactly N experiments)")
    started = time.monotonic()

    def show(step: Step) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] experiment {step.experiment_id}: {step.status:7} "
              f"{fmt(step.metric)}  {step.decision:8}  {step.description}", flush=True)

    options = AgentOptions(workspace=config.workspace, tag=run.tag, max_experiments=args.max_experiments,
                           seed=args.seed, mutable_file=config.mutable[0],
                           extra_server_args=tuple(_server_flags(args)), log_dir=run.run_dir / "agent")
    try:
        run_tpe_agent_sync(options, show, TpeProposer(args.seed, on_note=lambda note: print(note, flush=True)))
    except AgentError as exc:
        raise CliError(str(exc))
    return 0


def _server_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    if args.config:
        flags += ["--config", str(args.config)]
    if args.profile:
        flags += ["--profile", args.profile]
    return flags


def cmd_demo(args: argparse.Namespace) -> int:
    """Prepare data, start a fresh run, let the random agent do a few experiments on the CPU, write the report."""
    import subprocess

    config = load(args)
    if "prepare.py" in config.locked:
        subprocess.run([sys.executable, "prepare.py"], cwd=config.workspace, check=True)
    tag = args.tag or f"demo-{datetime.now().strftime('%m%d-%H%M%S')}"
    args.tag, args.resume = tag, False
    run = _init_or_resume(config, args)
    print(f"run {run.tag}: {args.max_experiments} experiments, budget {config.time_budget_s:g} s each "
          f"(profile {config.profile or 'none'})", flush=True)
    _run_random(config, run, args)
    engine = Engine(config, run)
    print("\n".join(status_lines(config, run, engine)))
    args.out = None
    return cmd_report(args)


def cmd_review(args: argparse.Namespace) -> int:
    """What a person approves: diff base..best, each kept change with its gain, holdout, audit, violations, cost."""
    from harness.review import build_review, render_review, render_step

    config = load(args)
    run = load_run(config, args.tag)
    review = build_review(config, run)
    if not args.step:
        print(render_review(review))
        return 0 if review.verdict.ok else 1
    total = len(review.changes)
    for change in review.changes:
        print(f"---- change {change.number} of {total} ----")
        print(render_step(change, config.metric, review.promoted))
        if change.number < total and sys.stdin.isatty():
            try:
                answer = input("[enter] next change, q to stop: ")
            except EOFError:
                break
            if answer.strip().lower() == "q":
                break
    return 0 if review.verdict.ok else 1


def cmd_promote(args: argparse.Namespace) -> int:
    """Land the run's kept changes (or --only N,M) on the branch the run started from, one commit each, audited."""
    from harness.review import promote_run
    from server.promotion import PromotionError

    config = load(args)
    run = load_run(config, args.tag)
    try:
        result = promote_run(config, run, only=args.only, onto=args.onto)
    except PromotionError as exc:
        raise CliError(f"promote refused: {exc}") from None
    for exp_id, commit in result.commits:
        print(f"experiment {exp_id} -> {commit[:12]} on {result.branch}")
    if result.skipped:
        print(f"already promoted earlier: {', '.join(map(str, result.skipped))}")
    print(f"{result.branch}: {result.old_tip[:12]} -> {result.new_tip[:12]}; recorded in the audit chain")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    """Turn a run's result down with a reason; recorded in the audit chain and read by the next session's handoff."""
    from harness.review import reject_run
    from server.promotion import PromotionError

    config = load(args)
    run = load_run(config, args.tag)
    try:
        record = reject_run(run, args.reason, args.only)
    except PromotionError as exc:
        raise CliError(str(exc)) from None
    print(f"run {run.tag}: rejected by {record['user']} ({record['changes']}): {record['reason']}")
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    """Create a working target from a template (speed, prompt, ml) in a new git repository."""
    from harness.templates import TemplateError, scaffold

    try:
        created = scaffold(args.template, args.directory, git_init=not args.no_git)
    except TemplateError as exc:
        raise CliError(str(exc)) from None
    print(f"created the {args.template} target in {created.directory}: {', '.join(created.files)}")
    print(f"next: cd {created.directory} && autoresearch init --tag first; program.md holds the agent's instructions")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Runs side by side: best-so-far curves (one PNG) and a table; refuses runs that measured different things."""
    from harness.compare import NotComparable, compare_runs, plot, table

    if args.usd_per_hour is not None and args.usd_per_hour < 0:
        raise CliError(f"--usd-per-hour must be zero or more, got {args.usd_per_hour}")
    config = load(args)
    try:
        comparison = compare_runs(config, args.tags, mark=args.mark, force=args.force)
    except NotComparable as exc:
        raise CliError(str(exc))
    except ValueError as exc:
        raise CliError(str(exc))
    for warning in comparison.warnings:
        print(f"autoresearch: WARNING: NOT COMPARABLE (--force): {warning}", file=sys.stderr)
    out = args.out or config.runs_dir / f"compare-{'-'.join(args.tags)[:80]}.png"
    plot(comparison, out)
    print(table(comparison, args.usd_per_hour))
    print(f"chart: {out}")
    return 0


# ---- parser ----

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], tag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=(handler.__doc__ or "").strip().splitlines()[0],
                           description=(handler.__doc__ or "").strip())
        common_flags(p, tag)
        p.set_defaults(handler=handler)
        return p

    p = add("init", cmd_init)
    p.add_argument("--allow-unsealed", action="store_true", help=UNSEALED_HELP)
    p = add("serve", cmd_serve)
    p.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    p.add_argument("--token", default=os.environ.get("AUTORESEARCH_TOKEN"), help="bearer token for HTTP")
    p.add_argument("--dashboard", action="store_true", help="with --http: also serve the run's dashboard at /")
    p = add("dashboard", cmd_dashboard)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, default=8780, help="port (default 8780)")
    p.add_argument("--token", default=os.environ.get("AUTORESEARCH_TOKEN"),
                   help="bearer token (default: none on loopback, generated and printed otherwise)")
    p = add("status", cmd_status)
    p.add_argument("--json", action="store_true")
    p = add("results", cmd_results)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--last", type=int, default=200, help="the last N experiments (default 200)")
    shown.add_argument("--all", action="store_true", help="every experiment of the run")
    p.add_argument("--holdout", action="store_true",
                   help="add each experiment's holdout score (for you: the agent never sees it)")
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for report.md, report.html and progress.png (default: the run)")
    p = add("audit", cmd_audit)  # the flags work before or after verify/show
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="verify|show")
    verify = audit_sub.add_parser("verify", help="check the hash chain; names the first altered, removed or reordered "
                                                 "record (exit 1 when it is broken)")
    common_flags(verify, inner=True)
    show = audit_sub.add_parser("show", help="print audit records, filtered")
    common_flags(show, inner=True)
    show.add_argument("--tool", help="tool name or glob, e.g. 'run_*' or 'Edit'")
    show.add_argument("--status", help="ok, error, refused, blocked, cancelled, ...")
    show.add_argument("--actor", help="server, hook, supervisor, guard, ...")
    show.add_argument("--event", help="tool_call, violation, state, ...")
    show.add_argument("--session", help="session id (prefix)")
    show.add_argument("--since", help="ISO-8601 time")
    show.add_argument("--until", help="ISO-8601 time")
    show.add_argument("--last", type=int, default=None, help="only the last N matching records")
    show.add_argument("--json", action="store_true", help="raw JSON lines")
    for name, handler in (("run", cmd_run), ("demo", cmd_demo)):
        p = add(name, handler)
        if name == "run":
            p.add_argument("--agent", choices=("random", "tpe", "claude", "api"), required=True)
            p.add_argument("--resume", action="store_true", help="continue an existing tag")
            p.add_argument("--hours", type=float, default=None, help="stop after this many hours")
            p.add_argument("--max-cost-usd", type=float, default=None, help="stop when the agent has cost this much")
            p.add_argument("--model", default=None, help="model name passed to the agent")
            p.add_argument("--stall-timeout", type=float, default=600.0,
                           help="seconds of agent silence (no experiment in flight) before a restart (default 600)")
            p.add_argument("--max-turns", type=int, default=None, help="turns per agent session before it is resumed")
            p.add_argument("--no-guard", action="store_true", help="do not run the file guard (not recommended)")
            p.add_argument("--allow-bash", action="store_true",
                           help="let the agent use shell commands, run in Claude Code's sandbox (bubblewrap and "
                                "socat): only the mutable files are writable, no network")
            p.add_argument("--allow-unsandboxed-bash", action="store_true",
                           help="with --allow-bash, run shell commands even where the sandbox cannot start "
                                "(not recommended)")
        p.add_argument("--max-experiments", type=int, default=6 if name == "demo" else None,
                       help="stop after this many experiments" + (" (default 6)" if name == "demo" else ""))
        p.add_argument("--seed", type=int, default=0, help="random or tpe agent seed (default 0)")
        p.add_argument("--allow-unsealed", action="store_true", help=UNSEALED_HELP)
    p = add("review", cmd_review)
    p.add_argument("--step", action="store_true", help="walk through the kept changes one by one, each with its diff")
    p = add("promote", cmd_promote)
    p.add_argument("--only", default=None, help="change numbers from `review`, e.g. 1,3 (default: all kept changes)")
    p.add_argument("--onto", default=None, help="branch to promote onto (default: the branch the run started from)")
    p = add("reject", cmd_reject)
    p.add_argument("--reason", required=True, help="why the result is turned down (the next session reads it)")
    p.add_argument("--only", default=None, help="the change numbers rejected (default: the whole result)")
    p = sub.add_parser("new", help=cmd_new.__doc__, description=cmd_new.__doc__)
    p.add_argument("template", choices=("speed", "prompt", "ml"), help="which target to create")
    p.add_argument("directory", type=Path, help="a new or empty directory")
    p.add_argument("--no-git", action="store_true", help="do not make it a git repository with a first commit")
    p.set_defaults(handler=cmd_new)
    p = add("compare", cmd_compare, tag=False)
    p.add_argument("tags", nargs="+", metavar="TAG", help="the runs to compare (at least two)")
    p.add_argument("--mark", type=float, default=0.01,
                   help="relative improvement over the baseline that counts as reached (default 0.01 = 1 %%)")
    p.add_argument("--out", type=Path, default=None, help="the chart (default: runs/compare-<tags>.png)")
    p.add_argument("--force", action="store_true",
                   help="compare runs that differ in data, budget, device or starting code anyway")
    p.add_argument("--usd-per-hour", type=float, default=None, help="price of the machine, for the cost to the mark")
    p = add("stop", cmd_stop)
    p.add_argument("--cancel", action="store_true", help="withdraw a stop request that has not been acted on yet")
    from harness.guard import add_guard_parser
    from harness.mcp_config import add_mcp_config_parser

    add_guard_parser(sub)
    add_mcp_config_parser(sub)
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name in ("max_experiments", "last", "max_turns"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("hours", "max_cost_usd", "stall_timeout"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, got {value}")
    port = getattr(args, "port", None)
    if port is not None and not 0 <= port <= 65535:
        raise CliError(f"--port must be 0-65535, got {port}")
    workspace = getattr(args, "workspace", None)
    if workspace is not None and not workspace.is_dir():
        raise CliError(f"--workspace {workspace} is not a directory")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        _validate(args)
        return int(args.handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
