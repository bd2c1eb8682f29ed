"""The experiment configuration: one TOML document loaded into a frozen dataclass.

The configuration is the contract between the user and the engine: which files the agent may edit, which it may not,
how to run and judge an experiment. It is read once, validated strictly (an unknown key is more likely a typo that
would silently disable a safeguard than a harmless extra) and then frozen so nothing downstream can loosen it.

Sources, first found wins: an explicit ``--config PATH``; ``<workspace>/autoresearch.toml`` (top-level keys);
``<workspace>/pyproject.toml`` table ``[tool.autoresearch]``. A file named ``pyproject.toml`` passed explicitly is
read through its ``[tool.autoresearch]`` table too.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

PROFILE_ENV = "AUTORESEARCH_PROFILE"
PLACEHOLDERS = ("python", "workspace", "pinned", "checkpoint", "snapshot", "experiment_dir", "run_dir")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

_TOP_KEYS = (
    "mutable", "locked", "command", "metric", "direction", "min_improvement", "time_budget_s", "hard_timeout_s",
    "evaluate", "runs_dir", "branch_prefix", "log_max_bytes", "tail_lines", "memory_metric", "fingerprint_metric",
    "env", "profile", "profiles", "sandbox", "noise_runs", "confirm_runs", "noise_k", "slots",
)
_PROFILE_KEYS = tuple(k for k in _TOP_KEYS if k not in ("profile", "profiles"))
_EVALUATE_KEYS = ("mode", "command", "timeout_s")
_SANDBOX_KEYS = ("mode", "allow_unsealed", "startup_s", "clock", "memory_mb", "cpu_threads", "train_read", "eval_read",
                 "pass_env", "max_artifact_mb", "eval_network", "eval_env")
_SLOTS_KEYS = ("count", "gpus", "executor", "ray_address", "gpus_per_experiment", "cpus_per_experiment", "max_queued")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_REQUIRED = ("mutable", "command", "metric", "direction", "time_budget_s", "hard_timeout_s")
# Who may move a run's result beyond its branch; top level only (a machine profile must not change who approves).
_AUTONOMY_KEYS = ("autonomy", "auto_promote")
AUTONOMY_LEVELS = ("observe", "propose", "auto-promote")
_AUTO_PROMOTE_KEYS = ("max_lines", "min_gain", "min_noise_floors")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, the key, the value and what is allowed."""


@dataclass(frozen=True)
class EvaluateConfig:
    """How the metric is obtained: re-evaluated from a checkpoint by a locked command, or read from stdout."""

    mode: Literal["checkpoint", "stdout"]
    command: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class SandboxConfig:
    """How an experiment is sealed (see server/sandbox.py for what the sandbox covers).

    `train_read` / `eval_read` are the only host files the training and the evaluation sandboxes may read (besides
    the system and the Python environment), already expanded (`${VAR:-default}` and `~`). `pass_env` names
    variables copied from the server's environment when the run is created (their values are frozen with the run).
    `clock = "cpu"` measures the budget in CPU seconds of the sandbox divided by `cpu_threads` (or the CPU count),
    so a busy machine does not change how much compute an experiment gets; `"wall"` measures wall-clock seconds.
    """

    mode: Literal["bwrap", "off"] = "bwrap"
    allow_unsealed: bool = False
    startup_s: float = 30.0
    clock: Literal["wall", "cpu"] = "wall"
    memory_mb: int = 0
    cpu_threads: int = 0
    train_read: tuple[str, ...] = ()
    eval_read: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    max_artifact_mb: int = 8192
    eval_network: bool = False  # the evaluation may reach the network (a target scored through a model API)
    eval_env: tuple[str, ...] = ()  # variables read from the server's environment at each evaluation, never stored


