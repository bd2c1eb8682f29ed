"""`python -m server serve`: the MCP server alone, for agents' MCP configurations (no harness import)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from server.config import ConfigError
from server.runstate import RunError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="The autoresearch MCP server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve the locked tools for one run (stdio by default).")
    serve.add_argument("--workspace", type=Path, default=Path(os.environ.get("AUTORESEARCH_WORKSPACE", ".")),
                       help="Repository root (default: $AUTORESEARCH_WORKSPACE or the current directory).")
    serve.add_argument("--tag", default=os.environ.get("AUTORESEARCH_TAG"),
                       help="Run tag (default: the most recently initialised run).")
    serve.add_argument("--config", type=Path, default=None, help="Configuration file (default: pyproject.toml).")
    serve.add_argument("--profile", default=None, help="Configuration profile (default: auto).")
    serve.add_argument("--http", action="store_true", help="Serve streamable HTTP instead of stdio.")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1).")
    serve.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765).")
    serve.add_argument("--token", default=os.environ.get("AUTORESEARCH_TOKEN"),
                       help="Bearer token required on every HTTP request (generated when binding beyond loopback).")
    serve.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    from server.serve import main_serve

    try:
        return main_serve(args.workspace.resolve(), args.tag, args.config, args.profile, http=args.http,
                          host=args.host, port=args.port, token=args.token, verbose=args.verbose)
    except (ConfigError, RunError) as exc:
        print(f"autoresearch server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
