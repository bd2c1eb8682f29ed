"""Start the MCP server on stdio or streamable HTTP for one run of one workspace.

SIGTERM and SIGINT cancel the server's tasks instead of killing the process outright, so an experiment in flight is
killed and recorded before the process exits (Claude Code sends SIGINT then SIGTERM to its servers at session end).

Without a run (an agent opened in the repository before `autoresearch init`) the server starts all the same: it lists
its tools, answers each call with how to create the run, and opens the run on the first call after `init`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from server.app import EngineSlot, build_server
from server.config import Config, ConfigError, load_config
from server.engine import Engine
from server.runstate import RunError, load_run

if TYPE_CHECKING:
    from server.http import MountFactory

log = logging.getLogger(__name__)


def open_engine(workspace: Path, tag: str | None = None, config_path: Path | None = None,
                profile: str | None = None) -> Engine:
    """Load the configuration and the run, and recover anything a previous server left in flight."""
    config: Config = load_config(workspace, config_path, profile)
    run = load_run(config, tag)
    engine = Engine(config, run)
    note = engine.recover()
    if note:
        log.warning("%s", note)
    return engine


def configure_logging(run_dir: Path | None, verbose: bool = False) -> None:
    """Logs go to stderr and the run's server.log; stdout belongs to the MCP protocol on stdio."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)  # the agent's terminal: problems only
    handlers: list[logging.Handler] = [console]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "server.log", encoding="utf-8"))  # the full story
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")


async def _until_signalled(run: "anyio.abc.TaskGroup") -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received signal %s: cancelling the server's work and exiting", signum)
            run.cancel_scope.cancel()
            return


async def serve_stdio(engine: Engine | EngineSlot) -> None:
    server = build_server(engine)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_until_signalled, tg)
        await server.run_stdio_async()
        tg.cancel_scope.cancel()


def open_slot(workspace: Path, tag: str | None, config_path: Path | None, profile: str | None,
              verbose: bool = False) -> EngineSlot:
    """The run's engine when it exists; else a slot that says why and opens the run on a later call."""

    def opener() -> Engine:
        engine = open_engine(workspace, tag, config_path, profile)
        configure_logging(engine.run_dir, verbose)
        return engine

    try:
        return EngineSlot(opener())
    except (ConfigError, RunError) as exc:
        configure_logging(None, verbose)
        try:
            config: Config | None = load_config(workspace, config_path, profile)
        except ConfigError:
            config = None
        print(f"autoresearch server: {exc}. Serving the tools anyway: each call answers with this until the run "
              "exists, and the first call after that opens it.", file=sys.stderr, flush=True)
        return EngineSlot(config=config, opener=opener, reason=str(exc))


def main_serve(workspace: Path, tag: str | None, config_path: Path | None, profile: str | None,
               http: bool = False, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
               verbose: bool = False, mount: "MountFactory | None" = None) -> int:
    slot = open_slot(workspace, tag, config_path, profile, verbose)
    if slot.engine is not None:
        log.info("serving run %s of %s (pid %d)", slot.engine.run.tag, workspace, os.getpid())
    else:
        log.info("serving %s without a run (pid %d): %s", workspace, os.getpid(), slot.reason)
    if http:
        from server.http import serve_http

        return serve_http(slot, host=host, port=port, token=token, mount=mount)
    anyio.run(serve_stdio, slot)
    return 0
