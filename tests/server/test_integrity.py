"""Pins of locked files: taking them, noticing a change, restoring byte-identical content, read-only copies."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from server.gitrepo import GitRepo
from server.integrity import (
    IntegrityError,
    Pin,
    PinMismatch,
    check_pins,
    materialize_pins,
    pin_files,
    restore_pin,
    sha256_bytes,
    sha256_file,
)

PREPARE = b"# locked evaluation\nDATA = [1, 2, 3]\n\n"


@pytest.fixture(autouse=True)
def bare_git_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "lib").mkdir(parents=True)
    (ws / "prepare.py").write_bytes(PREPARE)
    (ws / "lib" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(ws / "lib" / "tool.sh", 0o755)
    (ws / "train.py").write_text("lr = 0.1\n")
    git(ws, "init", "-q", "-b", "main")
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=s", "-c", "user.email=s@e", "commit", "-q", "-m", "initial")
    return ws


@pytest.fixture
def pins(ws: Path) -> tuple[Pin, ...]:
    return pin_files(GitRepo(ws), ["prepare.py", "lib/tool.sh"], "HEAD")


def test_pins_hold_the_sha256_of_the_committed_content_and_the_full_commit(ws: Path, pins: tuple[Pin, ...]) -> None:
    head = git(ws, "rev-parse", "HEAD").strip()
    assert pins[0] == Pin("prepare.py", sha256_bytes(PREPARE), head)
    assert pins[0].sha256 == sha256_file(ws / "prepare.py")
    assert check_pins(ws, pins) == []


def test_a_pin_survives_a_round_trip_through_json_in_both_shapes(pins: tuple[Pin, ...]) -> None:
    assert Pin.from_json(pins[0].to_json()) == pins[0]
    as_run_json = {p.path: {"sha256": p.sha256, "commit": p.commit} for p in pins}
    assert [Pin.from_json(v, path=k) for k, v in as_run_json.items()] == list(pins)
    with pytest.raises(IntegrityError, match="no valid 'sha256'"):
        Pin.from_json({"path": "prepare.py", "commit": "abc"})


def test_pinning_uncommitted_changes_is_refused_with_the_next_step(ws: Path) -> None:
    (ws / "prepare.py").write_text("DATA = 'tampered'\n")
    with pytest.raises(IntegrityError, match=r"prepare.py has uncommitted changes.*commit it"):
        pin_files(GitRepo(ws), ["prepare.py"], "HEAD")


def test_sha256_file_is_none_for_a_missing_file_or_a_directory(tmp_path: Path) -> None:
    assert sha256_file(tmp_path / "nope") is None
    assert sha256_file(tmp_path) is None


def test_a_changed_locked_file_is_detected_and_restored_byte_identical(ws: Path, pins: tuple[Pin, ...]) -> None:
    (ws / "prepare.py").write_text("DATA = [1]\n")
    [mismatch] = check_pins(ws, pins)
    assert mismatch.kind == "changed" and mismatch.actual == sha256_file(ws / "prepare.py")
    assert mismatch.describe() == (
        f"prepare.py changed since it was locked (sha256 {pins[0].sha256[:8]} != {mismatch.actual[:8]})"
    )
    repo = GitRepo(ws)
    restore_pin(repo, pins[0], repo.blob_at(pins[0].commit, "prepare.py"))
    assert (ws / "prepare.py").read_bytes() == PREPARE
    assert check_pins(ws, pins) == []


def test_a_deleted_locked_file_and_its_deleted_directory_are_restored_with_their_mode(
    ws: Path, pins: tuple[Pin, ...]
) -> None:
    (ws / "lib" / "tool.sh").unlink()
    (ws / "lib").rmdir()
    [mismatch] = check_pins(ws, pins)
    assert mismatch == PinMismatch("lib/tool.sh", pins[1].sha256, None, "deleted")
    assert mismatch.describe() == "lib/tool.sh was deleted"
    repo = GitRepo(ws)
    restore_pin(repo, pins[1], repo.blob_at(pins[1].commit, "lib/tool.sh"))
    assert check_pins(ws, pins) == []
    assert stat.S_IMODE(os.stat(ws / "lib" / "tool.sh").st_mode) == 0o755


def test_a_locked_file_replaced_by_a_symlink_to_identical_content_is_still_detected_and_restored(
    ws: Path, pins: tuple[Pin, ...], tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.py"
    outside.write_bytes(PREPARE)
    (ws / "prepare.py").unlink()
    (ws / "prepare.py").symlink_to(outside)
    [mismatch] = check_pins(ws, pins)
    assert mismatch.kind == "symlink" and "replaced by a symlink" in mismatch.describe()
    restore_pin(ws, pins[0], PREPARE)
    assert not (ws / "prepare.py").is_symlink() and (ws / "prepare.py").read_bytes() == PREPARE
    assert outside.read_bytes() == PREPARE  # the link's target was not written through
    assert check_pins(ws, pins) == []


def test_a_locked_file_replaced_by_a_directory_is_detected_and_restored(ws: Path, pins: tuple[Pin, ...]) -> None:
    (ws / "prepare.py").unlink()
    (ws / "prepare.py").mkdir()
    (ws / "prepare.py" / "x").write_text("x")
    [mismatch] = check_pins(ws, pins)
    assert mismatch.kind == "not_a_file"
    restore_pin(ws, pins[0], PREPARE)
    assert (ws / "prepare.py").read_bytes() == PREPARE


def test_a_symlinked_parent_directory_cannot_redirect_a_restore(
    ws: Path, pins: tuple[Pin, ...], tmp_path: Path
) -> None:
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (ws / "lib" / "tool.sh").rename(decoy / "tool.sh")
    (ws / "lib").rmdir()
    (ws / "lib").symlink_to(decoy)
    (decoy / "tool.sh").write_text("echo pwned\n")
    restore_pin(GitRepo(ws), pins[1], GitRepo(ws).blob_at("HEAD", "lib/tool.sh"))
    assert not (ws / "lib").is_symlink()
    assert (decoy / "tool.sh").read_text() == "echo pwned\n"
    assert check_pins(ws, pins) == []


def test_restoring_content_that_does_not_match_the_pin_is_refused(ws: Path, pins: tuple[Pin, ...]) -> None:
    with pytest.raises(IntegrityError, match="refusing to restore prepare.py"):
        restore_pin(ws, pins[0], b"something else\n")
    assert (ws / "prepare.py").read_bytes() == PREPARE


def test_materialized_pins_match_and_are_read_only_even_after_the_workspace_copy_changes(
    ws: Path, pins: tuple[Pin, ...], tmp_path: Path
) -> None:
    (ws / "prepare.py").write_text("DATA = 'tampered'\n")
    dest = tmp_path / "run" / "pinned"
    written = materialize_pins(GitRepo(ws), pins, dest)
    assert written == [dest / "prepare.py", dest / "lib" / "tool.sh"]
    assert check_pins(dest, pins) == []
    assert (dest / "prepare.py").read_bytes() == PREPARE
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    # materializing again over read-only copies works (resume after a crash)
    materialize_pins(GitRepo(ws), pins, dest)
    assert check_pins(dest, pins) == []
