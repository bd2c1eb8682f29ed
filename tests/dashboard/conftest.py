"""Fixtures for the dashboard tests: one headless Chromium per session, and a run with every status."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import chromium, chromium_path  # noqa: E402
from run_builder import BuiltRun, every_status_run  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "dashboard"  # git-ignored; screenshots to look at


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Per module: Playwright's sync API keeps an event loop running in this thread until it stops, and async tests
    elsewhere in the suite need the thread free of one."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[test]' (scripts/test.sh does)")
    if chromium_path() is None:
        pytest.skip("chromium is missing: run scripts/install_browser.sh (Debian's chromium, driven headless)")
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"


@pytest.fixture
def run(tmp_path: Path) -> BuiltRun:
    return every_status_run(tmp_path / "runs" / "demo")


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
