"""Pins of the locked files: what they must contain, how to notice a change, how to put them back.

A pin is the sha256 of a locked file's content at a commit. Pinning refuses uncommitted content, so every pin can be
restored from git. The evaluation reads a read-only copy (``materialize_pins``), never the workspace copy, so a change
the agent slips in between two checks still cannot alter how a result is measured.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from server.gitrepo import GitRepo

logger = logging.getLogger(__name__)

MismatchKind = Literal["changed", "deleted", "symlink", "not_a_file"]


class IntegrityError(RuntimeError):
    """A pin cannot be taken or honoured; the message says which file and what to do."""


@dataclass(frozen=True)
class Pin:
    """A locked file's expected sha256 and the commit its content comes from."""

    path: str
    sha256: str
    commit: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256, "commit": self.commit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | None = None) -> Pin:
        """Read ``{"path", "sha256", "commit"}``, or run.json's ``{path: {"sha256", "commit"}}`` value with ``path``."""
        values = {"path": path if path is not None else data.get("path"), "sha256": data.get("sha256"),
                  "commit": data.get("commit")}
        for key, value in values.items():
            if not isinstance(value, str) or not value:
                raise IntegrityError(f"pin {dict(data)!r} has no valid {key!r}; the run's run.json is damaged")
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PinMismatch:
    """A locked file that no longer matches its pin; ``actual`` is the sha256 of what is there (None when absent)."""

    path: str
    expected: str
    actual: str | None
    kind: MismatchKind = "changed"

    def describe(self) -> str:
        if self.kind == "deleted":
            return f"{self.path} was deleted"
        if self.kind == "symlink":
            return f"{self.path} was replaced by a symlink"
        if self.kind == "not_a_file":
            return f"{self.path} was replaced by something that is not a file (a directory?)"
        return f"{self.path} changed since it was locked (sha256 {self.expected[:8]} != {(self.actual or '')[:8]})"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str | None:
    """sha256 of the file's content (following symlinks); None when there is no such regular file."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def pin_files(repo: GitRepo, paths: Iterable[str], commit: str) -> tuple[Pin, ...]:
    """Pin each path to its content at ``commit``; refuses a working copy that differs from that commit."""
    full = repo.resolve(commit)
    pins: list[Pin] = []
    for path in paths:
        data = repo.blob_at(full, path)
        if repo.file_changed_since(full, path):
            raise IntegrityError(
                f"{path} has uncommitted changes (the working copy differs from commit {full[:12]}); a locked file "
                f"must be committed before it is pinned: commit it (`git commit {path}`) and try again"
            )
        pins.append(Pin(path=PurePosixPath(path).as_posix(), sha256=sha256_bytes(data), commit=full))
    return tuple(pins)


def check_pins(workspace: str | os.PathLike[str], pins: Iterable[Pin]) -> list[PinMismatch]:
    """Every pin whose file is missing, not a regular file, a symlink, or has other content."""
    root = Path(workspace)
    found: list[PinMismatch] = []
    for pin in pins:
        target = root / pin.path
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            found.append(PinMismatch(pin.path, pin.sha256, None, "deleted"))
            continue
        except NotADirectoryError:
            found.append(PinMismatch(pin.path, pin.sha256, None, "not_a_file"))
            continue
        if stat.S_ISLNK(mode):
            found.append(PinMismatch(pin.path, pin.sha256, sha256_file(target), "symlink"))
        elif not stat.S_ISREG(mode):
            found.append(PinMismatch(pin.path, pin.sha256, None, "not_a_file"))
        else:
            actual = sha256_file(target)
            if actual != pin.sha256:
                found.append(PinMismatch(pin.path, pin.sha256, actual, "changed"))
    return found


def _clear_parents(root: Path, rel: str) -> Path:
    """Make every parent of ``rel`` under ``root`` a real directory (a symlinked parent could redirect the write)."""
    current = root
    for part in PurePosixPath(rel).parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        current.mkdir(exist_ok=True)
    return current


def _atomic_write(target: Path, data: bytes, mode: int) -> None:
    """Write via a temp file in the same directory and ``os.replace``; a directory in the way is removed first."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)  # replaces a symlink itself, never its target
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def restore_pin(
    repo_or_workspace: GitRepo | str | os.PathLike[str], pin: Pin, source_bytes: bytes, *, mode: int | None = None
) -> None:
    """Put ``pin``'s content back atomically, with its mode (from git when a repo is given, else 0o644).

    ``source_bytes`` must hash to the pin: restoring the wrong content would be worse than reporting the change.
    """
    if sha256_bytes(source_bytes) != pin.sha256:
        raise IntegrityError(
            f"refusing to restore {pin.path}: the source content has sha256 {sha256_bytes(source_bytes)[:8]}, "
            f"the pin expects {pin.sha256[:8]}; restore it from commit {pin.commit[:12]} with git"
        )
    if isinstance(repo_or_workspace, GitRepo):
        root = repo_or_workspace.workspace
        if mode is None:
            mode = 0o755 if repo_or_workspace.mode_at(pin.commit, pin.path) == 0o100755 else 0o644
    else:
        root = Path(repo_or_workspace)
    _clear_parents(root, pin.path)
    _atomic_write(root / pin.path, source_bytes, 0o644 if mode is None else mode)
    logger.warning("restored %s from commit %s", pin.path, pin.commit[:12])


def materialize_pins(repo: GitRepo, pins: Iterable[Pin], dest_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each pinned file's content under ``dest_dir`` (same relative path), read-only, and return the paths."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for pin in pins:
        data = repo.blob_at(pin.commit, pin.path)
        if sha256_bytes(data) != pin.sha256:
            raise IntegrityError(
                f"{pin.path} at commit {pin.commit[:12]} has sha256 {sha256_bytes(data)[:8]}, not the pinned "
                f"{pin.sha256[:8]}; the run's pins do not match its history, start a new run"
            )
        _clear_parents(dest, pin.path)
        _atomic_write(dest / pin.path, data, 0o444)
        written.append(dest / pin.path)
    return written
