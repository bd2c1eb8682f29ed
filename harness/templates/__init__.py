"""Scaffolds: `autoresearch new speed|prompt|ml DIR` creates a working target in a new git repository.

Each template is a folder here holding the target's files, its `program.md` and an `autoresearch.toml` whose keys are
the ordinary ones (command, evaluate.mode/command, metric, direction), so a scaffolded target runs through the same
tools, rules and reports as the project's own. `ml` is the project's own pair: `prepare.py`, `train.py` and
`program.md` are copied from the project root, so the template never drifts from them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from server.gitrepo import GitRepo

TEMPLATES_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TEMPLATES_DIR.parent.parent
TEMPLATES = ("speed", "prompt", "ml")
FROM_PROJECT = {"ml": ("prepare.py", "train.py", "program.md")}
GITIGNORE = "runs/\n__pycache__/\n"


class TemplateError(RuntimeError):
    """The target cannot be created; the message says why and what to do."""


@dataclass(frozen=True)
class Created:
    directory: Path
    files: tuple[str, ...]


def template_files(name: str) -> dict[str, Path]:
    """Relative name -> source file for template ``name``."""
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template {name!r}; available templates: {', '.join(TEMPLATES)}")
    files = {p.name: p for p in sorted((TEMPLATES_DIR / name).iterdir())
             if p.is_file() and p.name != "__init__.py" and p.suffix != ".pyc"}
    for rel in FROM_PROJECT.get(name, ()):
        source = PROJECT_ROOT / rel
        if not source.is_file():
            raise TemplateError(f"the {name} template copies {rel} from the project root, but {source} is missing; "
                                "run `autoresearch new` from a checkout of the project")
        files[rel] = source
    return files


def scaffold(name: str, directory: Path, *, git_init: bool = True) -> Created:
    """Copy template ``name`` into ``directory`` (new or empty) and, by default, commit it on branch main."""
    files = template_files(name)
    directory = directory.resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise TemplateError(f"{directory} exists and is not an empty directory; pick a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    for rel, source in files.items():
        shutil.copy2(source, directory / rel)
    (directory / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    if git_init:
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=directory, check=True, capture_output=True)
        GitRepo(directory).ensure_identity()
        subprocess.run(["git", "add", "-A"], cwd=directory, check=True, capture_output=True)
        subprocess.run(["git", "commit", "-q", "-m", f"{name} target from the autoresearch template"],
                       cwd=directory, check=True, capture_output=True)
    return Created(directory, tuple(sorted([*files, ".gitignore"])))
