"""The OS sandbox around the agent's shell: Claude Code's own, configured by the harness for `--allow-bash`.

What it covers. With shell commands turned on, every command of Claude Code's Bash tool runs under bubblewrap (Linux;
Claude Code also needs `socat` for its network proxy), whatever the command looks like: `echo ... | base64 -d | bash`,
`printf ... | python3 /dev/stdin` or a Python one-liner that computes its paths all hit the same read-only mounts. In
that sandbox:

- nothing in the workspace is writable except the mutable files (train.py) and names that do not exist yet; the
  locked files, `runs/`, `.git`, the configuration (`pyproject.toml`, `autoresearch.toml`), the agent's own settings
  (`.claude/`, `.mcp.json`), `program.md`, the code (`server/`, `harness/`) and `.venv` are mounted read-only, whether
  or not they exist now. Outside the workspace only the sandbox's own temporary directory (`$TMPDIR`) is writable;
- the run's secrets cannot be read or written: the audit key directory (`$AUTORESEARCH_KEY_DIR`, default
  `~/.config/autoresearch/keys`) and the person's private folder with the holdout scores (`$AUTORESEARCH_PRIVATE_DIR`,
  default `~/.local/state/autoresearch`, see server/private.py);
- there is no network: no domain is allowed, and hosts outside the (empty) allow-list are refused, not prompted for;
- `dangerouslyDisableSandbox` is ignored (`allowUnsandboxedCommands: false`) and a sandbox that cannot start stops the
  session (`failIfUnavailable: true`) instead of running the command unsandboxed.

What it does not cover. A command may still create a new file in the workspace root (the working directory stays
writable for names that do not exist): the hooks and the MCP server run with `python -P` so such a file is never
imported by them, and the file guard moves it to `runs/<tag>/quarantine/` between experiments. Read access is not
narrowed beyond the secrets: the agent may read the code, the ledger and the logs, as it may with the Read tool. The
static shell policy (`bash_policy`) still reads each command first and refuses the obvious writes with a friendly
message; the sandbox is what holds when that reading is fooled.

Where the sandbox cannot start (no bwrap or socat, a kernel without user namespaces, a platform other than Linux) the
harness refuses `--allow-bash` unless the user also passes `--allow-unsandboxed-bash`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.config import Config
from server.jsonl import atomic_write_text
from server.private import private_base

log = logging.getLogger(__name__)

REQUIRED_TOOLS = ("bwrap", "socat")
# Names that must stay read-only even before they exist: a configuration or settings file created by the agent would
# govern the next start; sitecustomize/usercustomize would run in every Python started in the workspace.
ALWAYS_PROTECTED = (".git", ".claude", ".mcp.json", "pyproject.toml", "autoresearch.toml", "program.md", "server",
                    "harness", ".venv", "runs", "sitecustomize.py", "usercustomize.py", ".gitignore",
                    ".gitattributes", ".gitmodules")
_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class SandboxCheck:
    """Whether Claude Code's shell sandbox can start here; `reason` says why not, and what to install."""

    available: bool
    reason: str | None = None


def check_sandbox(*, which: Callable[[str], str | None] = shutil.which,
                  run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
                  platform: str = sys.platform) -> SandboxCheck:
    """Can Claude Code's Linux sandbox start on this machine? Tries bubblewrap the way the CLI uses it."""
    if platform != "linux":
        return SandboxCheck(False, f"the shell sandbox is set up for Linux (bubblewrap) only, this is {platform}")
    missing = [tool for tool in REQUIRED_TOOLS if which(tool) is None]
    if missing:
        return SandboxCheck(False, f"{' and '.join(missing)} not found on PATH (Claude Code's sandbox needs bubblewrap "
                                   "and socat); install them with `bash scripts/install_sandbox_deps.sh` "
                                   "(Debian/Ubuntu: apt-get install bubblewrap socat)")
    bwrap = which("bwrap") or "bwrap"
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid",
            "--die-with-parent", "--", "true"]
    try:
        done = run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxCheck(False, f"bubblewrap could not be started ({exc})")
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()[:300] if isinstance(done.stderr, bytes) else ""
        return SandboxCheck(False, f"bubblewrap cannot create a sandbox here (exit {done.returncode}: "
                                   f"{err or 'no message'}); user namespaces may be disabled or restricted "
                                   "(sysctl user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns)")
    return SandboxCheck(True)


def _siblings_to_deny(root: Path, allowed: Iterable[str]) -> set[Path]:
    """Every existing entry under `root` that is neither an allowed file nor a folder leading to one."""
    allowed_parts = [tuple(Path(rel).parts) for rel in allowed]
    denied: set[Path] = set()

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            path = Path(entry.path)
            if any(len(parts) == depth + 1 and parts[depth] == entry.name for parts in allowed_parts):
                continue  # an allowed file itself
            leads = any(len(parts) > depth + 1 and parts[depth] == entry.name for parts in allowed_parts)
            if leads and entry.is_dir(follow_symlinks=False):
                walk(path, depth + 1)
            else:
                denied.add(path)

    walk(root, 0)
    return denied


def sandbox_settings(config: Config, run_dir: Path, *, key_dir: Path) -> dict[str, Any]:
    """The `sandbox` block of Claude Code's settings for this run (keys honoured by Claude Code 2.1.330)."""
    ws = config.workspace
    mutable = {os.path.normpath(ws / rel) for rel in config.mutable}
    deny_write = _siblings_to_deny(ws, config.mutable)
    deny_write.update(ws / name for name in ALWAYS_PROTECTED)
    deny_write.update(ws / rel for rel in config.locked)
    deny_write.update({config.runs_dir, config.source, run_dir, key_dir, private_base()})
    paths = sorted({os.path.normpath(p) for p in deny_write} - mutable)
    return {
        "enabled": True,
        "failIfUnavailable": True,
        "autoAllowBashIfSandboxed": True,  # headless: nobody can approve, and the sandbox is the boundary
        "allowUnsandboxedCommands": False,
        "allowNestedUserNamespaces": False,
        "enableWeakerNestedSandbox": False,
        "filesystem": {"denyWrite": paths,
                       "denyRead": sorted({os.path.normpath(key_dir), os.path.normpath(private_base())})},
        "network": {"allowedDomains": [], "strictAllowlist": True},
    }


def write_settings(config: Config, run_dir: Path, *, sandbox: dict[str, Any] | None,
                   base: Path | None = None) -> Path:
    """The settings file the harness passes with `--settings`: the project's settings plus the sandbox block.

    `base` (default `<workspace>/.claude/settings.json`) keeps its permissions and hooks; `sandbox=None` writes the
    sandbox off explicitly (shell commands turned off, or the user accepted an unsandboxed shell).
    """
    base = config.workspace / ".claude" / "settings.json" if base is None else base
    settings: dict[str, Any] = {}
    if base.exists():
        loaded = json.loads(base.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"{base} holds a JSON {type(loaded).__name__}, expected an object; fix it and start again")
        settings = loaded
    settings["sandbox"] = sandbox if sandbox is not None else {"enabled": False}
    path = run_dir / "agent" / "claude-settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
    return path