@dataclass(frozen=True)
class SlotsConfig:
    """How many experiments run at once, and where (see server/slots.py).

    `gpus`: "none" (the default: `count` slots that share the machine as today's single slot does), "all" (one slot
    per visible GPU) or a list of GPU indexes (one slot each). `count` is the number of CPU slots when `gpus` is
    "none", and the number of Ray tasks kept in flight with `executor = "ray"`. `max_queued` bounds how many
    experiments may be queued, running or undecided at once (0: twice the slots); with one slot it is always 1,
    which is the single loop's rule (decide before you run the next).
    """

    count: int = 1
    gpus: str | tuple[int, ...] = "none"
    executor: Literal["local", "ray"] = "local"
    ray_address: str = "auto"
    gpus_per_experiment: float = 1.0
    cpus_per_experiment: float = 1.0
    max_queued: int = 0


@dataclass(frozen=True)
class AutoPromoteLimits:
    """The written limits of ``autonomy = "auto-promote"``: a kept change outside any of them waits for a person."""

    max_lines: int = 20  # lines added plus removed by the one change
    min_gain: float = 0.0  # it must beat the best before it by at least this much (absolute)
    min_noise_floors: float = 2.0  # ... and by this many noise floors; needs a noise floor in the ledger unless 0


@dataclass(frozen=True)
class Config:
    """The validated, frozen experiment configuration. Paths in ``mutable``/``locked`` are posix, workspace-relative."""

    workspace: Path
    source: Path
    mutable: tuple[str, ...]
    locked: tuple[str, ...]
    command: tuple[str, ...]
    metric: str
    direction: Literal["minimize", "maximize"]
    min_improvement: float
    time_budget_s: float
    hard_timeout_s: float
    evaluate: EvaluateConfig
    runs_dir: Path
    branch_prefix: str = "autoresearch/"
    log_max_bytes: int = 20_000_000
    tail_lines: int = 30
    memory_metric: str | None = "peak_vram_mb"
    fingerprint_metric: str | None = "corpus_fingerprint"
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    profile: str = ""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    slots: SlotsConfig = field(default_factory=SlotsConfig)
    table: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # merged TOML, frozen at init
    autonomy: Literal["observe", "propose", "auto-promote"] = "propose"
    auto_promote: AutoPromoteLimits = field(default_factory=AutoPromoteLimits)
    # Honest acceptance (README "Honest acceptance"). The defaults here are the rule without repeats (one baseline
    # run, no confirmation); pyproject.toml's profiles set the real ones for the shipped target: on a CPU
    # noise_runs = 3, confirm_runs = 2 (a 60 s run is cheap and CPU scores move with the seed, so three baseline
    # runs give a usable spread and a kept change rests on three runs); on a GPU noise_runs = 2, confirm_runs = 1
    # (a 5-minute run is dear; two runs are the fewest that measure a spread, and a win is seen twice); noise_k = 2
    # on both, because a spread measured on two or three runs is often too small (benchmarks/bench_acceptance.py).
    noise_runs: int = 1  # runs of the unmodified baseline at the start of a run; their spread is the noise floor
    confirm_runs: int = 0  # extra runs, with fresh seeds, of a candidate that beats the best before it is kept
    noise_k: float = 1.0  # a change must beat the best's mean by more than max(min_improvement, noise_k x floor)

    def margin(self, noise_floor: float | None) -> float:
        """How much a candidate must beat the best by: max(min_improvement, noise_k x noise floor)."""
        return max(self.min_improvement, self.noise_k * (noise_floor or 0.0))

    def beats(self, candidate: float, best: float, margin: float) -> bool:
        """True when ``candidate`` beats ``best`` by strictly more than ``margin``; a tie never wins."""
        if self.direction == "minimize":
            return candidate < best - margin
        return candidate > best + margin

    def improves(self, candidate: float, best: float) -> bool:
        """True when ``candidate`` beats ``best`` by strictly more than ``min_improvement``; a tie never wins."""
        if self.direction == "minimize":
            return candidate < best - self.min_improvement
        return candidate > best + self.min_improvement

    def delta(self, candidate: float, best: float) -> float:
        """Signed change ``candidate - best`` (negative is better when minimising)."""
        return candidate - best

    def is_mutable(self, rel_path: str | os.PathLike[str]) -> bool:
        """Whether the agent may edit this path (relative to the workspace, or absolute inside it)."""
        return self._rel(rel_path) in self.mutable

    def is_locked(self, rel_path: str | os.PathLike[str]) -> bool:
        """Whether this path is pinned and must never change during a run."""
        return self._rel(rel_path) in self.locked

    def _rel(self, path: str | os.PathLike[str]) -> str:
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(self.workspace)
            except ValueError:
                return ""
        return PurePosixPath(*p.parts).as_posix() if p.parts else ""

    def expand(self, argv: Sequence[str], **placeholders: str | os.PathLike[str]) -> list[str]:
        """Replace ``{python}``, ``{workspace}`` and the given ``{name}`` placeholders in each argument.

        An unknown name is an error rather than left as is: a literal ``{pinned}`` reaching a command would run the
        wrong file without any sign of it.
        """
        values = {"python": os.path.abspath(sys.executable), "workspace": str(self.workspace)}
        values.update({k: os.fspath(v) for k, v in placeholders.items()})

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise ConfigError(
                    f"unknown placeholder {{{name}}} in {list(argv)!r}; allowed here: "
                    + ", ".join(f"{{{n}}}" for n in sorted(values))
                    + f". Fix the command in {self.source}."
                )
            return values[name]

        return [_PLACEHOLDER_RE.sub(substitute, arg) for arg in argv]


