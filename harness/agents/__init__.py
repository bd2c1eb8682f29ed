"""Agents that drive the locked tools: Claude Code (via the watchdog), a built-in API agent, and a random search."""
