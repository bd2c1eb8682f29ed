"""A stand-in for the project's stdio MCP server, for checking that agent CLIs connect to what `mcp-config` writes.

It exposes the three tool names of the real server with trivial bodies, and accepts the real server's command line
(`serve --workspace ROOT`) so a config written for one launches the other. Nothing but the SDK writes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("autoresearch")


@server.tool()
def run_experiment(description: str) -> str:
    """Pretend to run one experiment and say so."""
    return f"stand-in: would run experiment '{description}'"


@server.tool()
def read_results(last: int = 10) -> str:
    """Pretend to read the last `last` results."""
    return f"stand-in: no results (last={last})"


@server.tool()
def commit_or_revert(experiment_id: str, decision: str) -> str:
    """Pretend to record a keep/discard decision."""
    return f"stand-in: {decision} {experiment_id}"


def main(argv: list[str]) -> int:
    """Parse the real server's arguments, check the workspace exists, then serve on stdio."""
    parser = argparse.ArgumentParser(prog="standin_mcp_server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--workspace", required=True)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.workspace):
        print(f"workspace {args.workspace!r} is not a directory", file=sys.stderr)
        return 2
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
