"""The locked evaluation of the prompt target: a yes/no checklist over fixed test cases, answered by code.

    python evaluate.py check PROMPT.md    # the experiment command: the prompt file is usable (size, encoding)
    python evaluate.py score PROMPT.md    # one model call per case, every check on every reply, a summary block

The prompt is the system prompt; each case's `input` is the user message. The model is called through the
`anthropic` SDK: `ANTHROPIC_BASE_URL` (a proxy, a gateway, or a fake API in tests), `ANTHROPIC_API_KEY`, and the model
from `AUTORESEARCH_PROMPT_MODEL`, else `ANTHROPIC_MODEL`, else DEFAULT_MODEL. The checks are plain code
(contains, not_contains, max_words, min_words, starts_with, ends_with, regex), so the same replies always score the
same; what varies between runs is only the model. `pass_rate` = checks passed / checks run, higher is better.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

# ---- Settings (locked with this file) ----
DEFAULT_MODEL = "claude-haiku-4-5"
MAX_PROMPT_CHARS = 6000  # a prompt that pastes in every expected answer is not a better prompt
MAX_TOKENS = 400
CASES_FILE = Path(__file__).resolve().with_name("cases.json")


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def read_prompt(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the prompt {path}: {exc}")
    if not text.strip():
        fail(f"the prompt {path.name} is empty")
    if len(text) > MAX_PROMPT_CHARS:
        fail(f"the prompt {path.name} has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    return text


def passes(check: dict, reply: str, case: dict) -> bool:
    kind = check["type"]
    value = check["value"]
    if isinstance(value, str):
        value = value.format(**{k: v for k, v in case.items() if isinstance(v, str)})
    text = reply.strip()
    if kind == "contains":
        return value.lower() in text.lower()
    if kind == "not_contains":
        return value.lower() not in text.lower()
    if kind == "max_words":
        return len(text.split()) < int(value)
    if kind == "min_words":
        return len(text.split()) >= int(value)
    if kind == "starts_with":
        return text.lower().startswith(value.lower())
    if kind == "ends_with":
        return text.endswith(value)
    if kind == "regex":
        return re.search(value, text) is not None
    raise ValueError(f"unknown check type {kind!r} in {CASES_FILE.name}")


def ask(client, model: str, system: str, user: str) -> str:
    response = client.messages.create(model=model, max_tokens=MAX_TOKENS, system=system,
                                      messages=[{"role": "user", "content": user}])
    return "".join(getattr(block, "text", "") for block in response.content)


def score(path: Path) -> None:
    import anthropic

    started = time.perf_counter()
    system = read_prompt(path)
    spec = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    model = os.environ.get("AUTORESEARCH_PROMPT_MODEL") or os.environ.get("ANTHROPIC_MODEL") or DEFAULT_MODEL
    if not os.environ.get("ANTHROPIC_API_KEY"):
        fail("ANTHROPIC_API_KEY is not set; set it (and ANTHROPIC_BASE_URL for a proxy) where the server runs")
    client = anthropic.Anthropic(base_url=os.environ.get("ANTHROPIC_BASE_URL") or None, max_retries=4, timeout=120)
    per_check = {check["id"]: 0 for check in spec["checks"]}
    for case in spec["cases"]:
        try:
            reply = ask(client, model, system, case["input"])
        except anthropic.APIError as exc:
            fail(f"the model call for case {case['id']} failed: {exc}")
        failed = []
        for check in spec["checks"]:
            if passes(check, reply, case):
                per_check[check["id"]] += 1
            else:
                failed.append(check["id"])
        print(f"case {case['id']}: {len(spec['checks']) - len(failed)}/{len(spec['checks'])}"
              + (f" failed: {', '.join(failed)}" if failed else ""))
        print("  reply: " + " ".join(reply.split())[:300])
    total = len(spec["cases"]) * len(spec["checks"])
    passed = sum(per_check.values())
    print("---")
    print(f"pass_rate:          {passed / total:.4f}")
    print(f"checks_passed:      {passed}")
    print(f"checks_total:       {total}")
    for check_id, count in per_check.items():
        print(f"pass_{check_id}: {count}")
    print(f"model:              {model}")
    print(f"eval_seconds:       {time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        prompt = read_prompt(Path(sys.argv[2]))
        print(f"prompt ok: {len(prompt)} characters")
    elif len(sys.argv) == 3 and sys.argv[1] == "score":
        score(Path(sys.argv[2]))
    else:
        print("usage: evaluate.py check|score PROMPT.md", file=sys.stderr)
        sys.exit(2)
