"""Putting a run's git state back where the server left it, for the harness to call between experiments.

The server refuses to run an experiment while the repository is not as it left it (another branch checked out, HEAD
detached, the run branch moved by a commit it did not make). An agent with a shell can cause each of those, and a
refusal alone would stop an unattended loop until a person acts. These functions let the harness repair instead:

- `expected_tip`: the commit the run branch must point at (the last kept experiment, else the run's base commit);
- `index_flag_paths` / `clear_index_flags`: tracked files hidden from git by `update-index --skip-worktree` or
  `--assume-unchanged` (a change to them would be invisible to every `git status`);
- `repair_repository`: with the run's experiment lock held (so never while an experiment runs or a decision is being
  made), put the branch back on its expected tip, check it out, reset tracked files to it and keep the agent's
  pending edits of the mutable files. Stray commits are named in what it returns, for the violation record.
- `repair_stray_paths`: also under the lock, put back tracked files other than the mutable ones that differ from the
  expected tip, and move files git does not know (and does not ignore) into `runs/<tag>/quarantine/`, where they are
  kept for a person to read. The server refuses to run while either exists. Empty read-only files are left alone:
  while a sandboxed shell command runs, Claude Code places such a file at every write-protected path that does not
  exist (`.mcp.json`, `pyproject.toml`, `.bashrc`, ...) to mount over it, and removes them when the command ends.

Every git command here runs with hooks and the file-system monitor disabled (`core.hooksPath=/dev/null`,
`core.fsmonitor=false`): nothing planted in `.git` may run inside a repair.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.config import Config
from server.gitrepo import GitRepo
from server.ledger import Ledger
from server.runstate import RunInfo

_NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")


@dataclass(frozen=True)
class Repair:
    """One thing found wrong and put right; `stray_commits` are commits on the branch the server never made."""

    problem: str
    action: str
    stray_commits: tuple[str, ...] = ()

    def describe(self) -> str:
        stray = f" (stray commits {', '.join(c[:7] for c in self.stray_commits)})" if self.stray_commits else ""
        return f"{self.problem}{stray}; {self.action}"


def expected_tip(config: Config, run: RunInfo) -> str:
    """The commit the run branch must be at: the newest kept experiment's commit, else the run's base commit."""
    experiments = Ledger(run.run_dir, metric_name=config.metric).experiments()
    kept = [e for e in experiments if e.decision == "keep" and e.kept_commit]
    return str(max(kept, key=lambda e: e.id).kept_commit) if kept else run.base_commit


def _git(workspace: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *_NO_HOOKS, *args], cwd=workspace, capture_output=True, text=True, check=False,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if check and done.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` failed in {workspace} (exit {done.returncode}): "
                           f"{done.stderr.strip() or 'no message'}")
    return done.stdout


def index_flag_paths(workspace: Path) -> list[str]:
    """Tracked paths marked skip-worktree (`S`) or assume-unchanged (a lower-case tag) in git's index."""
    out = _git(workspace, "ls-files", "-v", "-z")
    flagged = []
    for entry in out.split("\0"):
        if len(entry) > 2 and (entry[0] == "S" or entry[0].islower()):
            flagged.append(entry[2:])
    return flagged


def clear_index_flags(workspace: Path, paths: list[str]) -> None:
    """Make git look at `paths` again (undo `--skip-worktree` and `--assume-unchanged`)."""
    if paths:  # one flag per call: git applies only the last of several to the paths that follow
        _git(workspace, "update-index", "--no-skip-worktree", "--", *paths)
        _git(workspace, "update-index", "--no-assume-unchanged", "--", *paths)


