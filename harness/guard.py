"""The file guard: puts a locked file back the moment anything changes it, and records that it happened.

Hooks see only the agent's Edit/Write calls; a shell command, a training script or another process can still write,
truncate, delete, rename or replace a locked file. The guard watches the folders that hold the locked files and, on
any event touching one, compares it with its pin and restores the pinned bytes atomically (from `runs/<tag>/pinned/`,
or from git when that copy is damaged). Each restore is a violation: a line in violations.jsonl (which voids the
experiment in flight) and an audit record. A periodic full check catches whatever the event stream missed. The guard
never loops on its own restores: a restored file matches its pin, so the events the restore causes find nothing.

Besides the bytes, the guard keeps what else decides whether a locked file still works and is still seen:

- its permission bits (an agent's `chmod 000 prepare.py` is put back to the mode the file had when the guard started,
  or git's mode when that was already broken);
- git's index flags: a tracked file marked `--skip-worktree` or `--assume-unchanged` is hidden from every `git status`,
  so the flags are cleared on every periodic check;
- the repository state the server expects (run branch checked out, at the commit the ledger says, no other file
  changed or added): a moved branch, a detached HEAD, stray commits, a changed tracked file or a new file are repaired
  between experiments through `server.repair` (new files are moved to `runs/<tag>/quarantine/`), instead of leaving
  every later experiment refused until a person acts.

Each repair is a violation like a restored file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from server.inflight import read_entries
from server.audit import AuditLog
from server.config import Config
from server.integrity import Pin, PinMismatch, check_pins, restore_pin, sha256_bytes
from server.jsonl import append_record
from server.repair import clear_index_flags, index_flag_paths, repair_repository, repair_stray_paths
from server.runstate import RunInfo

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
_EVENTS = [FileModifiedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent, FileAttribEvent,
           DirCreatedEvent, DirDeletedEvent, DirMovedEvent]

Violation = dict[str, Any]


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Handler(FileSystemEventHandler):
    def __init__(self, guard: FileGuard) -> None:
        self._guard = guard

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._guard.handle_event(event)


class FileGuard:
    """Watch and restore the locked files of ``run`` while started (``with FileGuard(...):`` or start/stop).

    ``on_violation`` receives each violation record after the file is back; it runs on the guard's own threads.
    """

    def __init__(self, config: Config, run: RunInfo, audit: AuditLog | None = None,
                 on_violation: Callable[[Violation], None] | None = None, *,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s is {interval_s!r}; pass the seconds between full checks (> 0), e.g. 2")
        self.config = config
        self.run = run
        self.audit = audit if audit is not None else AuditLog(run.run_dir / "audit.jsonl")
        self.on_violation = on_violation
        self.interval_s = interval_s
        self.violations: list[Violation] = []
        self.events_seen = 0
        self.last_event_path: str | None = None
        self._targets = {os.path.normpath(config.workspace / pin.path): pin for pin in run.pins}
        self._dirs = sorted({os.path.dirname(target) for target in self._targets})
        self._watches: dict[str, tuple[Any, int]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._observer: Any = None
        self._ticker: threading.Thread | None = None
        self._repo: Any = None
        self._modes: dict[str, int] = {}

    # ---- lifecycle ----

    def start(self) -> FileGuard:
        if self._observer is not None:
            raise RuntimeError("the file guard is already running; call stop() before starting it again")
        self._stop.clear()
        self.check_all("guard start")
        self._modes = {pin.path: self._start_mode(pin) for pin in self.run.pins}
        self.check_repository("guard start")
        self._observer = Observer()
        self._watch_dirs()
        self._observer.start()
        self._ticker = threading.Thread(target=self._tick, name="file-guard-check", daemon=True)
        self._ticker.start()
        log.info("guarding %s of run %s", ", ".join(p.path for p in self.run.pins), self.run.tag)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
            self._observer = None
        if self._ticker is not None:
            self._ticker.join(timeout_s)
            self._ticker = None
        self._watches.clear()

    def __enter__(self) -> FileGuard:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._observer is not None

    def _watch_dirs(self) -> None:
        """Watch each folder holding a locked file; a folder deleted and recreated gets a new watch.

        Called without ``_lock``: the observer holds its own lock while it runs our handler, which takes ``_lock``.
        """
        observer = self._observer
        if observer is None:
            return
        for directory in self._dirs:
            try:
                inode = os.stat(directory).st_ino
            except FileNotFoundError:
                continue  # the periodic check restores the file, and with it the folder
            current = self._watches.get(directory)
            if current is not None and current[1] == inode:
                continue
            if current is not None:
                try:
                    observer.unschedule(current[0])
                except (KeyError, ValueError):
                    pass
            watch = observer.schedule(_Handler(self), directory, recursive=False, event_filter=_EVENTS)
            self._watches[directory] = (watch, inode)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_all("periodic check")
                self._watch_dirs()
            except Exception:  # the safety net must outlive any single failure
                log.exception("periodic integrity check failed; trying again in %.1f s", self.interval_s)
            try:
                self.check_repository("periodic check")
            except Exception:
                log.exception("periodic repository check failed; trying again in %.1f s", self.interval_s)

    # ---- checking ----

    def handle_event(self, event: FileSystemEvent) -> None:
        paths = [_text(event.src_path), _text(getattr(event, "dest_path", "") or "")]
        self.events_seen += 1
        self.last_event_path = paths[1] or paths[0]
        try:
            for path in paths:
                if not path:
                    continue
                norm = os.path.normpath(path)
                pin = self._targets.get(norm)
                if pin is not None:
                    self.check(pin, f"{event.event_type} event")
                elif event.is_directory and any(t.startswith(norm + os.sep) for t in self._targets):
                    self.check_all(f"folder {event.event_type} event")
        except Exception:
            log.exception("integrity check after %s failed; the periodic check will retry", event)

    def check_all(self, trigger: str) -> list[Violation]:
        found = []
        for pin in self.run.pins:
            record = self.check(pin, trigger)
            if record is not None:
                found.append(record)
        return found

    def check(self, pin: Pin, trigger: str) -> Violation | None:
        """Compare one locked file with its pin; restore and record when it differs. Returns the violation."""
        with self._lock:
            mismatch = _inspect(self.config.workspace, pin)
            if mismatch is None:
                return self._check_mode(pin, trigger)
            # The violation is on disk before the file is restored: the engine, which reads violations.jsonl once a
            # run ends, can never find the file already restored but the violation not yet written.
            record = self._record(pin.path, f"{mismatch.describe()}; restoring it", trigger)
            restored, note = self._restore(pin)
            record = self._finish(pin.path, record, restored, note)
        self._notify(record)
        return record

    def _notify(self, record: Violation) -> None:
        if self.on_violation is not None:
            try:
                self.on_violation(record)
            except Exception:
                log.exception("on_violation callback failed for %s", record.get("path"))

    # ---- permission bits ----

    def _start_mode(self, pin: Pin) -> int:
        """The mode to keep: the file's own when the guard starts, git's when that one hides the file from its owner."""
        current = _permissions(self.config.workspace / pin.path)
        return current if current is not None and current & 0o400 else self._mode(pin)

    def _check_mode(self, pin: Pin, trigger: str) -> Violation | None:
        """Called with ``_lock`` held, after the content matched its pin."""
        expected = self._modes.get(pin.path)
        target = self.config.workspace / pin.path
        actual = _permissions(target)
        if expected is None or actual is None or actual == expected:
            return None
        record = self._record(pin.path, f"{pin.path} had its mode changed from {expected:04o} to {actual:04o}; "
                                         "restoring it", trigger)
        try:
            os.chmod(target, expected, follow_symlinks=False)
            restored, note = True, f"restored mode {expected:04o}"
        except OSError as exc:
            restored, note = False, (f"could not restore mode {expected:04o} ({exc}); "
                                     f"run `chmod {expected:o} {pin.path}`")
        record = self._finish(pin.path, record, restored, note)
        self._notify(record)
        return record

    # ---- git's index and the run branch ----

    def check_repository(self, trigger: str) -> list[Violation]:
        """Clear index flags that hide tracked files, and put the run branch back where the server left it."""
        found: list[Violation] = []
        workspace = self.config.workspace
        with self._lock:
            flagged = index_flag_paths(workspace)
            if flagged:
                shown = ", ".join(flagged[:8]) + (" ..." if len(flagged) > 8 else "")
                record = self._record(flagged[0], f"git was told to ignore changes to {shown} (update-index "
                                                   "--skip-worktree or --assume-unchanged); restoring it",
                                      trigger)
                try:
                    clear_index_flags(workspace, flagged)
                    restored, note = True, "cleared the flags"
                except Exception as exc:
                    restored, note = False, (f"could not clear the flags ({exc}); run `git update-index "
                                             f"--no-skip-worktree --no-assume-unchanged -- {shown}`")
                found.append(self._finish(flagged[0], record, restored, note))
            repair = repair_repository(self.config, self.run)
            if repair is not None:
                record = self._record(".git", f"{repair.describe()}; repository repaired", trigger)
                found.append(self._finish(".git", record, True, "repository repaired"))
            stray = repair_stray_paths(self.config, self.run)
            if stray is not None:
                record = self._record(".", f"{stray.describe()}; working tree repaired", trigger)
                found.append(self._finish(".", record, True, "working tree repaired"))
        for record in found:
            self._notify(record)
        return found

    def _restore(self, pin: Pin) -> tuple[bool, str]:
        try:
            source, origin = self._pinned_bytes(pin)
            restore_pin(self.config.workspace, pin, source, mode=self._modes.get(pin.path) or self._mode(pin))
            return True, f"restored it from {origin}"
        except Exception as exc:
            log.error("could not restore %s: %s", pin.path, exc)
            return False, f"could not restore it ({exc}); restore it by hand from commit {pin.commit[:12]}"

    def _pinned_bytes(self, pin: Pin) -> tuple[bytes, str]:
        copy = self.run.run_dir / "pinned" / pin.path
        try:
            data = copy.read_bytes()
            if sha256_bytes(data) == pin.sha256:
                return data, f"the pinned copy (commit {pin.commit[:7]})"
            log.error("the pinned copy %s does not match its pin; restoring %s from git instead", copy, pin.path)
        except OSError as exc:
            log.error("cannot read the pinned copy %s (%s); restoring %s from git instead", copy, exc, pin.path)
        return self._git().blob_at(pin.commit, pin.path), f"commit {pin.commit[:7]}"

    def _mode(self, pin: Pin) -> int:
        try:
            return 0o755 if self._git().mode_at(pin.commit, pin.path) == 0o100755 else 0o644
        except Exception as exc:  # the content matters; a wrong mode is not worth failing the restore
            log.warning("cannot read the git mode of %s (%s); restoring it as 0644", pin.path, exc)
            return 0o644

    def _git(self) -> Any:
        if self._repo is None:
            from server.gitrepo import GitRepo

            self._repo = GitRepo(self.config.workspace)
        return self._repo

    def _record(self, path: str, detail: str, trigger: str) -> Violation:
        """Write the violation (``detail`` ends with what is being done, e.g. "restoring it") before acting on it."""
        experiment_id = _in_flight_id(self.run.run_dir / "inflight.json")
        record: Violation = {
            "time": _iso_now(), "source": "guard", "path": path,
            "when": f"during experiment {experiment_id}" if experiment_id is not None else "between experiments",
            "experiment_id": experiment_id,
            "detail": f"{detail} (file guard, on a {trigger})", "restored": True,
        }
        append_record(self.run.run_dir / "violations.jsonl", record)
        return record

    def _finish(self, path: str, record: Violation, restored: bool, note: str) -> Violation:
        """Audit the outcome; a failed restore gets a second violation record saying so."""
        record = {**record, "detail": str(record["detail"]).replace("restoring it", note), "restored": restored}
        if not restored:
            append_record(self.run.run_dir / "violations.jsonl", {**record, "time": _iso_now()})
        try:
            self.audit.append("guard", "violation", status="blocked", summary=record)
        except Exception:
            log.exception("could not append the violation of %s to the audit chain", path)
        self.violations.append(record)
        log.warning("%s", record["detail"])
        return record


def _inspect(workspace: Path, pin: Pin) -> PinMismatch | None:
    try:
        found = check_pins(workspace, [pin])
    except OSError:  # unreadable (its permissions were changed): as good as changed
        return PinMismatch(pin.path, pin.sha256, None, "changed")
    return found[0] if found else None


def _permissions(path: Path) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_mode & 0o7777


def _in_flight_id(path: Path) -> int | None:
    """The first experiment in flight (with several slots, a violation is charged to the lowest running id; every
    experiment running at that moment is voided by the server's own check anyway)."""
    entries = read_entries(path.parent)
    return int(entries[0]["id"]) if entries else None


def _text(path: str | bytes) -> str:
    return os.fsdecode(path) if isinstance(path, bytes) else path


# ---- `autoresearch guard` ----

def run_guard(config: Config, run: RunInfo, stop_event: threading.Event, *,
              interval_s: float = DEFAULT_INTERVAL_S) -> list[Violation]:
    """Guard until ``stop_event`` is set; returns the violations it repaired."""
    with FileGuard(config, run, interval_s=interval_s) as guard:
        stop_event.wait()
    return guard.violations


def add_guard_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `guard` on an argparse subparsers object; the handler is stored as `handler`."""
    parser = subparsers.add_parser("guard", help="watch the locked files and restore them the moment they change",
                                   description=cmd_guard.__doc__)
    parser.add_argument("--workspace", type=Path, default=Path(os.environ.get("AUTORESEARCH_WORKSPACE", ".")),
                        help="repository root (default: current directory)")
    parser.add_argument("--config", type=Path, default=None, help="configuration file (default: pyproject.toml)")
    parser.add_argument("--profile", default=None, help="configuration profile")
    parser.add_argument("--tag", default=None, help="run tag (default: the most recent run)")
    parser.add_argument("--interval", type=_positive_seconds, default=DEFAULT_INTERVAL_S,
                        help=f"seconds between full checks, besides the file events (default {DEFAULT_INTERVAL_S:g})")
    parser.set_defaults(handler=cmd_guard)
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds; use e.g. 2")
    return value


def cmd_guard(args: argparse.Namespace) -> int:
    """Watch the locked files of a run and restore them the moment they change, until interrupted."""
    from server.config import load_config
    from server.runstate import load_run

    config = load_config(args.workspace.resolve(), args.config, args.profile)
    run = load_run(config, args.tag)
    stop_event = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_event.set())
    started = time.monotonic()
    with FileGuard(config, run, interval_s=args.interval) as guard:
        print(f"guarding {', '.join(p.path for p in run.pins)} of run {run.tag}; Ctrl-C to stop", flush=True)
        stop_event.wait()
    print(f"guard stopped after {time.monotonic() - started:.0f} s; {len(guard.violations)} violation(s) repaired",
          flush=True)
    return 0
