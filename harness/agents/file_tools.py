"""The API agent's own file tools: view, edit and write, confined to the files the configuration lets it change.

Claude Code brings its own Read/Edit/Write and relies on deny rules and a file guard; the built-in agent has no
tools but these, so the confinement lives here. A path is resolved (symlinks and `..` followed) before it is
checked, so `sub/../prepare.py`, an absolute path or a symlink pointing at a locked file all land on what they
really name. Edits and writes go only to the mutable files; viewing is also allowed for the locked files, which
define the experiment (reading the evaluation is useful and harmless). Everything else is refused with a message
that names the path and the files that are allowed. The server's pins and the file guard still check afterwards:
this is the first line, not the only one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VIEW_LIMIT_CHARS = 60_000  # one view must not flood the context; the model can page with start_line/end_line


class FileToolError(Exception):
    """A refused or impossible file operation; the message is shown to the model as an error result."""


@dataclass(frozen=True)
class FileTools:
    workspace: Path
    mutable: tuple[str, ...]  # workspace-relative posix paths, as in the configuration
    locked: tuple[str, ...] = ()

    # ---- path checks ----

    def _real(self, rel: str) -> Path:
        return Path(os.path.realpath(self.workspace / rel))

    def _resolve(self, path: str, *, for_write: bool) -> tuple[Path, str]:
        """(real path, configured name) of an allowed file, or FileToolError saying why not."""
        if not isinstance(path, str) or not path.strip():
            raise FileToolError(f"path must be a file name such as {self.mutable[0]!r}, got {path!r}")
        candidate = Path(path.strip())
        if not candidate.is_absolute():
            candidate = self.workspace / candidate
        real = Path(os.path.realpath(candidate))
        editable = ", ".join(self.mutable)
        locked_real = {self._real(rel) for rel in self.locked}
        for rel in self.mutable:
            if real == self._real(rel):
                if real in locked_real or not _inside(real, Path(os.path.realpath(self.workspace))):
                    raise FileToolError(f"{path} resolves to {real}, which is locked or outside the workspace "
                                        f"(a symlink?); it cannot be changed here. Editable: {editable}.")
                return real, rel
        if not for_write:
            for rel in self.locked:
                if real == self._real(rel):
                    return real, rel
        what = "locked" if real in locked_real else "not an editable file"
        if not real.exists():
            what = "not an editable file (new files cannot be created)"
        raise FileToolError(f"{path} (resolved to {real}) is {what}. You may change only: {editable}"
                            + ("" if for_write else f"; you may also view: {', '.join(self.locked) or 'nothing else'}")
                            + ". Use the run tools for everything else.")

    # ---- the tools ----

    def view_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
        """The file's lines, numbered from 1, between start_line and end_line (inclusive) when given."""
        real, rel = self._resolve(path, for_write=False)
        lines = _read(real, rel).splitlines()
        first = 1 if start_line is None else int(start_line)
        last = len(lines) if end_line is None else min(int(end_line), len(lines))
        if first < 1 or (lines and first > len(lines)) or last < first - 1:
            raise FileToolError(f"line range {start_line}-{end_line} is outside {rel} (1-{len(lines)} lines)")
        width = len(str(max(last, 1)))
        out: list[str] = []
        size = 0
        for number in range(first, last + 1):
            row = f"{number:>{width}}  {lines[number - 1]}"
            size += len(row) + 1
            if size > VIEW_LIMIT_CHARS:
                out.append(f"... (cut at line {number - 1} of {len(lines)}; view from start_line={number})")
                break
            out.append(row)
        header = f"{rel}: lines {first}-{last} of {len(lines)}"
        return header + "\n" + "\n".join(out)

    def edit_file(self, path: str, old_text: str, new_text: str) -> str:
        """Replace the one occurrence of old_text with new_text."""
        real, rel = self._resolve(path, for_write=True)
        if not isinstance(old_text, str) or not old_text:
            raise FileToolError("old_text must be the exact, non-empty text to replace (copy it from view_file "
                                "without the line numbers)")
        if not isinstance(new_text, str):
            raise FileToolError(f"new_text must be a string, got {type(new_text).__name__}")
        source = _read(real, rel)
        count = source.count(old_text)
        if count == 0:
            raise FileToolError(f"old_text was not found in {rel}; view the file and copy the text exactly "
                                "(whitespace included, without line numbers)")
        if count > 1:
            raise FileToolError(f"old_text occurs {count} times in {rel}; include more surrounding lines so it "
                                "matches exactly once")
        if old_text == new_text:
            raise FileToolError("old_text and new_text are the same; nothing would change")
        _write(real, source.replace(old_text, new_text, 1))
        log.info("edited %s (%d -> %d characters)", rel, len(old_text), len(new_text))
        return f"edited {rel}: replaced {len(old_text)} characters with {len(new_text)}"

    def write_file(self, path: str, content: str) -> str:
        """Replace the whole content of an editable file."""
        real, rel = self._resolve(path, for_write=True)
        if not isinstance(content, str):
            raise FileToolError(f"content must be a string, got {type(content).__name__}")
        _write(real, content)
        log.info("wrote %s (%d characters)", rel, len(content))
        return f"wrote {rel} ({len(content)} characters, {content.count(chr(10)) + 1} lines)"

    # ---- as model tools ----

    def definitions(self) -> list[dict[str, Any]]:
        """Anthropic tool definitions for the three tools."""
        editable = ", ".join(self.mutable)
        path = {"type": "string", "description": f"Workspace-relative path; editable: {editable}."}
        return [
            {"name": "view_file",
             "description": f"Show an editable file ({editable}) or a locked one ({', '.join(self.locked) or '-'}) "
                            "with line numbers. Optional start_line/end_line (1-based, inclusive).",
             "input_schema": {"type": "object", "properties": {
                 "path": path, "start_line": {"type": "integer", "minimum": 1},
                 "end_line": {"type": "integer", "minimum": 1}}, "required": ["path"]}},
            {"name": "edit_file",
             "description": f"Replace exactly one occurrence of old_text with new_text in {editable}. old_text must "
                            "match the file exactly (no line numbers).",
             "input_schema": {"type": "object", "properties": {
                 "path": path, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
                 "required": ["path", "old_text", "new_text"]}},
            {"name": "write_file",
             "description": f"Replace the whole content of {editable}. Prefer edit_file for small changes.",
             "input_schema": {"type": "object", "properties": {"path": path, "content": {"type": "string"}},
                              "required": ["path", "content"]}},
        ]

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Run tool `name`: (text for the model, is_error). Never raises for the model's mistakes."""
        try:
            if name == "view_file":
                return self.view_file(arguments.get("path", ""), arguments.get("start_line"),
                                      arguments.get("end_line")), False
            if name == "edit_file":
                return self.edit_file(arguments.get("path", ""), arguments.get("old_text", ""),
                                      arguments.get("new_text", "")), False
            if name == "write_file":
                return self.write_file(arguments.get("path", ""), arguments.get("content", "")), False
        except FileToolError as exc:
            return str(exc), True
        except (TypeError, ValueError) as exc:
            return f"{name}: bad arguments {sorted(arguments)}: {exc}", True
        return f"unknown file tool {name!r}; available: view_file, edit_file, write_file", True

    @property
    def names(self) -> frozenset[str]:
        return frozenset({"view_file", "edit_file", "write_file"})


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _read(real: Path, rel: str) -> str:
    try:
        return real.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileToolError(f"{rel} does not exist; restore it with commit_or_revert(prefer='revert')") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileToolError(f"cannot read {rel}: {exc}") from None


def _write(real: Path, text: str) -> None:
    """In place (same inode and mode), as an editor saves; the file guard and the server see one change."""
    try:
        with open(real, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise FileToolError(f"cannot write {real.name}: {exc}") from None