@contextmanager
def _experiment_lock(run_dir: Path) -> Iterator[bool]:
    """The engine's experiment lock, taken without waiting; yields False when an experiment or decision holds it."""
    fd = os.open(run_dir / "experiment.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def repository_problem(config: Config, run: RunInfo) -> str | None:
    """What is wrong with the checked-out branch or its tip, or None when the server would accept it."""
    repo = GitRepo(config.workspace)
    branch = repo.current_branch()
    expected = expected_tip(config, run)
    if not repo.branch_exists(run.branch):
        return f"the run branch {run.branch} was deleted"
    tip = repo.branch_tip(run.branch)
    if branch != run.branch:
        where = f"branch {branch}" if branch else f"a detached HEAD at {repo.head_commit()[:7]}"
        return f"the repository was on {where}, not on the run branch {run.branch}" + (
            f", and {run.branch} was at {tip[:7]} instead of {expected[:7]}" if tip != expected else "")
    if tip != expected:
        return f"branch {run.branch} was at {tip[:7]}, but the server left it at {expected[:7]}"
    return None


def repair_repository(config: Config, run: RunInfo) -> Repair | None:
    """Put the run branch back on its expected tip and check it out; None when nothing was wrong or it must wait.

    Waits (returns None) while the experiment lock is held: the engine then owns the repository. The mutable files
    keep the content they had (the agent's pending edits); everything else tracked is reset to the expected tip.
    """
    ws = config.workspace
    with _experiment_lock(run.run_dir) as locked:
        if not locked:
            return None
        problem = repository_problem(config, run)
        if problem is None:
            return None
        expected = expected_tip(config, run)
        repo = GitRepo(ws)
        stray: list[str] = []
        heads = [f"refs/heads/{run.branch}"] if repo.branch_exists(run.branch) else []
        if repo.current_branch() != run.branch:
            heads.append("HEAD")
        for head in heads:
            listed = _git(ws, "rev-list", f"{expected}..{head}", check=False).split()
            stray += [c for c in listed if c not in stray]
        pending = {rel: (ws / rel).read_bytes() for rel in config.mutable if (ws / rel).is_file()}
        clear_index_flags(ws, index_flag_paths(ws))
        _git(ws, "update-ref", "-m", "autoresearch: repair the run branch", f"refs/heads/{run.branch}", expected)
        _git(ws, "symbolic-ref", "HEAD", f"refs/heads/{run.branch}")
        _git(ws, "reset", "--quiet", "--hard", expected)
        for rel, data in pending.items():
            (ws / rel).write_bytes(data)
        return Repair(problem, f"put {run.branch} back at {expected[:7]}, checked it out and reset the tracked "
                               f"files to it (pending edits of {', '.join(config.mutable)} kept)", tuple(stray))


def stray_paths(config: Config, run: RunInfo) -> list[str]:
    """Paths git sees as changed or new that are neither mutable files nor under the runs folder."""
    out = _git(config.workspace, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    try:
        runs_rel: str | None = config.runs_dir.relative_to(config.workspace).as_posix()
    except ValueError:
        runs_rel = None
    paths: list[str] = []
    for entry in out.split("\0"):
        rel = entry[3:] if len(entry) > 3 else ""
        if not rel or rel in config.mutable or rel in paths:
            continue
        if runs_rel and (rel == runs_rel or rel.startswith(runs_rel + "/")):
            continue
        paths.append(rel)
    return sorted(paths)


def _sandbox_mask(path: Path) -> bool:
    """An empty file nobody may write: what Claude Code's sandbox mounts over a protected path that does not exist."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and not st.st_mode & 0o222


def repair_stray_paths(config: Config, run: RunInfo) -> Repair | None:
    """Put back tracked files that changed and quarantine new ones; None when there are none or it must wait."""
    ws = config.workspace
    with _experiment_lock(run.run_dir) as locked:
        if not locked:
            return None
        stray = [rel for rel in stray_paths(config, run) if not _sandbox_mask(ws / rel)]
        if not stray:
            return None
        expected = expected_tip(config, run)
        tracked = set(_git(ws, "ls-tree", "-r", "-z", "--name-only", expected, "--", *stray).split("\0")) - {""}
        quarantine = run.run_dir / "quarantine" / time.strftime("%Y%m%dT%H%M%S")
        restored, moved = [], []
        for rel in stray:
            if rel in tracked:
                _git(ws, "checkout", "--quiet", expected, "--", rel)
                restored.append(rel)
                continue
            _git(ws, "rm", "--cached", "--quiet", "--ignore-unmatch", "--", rel)
            source = ws / rel
            if source.exists() or source.is_symlink():
                target = quarantine / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), str(target))
                moved.append(rel)
        shown = ", ".join(stray[:8]) + (" ..." if len(stray) > 8 else "")
        actions = []
        if restored:
            actions.append(f"restored {', '.join(restored[:8])} from {expected[:7]}")
        if moved:
            actions.append(f"moved {', '.join(moved[:8])} to {quarantine}")
        return Repair(f"files other than {', '.join(config.mutable)} differed from commit {expected[:7]}: {shown}",
                      "; ".join(actions) or "unstaged them")
