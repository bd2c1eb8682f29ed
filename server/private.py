"""What only the person may read: the private folder of a run and the holdout scores kept in it.

The evaluation scores every model on a hidden holdout split as well as on validation. The holdout number is the
person's check that the loop is not fitting the validation split: the agent must never see it, so it never enters
the ledger, a tool result, a log in the workspace or anything a sandbox binds. It goes to `holdout.jsonl` in a
folder outside the workspace:

    $AUTORESEARCH_PRIVATE_DIR, else $XDG_STATE_HOME/autoresearch, else ~/.local/state/autoresearch
        <16 hex digits of a hash of the run folder>/holdout.jsonl     one line per experiment that has a holdout score
        <16 hex digits ...>/<experiment>-eval.log                     the evaluation's raw output

The person's views (`autoresearch results --holdout`, `review`, the report and the dashboard) read it through
`read_holdout`; the agent's tools are refused every path under `private_base()` (the harness's hook and its shell
sandbox), and no experiment sandbox binds it.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from server.jsonl import read_records

PRIVATE_DIR_ENV = "AUTORESEARCH_PRIVATE_DIR"
HOLDOUT_FILE = "holdout.jsonl"
HOLDOUT_PREFIX = "holdout"  # summary keys that only the person sees (never the agent, never the sandbox)


def private_base(environ: dict[str, str] | None = None) -> Path:
    """The folder that holds every run's private folder (not created here)."""
    env = os.environ if environ is None else environ
    configured = env.get(PRIVATE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    state = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(state) / "autoresearch"


def private_folder(run_dir: Path, *, create: bool = True) -> Path:
    """The private folder of the run in `run_dir`; created with mode 0700 unless `create` is False."""
    folder = private_base() / hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    if create:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    return folder


def holdout_key(record: dict[str, object], metric: str) -> str | None:
    """The holdout score's key in a record: `holdout_<x>` for a metric `val_<x>` (val_bpb: holdout_bpb), else the
    only numeric holdout key, else the first of them in name order."""
    keys = sorted(k for k, v in record.items() if k.startswith(HOLDOUT_PREFIX) and _finite(v))
    preferred = HOLDOUT_PREFIX + "_" + metric.removeprefix("val_")
    if preferred in keys:
        return preferred
    return keys[0] if keys else None


def read_holdout(run_dir: Path, metric: str) -> dict[int, float]:
    """{experiment id: holdout score} of a run; empty when it has none. Read like every JSONL file of a run: a torn
    last line (a crash mid-write) is skipped, a damaged earlier one raises CorruptFileError naming it."""
    scores: dict[int, float] = {}
    for record in read_records(private_folder(run_dir, create=False) / HOLDOUT_FILE):
        exp_id, key = record.get("experiment_id"), holdout_key(record, metric)
        if isinstance(exp_id, int) and key is not None:
            scores[exp_id] = float(record[key])  # type: ignore[arg-type]
    return scores


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
