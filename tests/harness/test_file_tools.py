"""The API agent's file tools change the mutable files and nothing else, however the path is spelled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.agents.file_tools import FileToolError, FileTools

TRAIN = "LR = 0.1          # learning rate\nWIDTH = 8\nprint('train')\n"
PREPARE = "def score():\n    return 1.0\n"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text(TRAIN, encoding="utf-8")
    (root / "prepare.py").write_text(PREPARE, encoding="utf-8")
    (root / "notes.txt").write_text("secret\n", encoding="utf-8")
    (root / "sub").mkdir()
    return root


@pytest.fixture
def tools(ws: Path) -> FileTools:
    return FileTools(ws, ("train.py",), ("prepare.py",))


def test_an_edit_of_train_py_replaces_the_one_occurrence_of_the_old_text(tools: FileTools, ws: Path) -> None:
    message = tools.edit_file("train.py", "LR = 0.1", "LR = 0.3")

    assert "edited train.py" in message
    assert (ws / "train.py").read_text(encoding="utf-8") == TRAIN.replace("LR = 0.1", "LR = 0.3")


def test_an_edit_whose_old_text_is_missing_or_ambiguous_is_refused_and_changes_nothing(tools: FileTools,
                                                                                       ws: Path) -> None:
    with pytest.raises(FileToolError, match="not found"):
        tools.edit_file("train.py", "LR = 0.7", "LR = 0.3")
    (ws / "train.py").write_text("A = 1\nA = 1\n", encoding="utf-8")
    with pytest.raises(FileToolError, match="occurs 2 times"):
        tools.edit_file("train.py", "A = 1", "A = 2")
    assert (ws / "train.py").read_text(encoding="utf-8") == "A = 1\nA = 1\n"


def test_locked_files_can_be_viewed_but_never_edited_or_written(tools: FileTools, ws: Path) -> None:
    assert "return 1.0" in tools.view_file("prepare.py")
    with pytest.raises(FileToolError, match="locked"):
        tools.edit_file("prepare.py", "1.0", "0.0")
    with pytest.raises(FileToolError, match="locked.*You may change only: train.py"):
        tools.write_file("prepare.py", "hacked")
    assert (ws / "prepare.py").read_text(encoding="utf-8") == PREPARE


@pytest.mark.parametrize("path", ["../ws/prepare.py", "sub/../prepare.py", "./prepare.py"])
def test_dot_dot_paths_are_resolved_before_the_check(tools: FileTools, ws: Path, path: str) -> None:
    with pytest.raises(FileToolError):
        tools.write_file(path, "hacked")
    assert (ws / "prepare.py").read_text(encoding="utf-8") == PREPARE


def test_a_dot_dot_path_that_lands_on_train_py_is_train_py(tools: FileTools, ws: Path) -> None:
    tools.write_file("sub/../train.py", "LR = 1\n")

    assert (ws / "train.py").read_text(encoding="utf-8") == "LR = 1\n"


def test_paths_outside_the_workspace_and_other_files_are_refused_even_for_viewing(tools: FileTools,
                                                                                   tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("x = 1\n", encoding="utf-8")
    for path in (str(outside), "../outside.py", "notes.txt", "/etc/passwd"):
        with pytest.raises(FileToolError, match="train.py"):
            tools.view_file(path)
    with pytest.raises(FileToolError):
        tools.write_file(str(outside), "y = 2\n")
    assert outside.read_text(encoding="utf-8") == "x = 1\n"


def test_a_symlink_to_a_locked_file_is_refused(tools: FileTools, ws: Path) -> None:
    os.symlink(ws / "prepare.py", ws / "link.py")

    with pytest.raises(FileToolError, match="locked"):
        tools.write_file("link.py", "hacked")
    with pytest.raises(FileToolError, match="locked"):
        tools.edit_file("link.py", "1.0", "0.0")
    assert (ws / "prepare.py").read_text(encoding="utf-8") == PREPARE


def test_a_mutable_file_replaced_by_a_symlink_to_a_locked_file_is_refused(ws: Path) -> None:
    (ws / "train.py").unlink()
    os.symlink(ws / "prepare.py", ws / "train.py")
    tools = FileTools(ws, ("train.py",), ("prepare.py",))

    with pytest.raises(FileToolError, match="locked or outside the workspace"):
        tools.write_file("train.py", "hacked")
    assert (ws / "prepare.py").read_text(encoding="utf-8") == PREPARE


def test_new_files_cannot_be_created(tools: FileTools, ws: Path) -> None:
    with pytest.raises(FileToolError, match="new files cannot be created"):
        tools.write_file("helper.py", "x = 1\n")
    assert not (ws / "helper.py").exists()


def test_view_numbers_lines_and_honours_the_range(tools: FileTools) -> None:
    text = tools.view_file("train.py", start_line=2, end_line=3)

    assert text.splitlines() == ["train.py: lines 2-3 of 3", "2  WIDTH = 8", "3  print('train')"]
    with pytest.raises(FileToolError, match="outside train.py"):
        tools.view_file("train.py", start_line=9)


def test_call_turns_refusals_and_bad_arguments_into_error_results_for_the_model(tools: FileTools) -> None:
    text, is_error = tools.call("write_file", {"path": "prepare.py", "content": "x"})
    assert is_error and "prepare.py" in text
    text, is_error = tools.call("view_file", {"path": "train.py", "start_line": "two"})
    assert is_error and "bad arguments" in text
    text, is_error = tools.call("edit_file", {"path": "train.py", "old_text": "WIDTH = 8", "new_text": "WIDTH = 16"})
    assert not is_error
    assert {d["name"] for d in tools.definitions()} == {"view_file", "edit_file", "write_file"}
