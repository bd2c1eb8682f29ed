"""A run: one tag, one branch `autoresearch/<tag>`, one folder `runs/<tag>/`, pins of the locked files.

`init_run` creates all of it from the current commit; `load_run` reopens it (a restarted server continues the same tag).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from server.agent_files import is_agent_config
from server.config import Config, config_from_table, expand_env_refs
from server.gitrepo import GitRepo
from server.sandbox import probe as sandbox_probe
from server.integrity import Pin, materialize_pins, pin_files
from server.jsonl import atomic_write_text
from server.private import private_folder

log = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CURRENT_FILE = "CURRENT"


class RunError(RuntimeError):
    """A run cannot be created or opened; the message says why and what to do."""


@dataclass(frozen=True)
class RunInfo:
    tag: str
    branch: str
    base_commit: str
    pins: tuple[Pin, ...]
    profile: str
    created_at: str
    run_dir: Path
    frozen: dict[str, object] | None = None  # the configuration that governs this run (see frozen_config)
    base_branch: str | None = None  # the branch checked out at init (None: a detached HEAD, or an older run)

    def to_json(self) -> dict[str, object]:
        return {
            "frozen": self.frozen,
            "base_branch": self.base_branch,
            "tag": self.tag,
            "branch": self.branch,
            "base_commit": self.base_commit,
            "pins": [pin.to_json() for pin in self.pins],
            "profile": self.profile,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, object], run_dir: Path) -> "RunInfo":
        pins = tuple(Pin.from_json(p) for p in data["pins"])  # type: ignore[union-attr]
        return cls(
            tag=str(data["tag"]),
            branch=str(data["branch"]),
            base_commit=str(data["base_commit"]),
            pins=pins,
            profile=str(data.get("profile", "")),
            created_at=str(data["created_at"]),
            run_dir=run_dir,
            frozen=data.get("frozen"),  # type: ignore[arg-type]
            base_branch=str(data["base_branch"]) if data.get("base_branch") else None,
        )


def validate_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag):
        raise RunError(
            f"invalid tag {tag!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(for example 'nov23')"
        )
    return tag


def default_tag() -> str:
    return datetime.now().strftime("%b%d").lower()


def run_dir_for(config: Config, tag: str) -> Path:
    return config.runs_dir / validate_tag(tag)


def _ensure_runs_ignored(config: Config) -> None:
    """`runs/` must never be committed: add it to .git/info/exclude when the project does not ignore it already."""
    rel = config.runs_dir.relative_to(config.workspace).as_posix() if config.runs_dir.is_relative_to(
        config.workspace
    ) else None
    if rel is None:
        return
    probe = subprocess.run(
        ["git", "check-ignore", "-q", f"{rel}/x"], cwd=config.workspace, capture_output=True, check=False
    )
    if probe.returncode == 0:
        return
    git_dir = subprocess.run(
        ["git", "rev-parse", "--git-dir"], cwd=config.workspace, capture_output=True, text=True, check=True
    ).stdout.strip()
    exclude = (config.workspace / git_dir / "info" / "exclude").resolve()
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a", encoding="utf-8") as fh:
        fh.write(f"\n/{rel}/\n")
    log.info("added /%s/ to %s so run files are never committed", rel, exclude)


def freeze(config: Config, *, allow_unsealed: bool = False) -> dict[str, object]:
    """What governs the run from now on, whatever later happens to pyproject.toml, autoresearch.toml or the
    environment: the merged configuration table, the sandbox's resolved file lists and passed variables (with their
    values now), and the hashes of every data file the sandboxes read (recomputed before each experiment)."""
    sandbox = config.sandbox
    missing = [p for p in (*sandbox.train_read, *sandbox.eval_read) if not Path(p).exists()]
    if missing:
        raise RunError(f"the sandbox is configured to read {', '.join(missing[:4])}, which do not exist; prepare the "
                       "data first (for the default target: `python prepare.py`), then run init again")
    hashes = {p: data_digest(Path(p)) for p in sorted(set(sandbox.train_read) | set(sandbox.eval_read))}
    return {
        "table": dict(config.table),
        "profile": config.profile,
        "source": str(config.source),
        "train_read": list(sandbox.train_read),
        "eval_read": list(sandbox.eval_read),
        "env": {**{name: os.environ[name] for name in sandbox.pass_env if name in os.environ},
                **{name: expand_env_refs(value) for name, value in config.env.items()}},
        "data_sha256": hashes,
        "allow_unsealed": bool(allow_unsealed or sandbox.allow_unsealed),
    }


def data_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def private_dir(run: RunInfo) -> Path:
    """The run's folder outside the workspace for what only the person may read (holdout scores, raw evaluation
    logs): see server/private.py. Mode 0700; no sandbox binds it, and the agent's tools are refused it."""
    return private_folder(run.run_dir)


