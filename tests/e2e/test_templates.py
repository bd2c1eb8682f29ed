"""The shipped targets, scaffolded by `autoresearch new` and run through the real server over stdio by a scripted
MCP client: the speed target keeps a real speed-up and rejects a wrong-but-fast change; the prompt target, with the
fake Messages API standing in for the model, keeps a prompt that passes more checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from fakes.fake_anthropic import FakeAnthropic, RecordedRequest
from harness.cli import main
from harness.templates import PROJECT_ROOT, TEMPLATES, TEMPLATES_DIR, TemplateError, scaffold
from server.config import load_config
from server.ledger import Ledger

from helpers import REPO_ROOT, git

MERGE_SORT = '''"""The function to make faster."""


def solve(values: list[int]) -> int:
    """How many pairs i < j have values[i] > values[j]: counted while merge-sorting, O(n log n)."""
    def sort(items: list[int]) -> tuple[list[int], int]:
        if len(items) <= 1:
            return items, 0
        mid = len(items) // 2
        left, a = sort(items[:mid])
        right, b = sort(items[mid:])
        merged, count, i, j = [], a + b, 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                j += 1
                count += len(left) - i
        return merged + left[i:] + right[j:], count
    return sort(list(values))[1]


if __name__ == "__main__":
    print(solve([3, 1, 2]))
'''

ADJACENT_ONLY = '''"""Fast, and wrong: counts only neighbours out of order."""


def solve(values: list[int]) -> int:
    return sum(1 for a, b in zip(values, values[1:]) if a > b)


if __name__ == "__main__":
    print(solve([3, 1, 2]))
'''

HANDED_OFF = '''"""Hands the work to a process it never waits for, hoping only its own CPU time is counted."""
import json
import subprocess
import sys

NAIVE = "import json,sys\\nv=json.loads(sys.stdin.read())\\nprint(sum(1 for i in range(len(v)) for j in range(i+1,len(v)) if v[i]>v[j]))"


def solve(values: list[int]) -> int:
    helper = subprocess.Popen([sys.executable, "-c", NAIVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    helper.stdin.write(json.dumps(values))
    helper.stdin.close()
    return int(helper.stdout.read())
'''

BETTER_PROMPT = """You are a customer support assistant for an online shop. Greet the customer by name. Keep every
reply under 80 words. End with a question asking whether they need anything else.
"""

WORSE_PROMPT = """You are a customer support assistant for an online shop. Be brief.
"""


def server_params(workspace: Path, tag: str, extra_env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--workspace", str(workspace), "--tag", tag],
        env={"PYTHONPATH": str(REPO_ROOT), "HOME": os.environ["HOME"], "AUTORESEARCH_SESSION_ID": "scripted",
             **{k: os.environ[k] for k in ("AUTORESEARCH_KEY_DIR", "AUTORESEARCH_PRIVATE_DIR") if k in os.environ},
             **(extra_env or {})},
        cwd=str(REPO_ROOT))


async def drive(params: StdioServerParameters, mutable: Path, versions: list[tuple[str, str | None]]) -> list[dict]:
    """A scripted agent: for each (description, new file content or None for the baseline) run and decide."""
    results: list[dict] = []
    async with Client(params, read_timeout_seconds=None) as client:
        for description, content in versions:
            if content is not None:
                mutable.write_text(content, encoding="utf-8")
            result = await client.call_tool("run_experiment", {"description": description})
            assert not result.is_error, result.content
            outcome = dict(result.structured_content or {})
            if outcome["decision"] == "pending":
                verdict = await client.call_tool("commit_or_revert", {})
                outcome["decision"] = (verdict.structured_content or {})["decision"]
            elif outcome["status"] != "ok":
                await client.call_tool("commit_or_revert", {"prefer": "revert"})
            results.append(outcome)
    return results


def new_target(template: str, root: Path, tag: str = "t1") -> Path:
    workspace = root / template
    assert main(["new", template, str(workspace)]) == 0
    assert main(["init", "--workspace", str(workspace), "--tag", tag]) == 0
    return workspace


# ---- the fake model behind the prompt target ----

def support_model(body: dict[str, Any]) -> str:
    """A deterministic stand-in for a model that follows the instructions it is given, and no others."""
    system = body.get("system") or ""
    if isinstance(system, list):
        system = " ".join(block.get("text", "") for block in system)
    rules = " ".join(system.split()).lower()
    user = body["messages"][-1]["content"]
    name = re.search(r"From: (\w+)", user).group(1)  # type: ignore[union-attr]
    order = re.search(r"Order: (\S+)", user).group(1)  # type: ignore[union-attr]
    parts = [f"Hi {name}," if "by name" in rules else "Hello,"]
    parts.append("" if "unfortunately" in rules else "Unfortunately, something went wrong.")
    parts.append(f"I have looked into order {order} and passed it to the right team, who will sort it out.")
    if "under 80 words" not in rules and "brief" not in rules:
        parts.append("We take every message seriously and our team works hard to make sure that each order reaches "
                     "its customer in good condition and on time. Our warehouse, our couriers and our support "
                     "staff will all be told about your message so that it does not happen again, and you will "
                     "get an email with every update as soon as there is news about it.")
    parts.append("Is there anything else I can help you with?" if "end with a question" in rules else
                 "Thank you for your patience.")
    return " ".join(p for p in parts if p)


class FakeModelAPI(FakeAnthropic):
    """The fake Messages API answering tool-less requests (the evaluator's calls) with ``reply(body)``.

    The base fake answers those with a fixed text; the handler records each request in its own thread just before
    it answers, so the body recorded in this thread is the one being answered."""

    def __init__(self, reply: Callable[[dict[str, Any]], str]) -> None:
        self._reply = reply
        self._local = threading.local()
        super().__init__()

    def _record(self, request: RecordedRequest) -> None:
        super()._record(request)
        self._local.body = request.body

    @property  # type: ignore[override]
    def background_text(self) -> str:
        body = getattr(self._local, "body", None)
        return self._reply(body) if isinstance(body, dict) and body.get("messages") else "ok"

    @background_text.setter
    def background_text(self, value: str) -> None:
        pass


# ---- scaffolding ----

@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_scaffolds_a_committed_target_whose_configuration_loads(template: str, tmp_path: Path,
                                                                               isolated_home: Path) -> None:
    created = scaffold(template, tmp_path / template)
    config = load_config(created.directory)
    assert config.mutable and config.locked and config.evaluate.mode == "checkpoint"
    assert (created.directory / "program.md").is_file()
    assert git(created.directory, "status", "--porcelain") == ""
    assert git(created.directory, "log", "--format=%s") == f"{template} target from the autoresearch template"


def test_the_ml_template_is_the_projects_own_prepare_and_train_pair(tmp_path: Path, isolated_home: Path) -> None:
    created = scaffold("ml", tmp_path / "ml", git_init=False)
    for name in ("prepare.py", "train.py", "program.md"):
        assert (created.directory / name).read_bytes() == (PROJECT_ROOT / name).read_bytes()


def test_the_ml_templates_configuration_is_the_projects_own(tmp_path: Path) -> None:
    """The template's autoresearch.toml repeats [tool.autoresearch] of pyproject.toml; a change to one needs the other."""
    import tomllib

    template = tomllib.loads((TEMPLATES_DIR / "ml" / "autoresearch.toml").read_text(encoding="utf-8"))
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["autoresearch"]
    assert template == project


def test_new_refuses_a_directory_that_holds_files_and_an_unknown_template(tmp_path: Path, isolated_home: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me\n", encoding="utf-8")
    assert main(["new", "speed", str(busy)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert (busy / "mine.txt").read_text(encoding="utf-8") == "keep me\n"
    with pytest.raises(TemplateError, match="available templates: speed, prompt, ml"):
        scaffold("chat", tmp_path / "chat")


# ---- real runs ----

@pytest.mark.slow
def test_a_speed_target_keeps_a_real_speed_up_and_rejects_a_wrong_but_fast_change(
        tmp_path: Path, isolated_home: Path) -> None:
    workspace = new_target("speed", tmp_path)
    versions = [("baseline", None), ("count inversions while merge-sorting", MERGE_SORT),
                ("count only adjacent pairs", ADJACENT_ONLY)]
    base, fast, wrong = anyio.run(drive, server_params(workspace, "t1"), workspace / "target.py", versions)

    assert base["status"] == "ok" and base["verified"] and 0.5 < base["metric"] < 2.0
    assert fast["decision"] == "keep" and fast["metric"] > 3.0  # O(n log n) against O(n^2) on 1,600 values
    assert wrong["status"] == "crash" and wrong["decision"] == "discard"
    assert "wrong answer on input [3, 1, 2]: expected 2, got 1" in wrong["failure"] + (wrong["log_tail"] or "")
    assert (workspace / "target.py").read_text(encoding="utf-8") == MERGE_SORT  # the best code is back

    assert main(["promote", "--workspace", str(workspace), "--tag", "t1"]) == 0
    assert git(workspace, "show", "main:target.py") + "\n" == MERGE_SORT
    assert "speedup" in git(workspace, "log", "-1", "--format=%s", "main")


@pytest.mark.slow
def test_the_speed_evaluation_counts_work_handed_to_another_process(tmp_path: Path, isolated_home: Path) -> None:
    workspace = scaffold("speed", tmp_path / "speed", git_init=False).directory
    (workspace / "handed_off.py").write_text(HANDED_OFF, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(workspace / "evaluate.py"), str(workspace / "handed_off.py")],
                          capture_output=True, text=True, timeout=300, check=False)
    speedup = float(re.search(r"^speedup:\s+(\S+)", proc.stdout, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert proc.returncode == 0 and speedup < 1.0  # the same O(n^2) work plus a process start: never a speed-up


def test_the_prompt_evaluation_without_an_api_key_fails_saying_what_to_set(tmp_path: Path, isolated_home: Path) -> None:
    workspace = scaffold("prompt", tmp_path / "prompt", git_init=False).directory
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run([sys.executable, str(workspace / "evaluate.py"), "score", str(workspace / "prompt.md")],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 1
    assert "FAIL: ANTHROPIC_API_KEY is not set; set it (and ANTHROPIC_BASE_URL for a proxy)" in proc.stdout


@pytest.mark.slow
def test_a_prompt_target_with_the_fake_messages_api_keeps_a_prompt_that_passes_more_checks(
        tmp_path: Path, isolated_home: Path) -> None:
    workspace = new_target("prompt", tmp_path)
    versions = [("baseline", None), ("greet by name, under 80 words, end with a question", BETTER_PROMPT),
                ("only ask for brevity", WORSE_PROMPT)]
    with FakeModelAPI(support_model) as api:
        env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "test-key",
               "AUTORESEARCH_PROMPT_MODEL": "fake-support-model"}
        base, better, worse = anyio.run(drive, server_params(workspace, "t1", env), workspace / "prompt.md",
                                        versions)
        calls = [r for r in api.requests if r.path == "/v1/messages"]

    assert (base["metric"], better["metric"], worse["metric"]) == (0.2, 0.8, 0.4)  # of 20 checks: 4, 16, 8
    assert [base["decision"], better["decision"], worse["decision"]] == ["keep", "keep", "discard"]
    assert len(calls) == 12 and {c.body["model"] for c in calls} == {"fake-support-model"}
    assert "Greet the customer by name" in str(calls[4].body["system"])  # the prompt under test is the system prompt
    kept = Ledger(workspace / "runs" / "t1", metric_name="pass_rate").get(2)
    assert kept is not None and kept.metrics["pass_greets_by_name"] == 4 and kept.metrics["pass_no_unfortunately"] == 0
    assert (workspace / "prompt.md").read_text(encoding="utf-8") == BETTER_PROMPT
