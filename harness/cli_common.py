"""What every `autoresearch` command shares: the user-error type, the common flags, opening a run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from server.audit import AuditError
from server.config import Config, ConfigError, load_config
from server.engine import Engine
from server.gitrepo import GitError
from server.integrity import IntegrityError
from server.jsonl import CorruptFileError
from server.runstate import RunError, RunInfo, load_run

from harness.run_agent import HarnessError


class CliError(RuntimeError):
    """A problem the user can fix; printed without a traceback, exit code 2."""


# Problems a person can fix from the message alone: printed without a traceback, exit code 2.
USER_ERRORS = (CliError, ConfigError, RunError, HarnessError, GitError, IntegrityError, AuditError, CorruptFileError)


def load(args: argparse.Namespace) -> Config:
    return load_config(args.workspace.resolve(), args.config, args.profile)


def open_run(args: argparse.Namespace) -> tuple[Config, RunInfo, Engine]:
    config = load(args)
    run = load_run(config, getattr(args, "tag", None))
    return config, run, Engine(config, run)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def common_flags(parser: argparse.ArgumentParser, tag: bool = True, inner: bool = False) -> None:
    """The flags every command takes. `inner`: a sub-subcommand, whose defaults must not hide its parent's values."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if inner else value

    parser.add_argument("--workspace", type=Path, default=default(Path(os.environ.get("AUTORESEARCH_WORKSPACE", "."))),
                        help="repository root (default: current directory)")
    parser.add_argument("--config", type=Path, default=default(None),
                        help="configuration file (default: pyproject.toml)")
    parser.add_argument("--profile", default=default(None), help="configuration profile (default: auto: cuda, mps or cpu)")
    if tag:
        parser.add_argument("--tag", default=default(None), help="run tag (default: the most recent run)")
