"""A tiny stdio MCP server for driving a real agent in tests: one `echo` tool that returns what it was given.

Run as `python echo_mcp_server.py`; nothing but the SDK writes to stdout.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("echo")


@server.tool()
def echo(message: str) -> str:
    """Return `message` unchanged, prefixed with "echo: "."""
    return f"echo: {message}"


@server.tool()
def fail(reason: str) -> str:
    """Always fail with `reason`, so tests can see how a tool error reaches the model.

    ToolError is what carries the message to the model; any other exception reaches it only as
    "Error executing tool fail".
    """
    raise ToolError(f"fail was asked to fail: {reason}")


if __name__ == "__main__":
    server.run()