# ---- Platform detection (for profile = "auto") ----


def detect_platform() -> str:
    """Return "cuda" when an NVIDIA GPU is visible, "mps" on Apple silicon, else "cpu"."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return "cuda"
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            proc = subprocess.run([smi, "-L"], capture_output=True, timeout=5, check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return "cuda"
        except (OSError, subprocess.TimeoutExpired):
            pass
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


# ---- Loading ----


def load_config(
    workspace: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    *,
    detector: Callable[[], str] = detect_platform,
    environ: Mapping[str, str] | None = None,
    require_files: bool = True,
) -> Config:
    """Find, read, merge the selected profile into, and validate the configuration of ``workspace``.

    Profile precedence: the ``profile`` argument, then ``$AUTORESEARCH_PROFILE``, then the document's ``profile`` key.
    "auto" asks ``detector`` and applies that profile only if it is defined; any other name must be defined.
    ``require_files=False`` accepts mutable and locked files that are missing right now (the hooks read the
    configuration while a locked file may be briefly gone, between a deletion and the guard's restore).
    """
    ws = Path(workspace).resolve()
    if not ws.is_dir():
        raise ConfigError(f"workspace {ws} is not a directory; pass the directory that holds your experiment")
    source, table, prefix = _read_source(ws, path)
    v = _Validator(source, prefix, require_files=require_files)
    v.check_keys(table, _TOP_KEYS + _AUTONOMY_KEYS, "")

    profiles = table.get("profiles", {})
    v.require_table(profiles, "profiles")
    for name, body in profiles.items():
        v.require_table(body, f"profiles.{name}")
        v.check_keys(body, _PROFILE_KEYS, f"profiles.{name}.")
        if "evaluate" in body:
            v.require_table(body["evaluate"], f"profiles.{name}.evaluate")
            v.check_keys(body["evaluate"], _EVALUATE_KEYS, f"profiles.{name}.evaluate.")
        if "sandbox" in body:
            v.require_table(body["sandbox"], f"profiles.{name}.sandbox")
            v.check_keys(body["sandbox"], _SANDBOX_KEYS, f"profiles.{name}.sandbox.")
        if "slots" in body:
            v.require_table(body["slots"], f"profiles.{name}.slots")
            v.check_keys(body["slots"], _SLOTS_KEYS, f"profiles.{name}.slots.")

    env_map = os.environ if environ is None else environ
    requested, origin = profile, "the profile argument"
    if requested is None and env_map.get(PROFILE_ENV):
        requested, origin = env_map[PROFILE_ENV], f"${PROFILE_ENV}"
    if requested is None and "profile" in table:
        requested, origin = v.string(table["profile"], "profile", allow_empty=True), v.key("profile")
    applied = _pick_profile(requested or "", origin, profiles, source, detector)

    merged, origins = _merge(table, profiles.get(applied, {}) if applied else {}, applied)
    v.origins = origins
    return _build(ws, source, merged, applied, v)


def _read_source(ws: Path, path: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Any], str]:
    if path is not None:
        source = Path(path)
        source = (source if source.is_absolute() else Path.cwd() / source).resolve()
        if not source.is_file():
            raise ConfigError(f"config file {source} does not exist; check the --config path")
        doc = _parse(source)
        if source.name == "pyproject.toml":
            return source, _tool_table(doc, source), "tool.autoresearch."
        return source, doc, ""
    own = ws / "autoresearch.toml"
    if own.is_file():
        return own, _parse(own), ""
    pyproject = ws / "pyproject.toml"
    if pyproject.is_file():
        doc = _parse(pyproject)
        if isinstance(doc.get("tool"), dict) and "autoresearch" in doc["tool"]:
            return pyproject, _tool_table(doc, pyproject), "tool.autoresearch."
    raise ConfigError(
        f"no configuration found in {ws}: neither autoresearch.toml nor a [tool.autoresearch] table in "
        "pyproject.toml; create one (see the README for the keys)"
    )


def _parse(source: Path) -> dict[str, Any]:
    try:
        with source.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}; fix the syntax and try again") from exc


def _tool_table(doc: dict[str, Any], source: Path) -> dict[str, Any]:
    table = doc.get("tool", {}).get("autoresearch") if isinstance(doc.get("tool"), dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{source} has no [tool.autoresearch] table; add one (see the README for the keys)")
    return table


def _pick_profile(
    requested: str, origin: str, profiles: Mapping[str, Any], source: Path, detector: Callable[[], str]
) -> str:
    if requested == "auto":
        detected = detector()
        if detected in profiles:
            logger.info("profile auto -> %s", detected)
            return detected
        logger.info("profile auto detected %s, which %s does not define; no override applied", detected, source)
        return ""
    if requested and requested not in profiles:
        defined = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"{source}: profile {requested!r} (from {origin}) is not defined; defined profiles: {defined}, "
            "or 'auto'. Pick one of those or add a [profiles.<name>] table."
        )
    return requested


def _merge(
    table: Mapping[str, Any], overrides: Mapping[str, Any], profile: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply a profile over the top-level keys; ``evaluate`` and ``env`` merge key by key, the rest replace."""
    merged = {k: v for k, v in table.items() if k not in ("profile", "profiles")}
    origins: dict[str, str] = {}
    for key, value in overrides.items():
        where = f"profiles.{profile}.{key}"
        if key in ("evaluate", "env", "sandbox", "slots") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
            origins.update({f"{key}.{sub}": f"{where}.{sub}" for sub in value})
        else:
            merged[key] = value
            origins[key] = where
    return merged, origins


# ---- Validation ----


class _Validator:
    """Type and range checks whose errors name the file, the dotted key, the value and what is allowed."""

    def __init__(self, source: Path, prefix: str, *, require_files: bool = True) -> None:
        self.source = source
        self.prefix = prefix
        self.require_files = require_files
        self.origins: dict[str, str] = {}

    def key(self, name: str) -> str:
        return self.prefix + self.origins.get(name, name)

    def fail(self, name: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key(name)} = {value!r} is not allowed; expected {allowed}")

    def check_keys(self, table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"{self.source}: unknown key {self.prefix}{where}{name}; {hint}allowed keys: {', '.join(allowed)}"
                )

    def require_table(self, value: Any, name: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: {self.prefix}{name} = {value!r} is not allowed; expected a table")

    def string(self, value: Any, name: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise self.fail(name, value, "a non-empty string" if not allow_empty else "a string")
        return value

    def number(self, value: Any, name: str, *, minimum: float, exclusive: bool) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < minimum or (exclusive and value == minimum):
            raise self.fail(name, value, f"a number {'>' if exclusive else '>='} {minimum:g}")
        return float(value)

    def integer(self, value: Any, name: str, lo: int, hi: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
            raise self.fail(name, value, f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}")
        return value

    def choice(self, value: Any, name: str, allowed: Sequence[str]) -> str:
        if value not in allowed:
            raise self.fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))
        return str(value)

    def strings(self, value: Any, name: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(name, value, "a non-empty list of strings")
        for item in value:
            if not isinstance(item, str) or not item:
                raise self.fail(name, value, "a non-empty list of non-empty strings")
        return tuple(value)

    def argv(self, value: Any, name: str) -> tuple[str, ...]:
        argv = self.strings(value, name)
        for arg in argv:
            for placeholder in _PLACEHOLDER_RE.findall(arg):
                if placeholder not in PLACEHOLDERS:
                    raise self.fail(name, value, "placeholders among " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
        return argv

    def paths(self, value: Any, name: str, workspace: Path) -> tuple[str, ...]:
        out: list[str] = []
        for raw in self.strings(value, name):
            posix = PurePosixPath(raw.replace("\\", "/"))
            if posix.is_absolute() or re.match(r"^[A-Za-z]:", raw) or ".." in posix.parts:
                raise self.fail(name, raw, "a path relative to the workspace, without '..'")
            rel = posix.as_posix()
            if rel in (".", ""):
                raise self.fail(name, raw, "a file path relative to the workspace")
            if self.require_files and not (workspace / rel).is_file():
                raise self.fail(name, raw, f"a file that exists in the workspace {workspace} (create or fix it)")
            if rel not in out:
                out.append(rel)
        return tuple(out)

    def optional_name(self, value: Any, name: str) -> str | None:
        text = self.string(value, name, allow_empty=True)
        if text and not _METRIC_RE.match(text):
            raise self.fail(name, value, "a summary key (letters, digits, _ . -) or \"\" for none")
        return text or None


def _build(ws: Path, source: Path, d: dict[str, Any], profile: str, v: _Validator) -> Config:
    for name in _REQUIRED:
        if name not in d:
            raise ConfigError(f"{source}: required key {v.prefix}{name} is missing; add it")
    mutable = v.paths(d["mutable"], "mutable", ws)
    locked: tuple[str, ...] = v.paths(d["locked"], "locked", ws) if "locked" in d else ()
    both = sorted(set(mutable) & set(locked))
    if both:
        raise v.fail("locked", both, "files that are not also listed in mutable (a file is either editable or pinned)")
    command = v.argv(d["command"], "command")
    metric = v.string(d["metric"], "metric")
    if not _METRIC_RE.match(metric):
        raise v.fail("metric", metric, "a summary key (letters, digits, _ . -)")
    direction = v.choice(d["direction"], "direction", ("minimize", "maximize"))
    min_improvement = v.number(d.get("min_improvement", 0.0), "min_improvement", minimum=0.0, exclusive=False)
    budget = v.number(d["time_budget_s"], "time_budget_s", minimum=0.0, exclusive=True)
    hard = v.number(d["hard_timeout_s"], "hard_timeout_s", minimum=0.0, exclusive=True)
    if hard <= budget:
        raise v.fail("hard_timeout_s", d["hard_timeout_s"], f"a number > time_budget_s ({budget:g})")

    evaluate = _evaluate(d.get("evaluate", {"mode": "stdout"}), v)
    runs_raw = v.string(d.get("runs_dir", "runs"), "runs_dir")
    runs_dir = Path(runs_raw) if Path(runs_raw).is_absolute() else ws / runs_raw
    prefix = v.string(d.get("branch_prefix", "autoresearch/"), "branch_prefix")
    if re.search(r"[\s~^:?*\[\\]|\.\.|@\{", prefix) or prefix.startswith(("/", "-")):
        raise v.fail("branch_prefix", prefix, "a valid git branch name prefix such as 'autoresearch/'")
    env = d.get("env", {})
    v.require_table(env, "env")
    for name, value in env.items():
        if not _ENV_NAME_RE.match(name):
            raise v.fail(f"env.{name}", value, "an environment variable name (letters, digits, _)")
        if not isinstance(value, str):
            raise v.fail(f"env.{name}", value, "a string (quote numbers)")
    return Config(
        workspace=ws,
        source=source,
        mutable=mutable,
        locked=locked,
        command=command,
        metric=metric,
        direction=direction,  # type: ignore[arg-type]
        min_improvement=min_improvement,
        time_budget_s=budget,
        hard_timeout_s=hard,
        evaluate=evaluate,
        runs_dir=runs_dir.resolve(),
        branch_prefix=prefix,
        log_max_bytes=v.integer(d.get("log_max_bytes", 20_000_000), "log_max_bytes", 10_000),
        tail_lines=v.integer(d.get("tail_lines", 30), "tail_lines", 1, 200),
        memory_metric=v.optional_name(d.get("memory_metric", "peak_vram_mb"), "memory_metric"),
        fingerprint_metric=v.optional_name(d.get("fingerprint_metric", "corpus_fingerprint"), "fingerprint_metric"),
        env=MappingProxyType(dict(env)),
        profile=profile,
        sandbox=_sandbox(d.get("sandbox", {}), v, d.get("hard_timeout_s")),
        slots=_slots(d.get("slots", {}), v),
        table=MappingProxyType(json.loads(json.dumps(d))),
        autonomy=v.choice(d.get("autonomy", "propose"), "autonomy", AUTONOMY_LEVELS),  # type: ignore[arg-type]
        auto_promote=_auto_promote(d.get("auto_promote", {}), v),
        noise_runs=v.integer(d.get("noise_runs", 1), "noise_runs", 1, 50),
        confirm_runs=v.integer(d.get("confirm_runs", 0), "confirm_runs", 0, 50),
        noise_k=v.number(d.get("noise_k", 1.0), "noise_k", minimum=0.0, exclusive=False),
    )


def config_from_table(workspace: Path, table: Mapping[str, Any], profile: str, source: Path) -> Config:
    """Rebuild a run's configuration from the table frozen into its run.json (see runstate.frozen_config)."""
    return _build(workspace, source, dict(table), profile, _Validator(source, "config."))


def expand_env_refs(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`${NAME}` and `${NAME:-default}` from the environment, then a leading `~`."""
    env = os.environ if environ is None else environ
    out = _ENV_REF_RE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)
    return os.path.expanduser(out)


def _sandbox(table: Any, v: _Validator, hard_timeout: Any) -> SandboxConfig:
    v.require_table(table, "sandbox")
    v.check_keys(table, _SANDBOX_KEYS, "sandbox.")
    mode = v.choice(table.get("mode", "bwrap"), "sandbox.mode", ("bwrap", "off"))
    allow = table.get("allow_unsealed", False)
    if not isinstance(allow, bool):
        raise v.fail("sandbox.allow_unsealed", allow, "true or false")
    if mode == "off" and not allow:
        raise v.fail("sandbox.mode", mode, "'bwrap', or 'off' together with sandbox.allow_unsealed = true (results "
                                           "are then marked unsealed: train.py could forge them)")
    startup = v.number(table.get("startup_s", 30.0), "sandbox.startup_s", minimum=0.0, exclusive=False)
    clock = v.choice(table.get("clock", "wall"), "sandbox.clock", ("wall", "cpu"))
    reads = {}
    for key in ("train_read", "eval_read"):
        raw = table.get(key, [])
        if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
            raise v.fail(f"sandbox.{key}", raw, "a list of file or folder paths (${VAR:-default} and ~ allowed)")
        paths = []
        for item in raw:
            path = expand_env_refs(item)
            if not os.path.isabs(path):
                raise v.fail(f"sandbox.{key}", item, f"an absolute path after expansion (got {path!r})")
            paths.append(os.path.normpath(path))
        reads[key] = tuple(paths)
    names: dict[str, tuple[str, ...]] = {}
    for key in ("pass_env", "eval_env"):
        raw = table.get(key, [])
        if not isinstance(raw, list) or not all(isinstance(x, str) and _ENV_NAME_RE.match(x) for x in raw):
            raise v.fail(f"sandbox.{key}", raw, "a list of environment variable names")
        names[key] = tuple(raw)
    network = table.get("eval_network", False)
    if not isinstance(network, bool):
        raise v.fail("sandbox.eval_network", network, "true or false")
    return SandboxConfig(
        mode=mode,  # type: ignore[arg-type]
        allow_unsealed=allow,
        startup_s=startup,
        clock=clock,  # type: ignore[arg-type]
        memory_mb=v.integer(table.get("memory_mb", 0), "sandbox.memory_mb", 0),
        cpu_threads=v.integer(table.get("cpu_threads", 0), "sandbox.cpu_threads", 0, os.cpu_count() or 1),
        train_read=reads["train_read"],
        eval_read=reads["eval_read"],
        pass_env=names["pass_env"],
        eval_env=names["eval_env"],
        eval_network=network,
        max_artifact_mb=v.integer(table.get("max_artifact_mb", 8192), "sandbox.max_artifact_mb", 1),
    )


def _slots(table: Any, v: _Validator) -> SlotsConfig:
    v.require_table(table, "slots")
    v.check_keys(table, _SLOTS_KEYS, "slots.")
    gpus: str | tuple[int, ...] = "none"
    raw = table.get("gpus", "none")
    if raw in ("none", "all"):
        gpus = raw
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                for x in raw) and len(set(raw)) == len(raw):
        gpus = tuple(raw)
    else:
        raise v.fail("slots.gpus", raw, '"none", "all", or a list of distinct GPU indexes such as [0, 1]')
    address = table.get("ray_address", "auto")
    if not isinstance(address, str) or not address.strip():
        raise v.fail("slots.ray_address", address, '"auto" or a cluster address such as "ray://head:10001"')
    return SlotsConfig(
        count=v.integer(table.get("count", 1), "slots.count", 1, 1024),
        gpus=gpus,
        executor=v.choice(table.get("executor", "local"), "slots.executor", ("local", "ray")),  # type: ignore[arg-type]
        ray_address=expand_env_refs(address.strip()),
        gpus_per_experiment=v.number(table.get("gpus_per_experiment", 1.0), "slots.gpus_per_experiment",
                                     minimum=0.0, exclusive=False),
        cpus_per_experiment=v.number(table.get("cpus_per_experiment", 1.0), "slots.cpus_per_experiment",
                                     minimum=0.0, exclusive=False),
        max_queued=v.integer(table.get("max_queued", 0), "slots.max_queued", 0, 10_000),
    )


def _auto_promote(table: Any, v: _Validator) -> AutoPromoteLimits:
    v.require_table(table, "auto_promote")
    v.check_keys(table, _AUTO_PROMOTE_KEYS, "auto_promote.")
    defaults = AutoPromoteLimits()
    return AutoPromoteLimits(
        max_lines=v.integer(table.get("max_lines", defaults.max_lines), "auto_promote.max_lines", 1),
        min_gain=v.number(table.get("min_gain", defaults.min_gain), "auto_promote.min_gain", minimum=0.0,
                          exclusive=False),
        min_noise_floors=v.number(table.get("min_noise_floors", defaults.min_noise_floors),
                                  "auto_promote.min_noise_floors", minimum=0.0, exclusive=False),
    )


def _evaluate(table: Any, v: _Validator) -> EvaluateConfig:
    v.require_table(table, "evaluate")
    v.check_keys(table, _EVALUATE_KEYS, "evaluate.")
    mode = v.choice(table.get("mode", "checkpoint"), "evaluate.mode", ("checkpoint", "stdout"))
    timeout = v.number(table.get("timeout_s", 600), "evaluate.timeout_s", minimum=0.0, exclusive=True)
    command: tuple[str, ...] = ()
    if mode == "checkpoint":
        if "command" not in table:
            raise ConfigError(
                f"{v.source}: {v.key('evaluate.mode')} = 'checkpoint' needs {v.prefix}evaluate.command; add the "
                "evaluation command or set evaluate.mode = 'stdout'"
            )
        command = v.argv(table["command"], "evaluate.command")
    elif "command" in table:
        logger.debug("evaluate.mode is 'stdout'; evaluate.command is ignored")
    return EvaluateConfig(mode=mode, command=command, timeout_s=timeout)  # type: ignore[arg-type]
