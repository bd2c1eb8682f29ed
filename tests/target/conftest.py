"""Fixtures for the experiment target: a tiny prepared cache, shared by the whole session, and helpers to run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import prepare  # noqa: E402

# Small enough that preparing takes about a second and a training step a fraction of one.
TINY = {"AUTORESEARCH_DATA": "offline", "AUTORESEARCH_CORPUS_BYTES": "400000", "AUTORESEARCH_VOCAB_SIZE": "512",
        "AUTORESEARCH_SEQ_LEN": "64", "AUTORESEARCH_EVAL_TOKENS": "1024"}


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment variables pointing at a tiny offline cache, prepared once for the session."""
    env = dict(TINY, AUTORESEARCH_CACHE=str(tmp_path_factory.mktemp("cache")))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        prepare.prepare(prepare.source_settings())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return env


@pytest.fixture
def tiny_cache(tiny_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The tiny cache's variables set in this process for the test's duration."""
    for key, value in tiny_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AUTORESEARCH_CHECKPOINT", raising=False)
    monkeypatch.delenv("AUTORESEARCH_TIME_BUDGET", raising=False)
    return tiny_env


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A copy of train.py and prepare.py, as the harness would run them, plus a separate pinned prepare.py."""
    ws = tmp_path / "workspace"
    pinned = tmp_path / "pinned"
    ws.mkdir()
    pinned.mkdir()
    shutil.copy(REPO / "train.py", ws / "train.py")
    shutil.copy(REPO / "prepare.py", ws / "prepare.py")
    shutil.copy(REPO / "prepare.py", pinned / "prepare.py")
    yield ws


def run_python(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the venv's Python with args in cwd; the output comes back as text."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    full_env.update(env, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def last_summary(text: str) -> dict[str, str]:
    """The `key: value` lines of the last `---` block, as the harness reads them."""
    lines = text.splitlines()
    if "---" not in lines:
        return {}
    start = len(lines) - 1 - lines[::-1].index("---")
    block: dict[str, str] = {}
    for line in lines[start + 1:]:
        key, sep, value = line.partition(":")
        if not sep:
            break
        block[key.strip()] = value.strip()
    return block


@pytest.fixture
def run_py() -> object:
    """run_python, as a fixture so that test modules need not import this conftest."""
    return run_python


@pytest.fixture
def summary_of() -> object:
    """last_summary, as a fixture."""
    return last_summary


def random_model(train_file: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """train.py's model (from `train_file`) with random, non-zero weights."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(f"train_for_checkpoint_{train_file.stem}", train_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    settings = prepare.source_settings()
    config = module.GPTConfig(sequence_len=settings.seq_len, vocab_size=settings.vocab_size, n_layer=2, n_embd=64,
                              head_dim=16)
    torch.manual_seed(0)
    model = module.GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.fixture
def model_of(tiny_cache: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> object:
    return lambda train_file: random_model(train_file, monkeypatch)


@pytest.fixture
def random_checkpoint(tiny_cache: dict[str, str], workspace: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    """train.py's model with random (non-zero) weights, exported through prepare.save_checkpoint."""
    return prepare.save_checkpoint(random_model(workspace / "train.py", monkeypatch), tmp_path / "model.pt2")