def frozen_config(config: Config, run: RunInfo) -> Config:
    """The configuration frozen into the run at init (a run created before freezing existed keeps `config`)."""
    frozen = run.frozen
    if not frozen:
        return config
    rebuilt = config_from_table(config.workspace, frozen["table"], str(frozen.get("profile", "")),  # type: ignore
                                run.run_dir / "run.json")
    sandbox = dataclasses.replace(rebuilt.sandbox, train_read=tuple(frozen.get("train_read", ())),  # type: ignore
                                  eval_read=tuple(frozen.get("eval_read", ())),  # type: ignore
                                  allow_unsealed=bool(frozen.get("allow_unsealed")))
    return dataclasses.replace(rebuilt, sandbox=sandbox)


def check_slots(config: Config) -> None:
    """Refuse at init what would fail at the first experiment: slots this machine cannot give, or Ray missing."""
    from server.slots import plan_slots

    plan_slots(config)  # SlotError (a ConfigError) says what to change
    if config.slots.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise RunError('slots.executor = "ray" needs Ray on this machine: pip install -e ".[ray]" (and a cluster: '
                           "`ray start --head` here, or slots.ray_address pointing at one)")


def init_run(config: Config, tag: str, *, allow_unsealed: bool = False) -> RunInfo:
    """Create branch `<prefix><tag>` at HEAD, pin the locked files, create `runs/<tag>/`, freeze the configuration."""
    validate_tag(tag)
    repo = GitRepo(config.workspace)
    repo.ensure_identity()
    branch = f"{config.branch_prefix}{tag}"
    run_dir = run_dir_for(config, tag)
    if repo.branch_exists(branch):
        raise RunError(
            f"branch {branch} already exists: choose another tag, or continue that run with "
            f"`autoresearch run --tag {tag} --resume` (or `autoresearch serve --tag {tag}`)"
        )
    if (run_dir / "run.json").exists():
        raise RunError(f"{run_dir} already holds a run: choose another tag or delete that folder")
    _ensure_runs_ignored(config)
    dirty = [p for p in repo.dirty_paths() if not _inside(config, p) and not is_agent_config(config.workspace, p)]
    if dirty:
        shown = ", ".join(dirty[:8]) + (" ..." if len(dirty) > 8 else "")
        raise RunError(
            f"the working tree has uncommitted changes ({shown}): commit or stash them first, so the run starts "
            "from a commit that holds exactly what will be measured"
        )
    frozen = freeze(config, allow_unsealed=allow_unsealed)
    if config.sandbox.mode == "bwrap" and not frozen["allow_unsealed"]:
        reason = sandbox_probe()
        if reason is not None:
            raise RunError(f"experiments cannot be sealed on this machine: {reason}. To run anyway, unsealed (a "
                           "train.py could then forge its score; results are marked unsealed), pass "
                           "--allow-unsealed to init")
    check_slots(config)
    base = repo.head_commit()
    base_branch = repo.current_branch()  # where `autoresearch promote` lands the approved changes
    pins = pin_files(repo, config.locked, base)
    repo.create_branch(branch, base)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "experiments").mkdir(exist_ok=True)
    materialize_pins(repo, pins, run_dir / "pinned")
    info = RunInfo(
        tag=tag,
        branch=branch,
        base_commit=base,
        pins=tuple(pins),
        profile=config.profile,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        run_dir=run_dir,
        frozen=frozen,
        base_branch=base_branch,
    )
    atomic_write_text(run_dir / "run.json", json.dumps(info.to_json(), indent=2) + "\n")
    set_current(config, tag)
    log.info("run %s created on branch %s at %s", tag, branch, base[:7])
    return info


def _inside(config: Config, rel_path: str) -> bool:
    """Paths under the runs folder are the harness's own and never make the tree dirty."""
    try:
        runs_rel = config.runs_dir.relative_to(config.workspace).as_posix()
    except ValueError:
        return False
    return rel_path == runs_rel or rel_path.startswith(runs_rel + "/")


def set_current(config: Config, tag: str) -> None:
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config.runs_dir / CURRENT_FILE, tag + "\n")


def current_tag(config: Config) -> str | None:
    path = config.runs_dir / CURRENT_FILE
    if not path.exists():
        return None
    tag = path.read_text(encoding="utf-8").strip()
    return tag or None


def load_run(config: Config, tag: str | None = None) -> RunInfo:
    """Open an existing run; `tag=None` means the most recently initialised or resumed one."""
    if tag is None:
        tag = current_tag(config)
        if tag is None:
            raise RunError(
                f"no run exists in {config.runs_dir}: start one with `autoresearch init --tag TAG`"
            )
    run_dir = run_dir_for(config, tag)
    meta = run_dir / "run.json"
    if not meta.exists():
        known = list_tags(config)
        hint = f" Known tags: {', '.join(known)}." if known else ""
        raise RunError(f"no run with tag {tag!r} ({meta} is missing): create it with `autoresearch init --tag {tag}`.{hint}")
    info = RunInfo.from_json(json.loads(meta.read_text(encoding="utf-8")), run_dir)
    pinned = run_dir / "pinned"
    if not all((pinned / pin.path).exists() for pin in info.pins):
        materialize_pins(GitRepo(config.workspace), info.pins, pinned)
    return info


def list_tags(config: Config) -> list[str]:
    if not config.runs_dir.exists():
        return []
    return sorted(p.name for p in config.runs_dir.iterdir() if (p / "run.json").exists())
