"""Loading, validating and using the experiment configuration."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from server.config import Config, ConfigError, detect_platform, load_config

REPO = Path(__file__).resolve().parents[2]

BASE = """
mutable = ["train.py"]
locked = ["prepare.py"]
command = ["{python}", "train.py"]
metric = "val_bpb"
direction = "minimize"
time_budget_s = 300
hard_timeout_s = 600
"""


def cpu() -> str:
    return "cpu"


def workspace(tmp_path: Path, toml: str = BASE, *, name: str = "autoresearch.toml") -> Path:
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    (tmp_path / "prepare.py").write_text("DATA = 1\n")
    (tmp_path / name).write_text(toml)
    return tmp_path


def load(ws: Path, **kwargs: object) -> Config:
    kwargs.setdefault("detector", cpu)
    kwargs.setdefault("environ", {})
    return load_config(ws, **kwargs)  # type: ignore[arg-type]


def test_the_repositorys_own_pyproject_loads_with_the_cpu_profile_applied(tmp_path: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "train.py").write_text("")
    (tmp_path / "prepare.py").write_text("")
    config = load(tmp_path)
    assert config.source == tmp_path / "pyproject.toml"
    assert config.mutable == ("train.py",) and config.locked == ("prepare.py",)
    assert config.metric == "val_bpb" and config.direction == "minimize"
    assert config.profile == "cpu" and config.time_budget_s == 60 and config.hard_timeout_s == 900
    assert config.evaluate.mode == "checkpoint" and "{pinned}/prepare.py" in config.evaluate.command
    assert config.runs_dir == tmp_path / "runs"
    assert (config.branch_prefix, config.log_max_bytes, config.tail_lines) == ("autoresearch/", 20_000_000, 30)
    assert (config.memory_metric, config.fingerprint_metric) == ("peak_vram_mb", "corpus_fingerprint")


def test_autoresearch_toml_wins_over_pyproject(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE.replace("val_bpb", "accuracy").replace("minimize", "maximize"))
    (ws / "pyproject.toml").write_text("[tool.autoresearch]\n" + BASE)
    config = load(ws)
    assert config.source == ws / "autoresearch.toml" and config.metric == "accuracy"


def test_an_explicit_config_path_wins_over_both(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    other = tmp_path / "elsewhere.toml"
    other.write_text(BASE.replace("300", "5").replace("600", "7"))
    assert load(ws, path=other).time_budget_s == 5


def test_a_workspace_without_configuration_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither autoresearch.toml nor a \\[tool.autoresearch\\] table"):
        load(tmp_path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "metric = ")
    with pytest.raises(ConfigError, match="autoresearch.toml is not valid TOML"):
        load(ws)


@pytest.mark.parametrize(
    ("line", "key", "shown", "allowed"),
    [
        ('direction = "lower"', "tool.autoresearch.direction", "'lower'", "'minimize', 'maximize'"),
        ("min_improvement = -0.1", "tool.autoresearch.min_improvement", "-0.1", ">= 0"),
        ("time_budget_s = 0", "tool.autoresearch.time_budget_s", "0", "> 0"),
        ('time_budget_s = "300"', "tool.autoresearch.time_budget_s", "'300'", "a number"),
        ("hard_timeout_s = 300", "tool.autoresearch.hard_timeout_s", "300", "> time_budget_s (300)"),
        ("tail_lines = 500", "tool.autoresearch.tail_lines", "500", "1..200"),
        ("log_max_bytes = 10", "tool.autoresearch.log_max_bytes", "10", ">= 10000"),
        ("command = []", "tool.autoresearch.command", "[]", "non-empty list"),
        ('command = ["{python}", "{nope}"]', "tool.autoresearch.command", "{nope}", "{checkpoint}"),
        ('mutable = ["/etc/passwd"]', "tool.autoresearch.mutable", "'/etc/passwd'", "relative to the workspace"),
        ('mutable = ["../train.py"]', "tool.autoresearch.mutable", "'../train.py'", "without '..'"),
        ('mutable = ["missing.py"]', "tool.autoresearch.mutable", "'missing.py'", "exists in the workspace"),
        ('locked = ["train.py"]', "tool.autoresearch.locked", "['train.py']", "not also listed in mutable"),
        ("locked = []", "tool.autoresearch.locked", "[]", "non-empty list"),
        ('env = { COUNT = 3 }', "tool.autoresearch.env.COUNT", "3", "a string"),
        ('branch_prefix = "a b/"', "tool.autoresearch.branch_prefix", "'a b/'", "valid git branch name"),
        ('evaluate = { mode = "replay" }', "tool.autoresearch.evaluate.mode", "'replay'", "'checkpoint', 'stdout'"),
    ],
)
def test_each_invalid_value_is_reported_with_file_key_value_and_what_is_allowed(
    tmp_path: Path, line: str, key: str, shown: str, allowed: str
) -> None:
    key_name = line.split(" =")[0]
    body = "\n".join(row for row in BASE.splitlines() if not row.startswith(key_name + " "))
    ws = workspace(tmp_path, "[tool.autoresearch]\n" + body + "\n" + line + "\n", name="pyproject.toml")
    with pytest.raises(ConfigError) as info:
        load(ws)
    message = str(info.value)
    assert str(ws / "pyproject.toml") in message
    assert key in message and shown in message and allowed in message


def test_an_unknown_key_suggests_the_closest_known_one(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE + "time_budget = 10\n")
    with pytest.raises(ConfigError, match="unknown key time_budget; did you mean 'time_budget_s'"):
        load(ws)


def test_an_unknown_key_inside_a_profile_is_reported_with_its_dotted_path(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE + "[profiles.cpu]\ntime_budgt_s = 1\n")
    with pytest.raises(ConfigError, match="unknown key profiles.cpu.time_budgt_s; did you mean 'time_budget_s'"):
        load(ws)


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE.replace('metric = "val_bpb"\n', ""))
    with pytest.raises(ConfigError, match="required key metric is missing"):
        load(ws)


def test_checkpoint_evaluation_requires_a_command_and_stdout_mode_needs_none(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE + '[evaluate]\nmode = "checkpoint"\n')
    with pytest.raises(ConfigError, match="needs evaluate.command"):
        load(ws)
    (ws / "autoresearch.toml").write_text(BASE + '[evaluate]\nmode = "stdout"\ntimeout_s = 30\n')
    evaluate = load(ws).evaluate
    assert (evaluate.mode, evaluate.command, evaluate.timeout_s) == ("stdout", (), 30.0)


def test_paths_are_normalised_to_posix_workspace_relative_form(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.py").write_text("")
    ws = workspace(tmp_path, BASE.replace('["train.py"]', '["./train.py", "pkg\\\\model.py", "train.py"]'))
    config = load(ws)
    assert config.mutable == ("train.py", "pkg/model.py")
    assert config.is_mutable("pkg/model.py") and config.is_mutable(ws / "train.py")
    assert config.is_locked("prepare.py") and not config.is_locked("train.py") and not config.is_mutable("/etc/x")


PROFILES = BASE + """
[env]
SHARED = "1"
MODE = "base"

[evaluate]
mode = "checkpoint"
command = ["{python}", "{pinned}/prepare.py", "evaluate"]
timeout_s = 600

[profiles.cpu]
time_budget_s = 60
hard_timeout_s = 120
env = { MODE = "cpu" }
evaluate = { timeout_s = 90 }

[profiles.cuda]
command = ["{python}", "train.py", "--compile"]
"""


def test_a_profile_overrides_top_level_keys_and_merges_env_and_evaluate(tmp_path: Path) -> None:
    config = load(workspace(tmp_path, PROFILES), profile="cpu")
    assert config.profile == "cpu" and (config.time_budget_s, config.hard_timeout_s) == (60, 120)
    assert dict(config.env) == {"SHARED": "1", "MODE": "cpu"}
    assert config.evaluate.timeout_s == 90 and config.evaluate.command[1] == "{pinned}/prepare.py"
    assert config.command == ("{python}", "train.py")


def test_auto_profile_applies_what_the_detector_reports(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'profile = "auto"\n' + PROFILES)
    assert load(ws, detector=lambda: "cuda").command == ("{python}", "train.py", "--compile")
    assert load(ws, detector=lambda: "cpu").time_budget_s == 60
    none = load(ws, detector=lambda: "mps")  # not defined: no override
    assert none.profile == "" and none.time_budget_s == 300


def test_the_profile_environment_variable_overrides_the_document_but_not_the_argument(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 'profile = "cpu"\n' + PROFILES)
    assert load(ws).profile == "cpu"
    assert load(ws, environ={"AUTORESEARCH_PROFILE": "cuda"}).profile == "cuda"
    assert load(ws, environ={"AUTORESEARCH_PROFILE": "cuda"}, profile="cpu").profile == "cpu"


def test_an_explicit_profile_that_is_not_defined_lists_the_defined_ones(tmp_path: Path) -> None:
    ws = workspace(tmp_path, PROFILES)
    with pytest.raises(ConfigError, match="profile 'tpu' .* not defined; defined profiles: cpu, cuda"):
        load(ws, profile="tpu")


def test_a_bad_value_from_a_profile_is_reported_under_the_profile_key(tmp_path: Path) -> None:
    ws = workspace(tmp_path, PROFILES.replace("hard_timeout_s = 120", "hard_timeout_s = 30"))
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.hard_timeout_s = 30 .*> time_budget_s \(60\)"):
        load(ws, profile="cpu")


def test_detect_platform_answers_one_of_the_known_profiles() -> None:
    assert detect_platform() in ("cuda", "mps", "cpu")


def test_placeholders_expand_and_an_unknown_one_lists_the_allowed_names(tmp_path: Path) -> None:
    config = load(workspace(tmp_path, PROFILES))
    argv = config.expand(config.evaluate.command, pinned=tmp_path / "pinned")
    assert argv == [sys.executable, f"{tmp_path / 'pinned'}/prepare.py", "evaluate"]
    assert config.expand(["{workspace}/x", "{not a placeholder}"]) == [f"{config.workspace}/x", "{not a placeholder}"]
    with pytest.raises(ConfigError, match=r"unknown placeholder \{pinned\}.*allowed here: \{python\}, \{workspace\}"):
        config.expand(config.evaluate.command)


def test_improves_needs_more_than_min_improvement_in_the_configured_direction(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE + "min_improvement = 0.01\n")
    low = load(ws)
    assert low.improves(0.98, 1.0) and not low.improves(0.995, 1.0) and not low.improves(1.0, 1.0)
    assert not low.improves(1.02, 1.0)
    assert low.delta(0.98, 1.0) == pytest.approx(-0.02)
    (ws / "autoresearch.toml").write_text(BASE.replace("minimize", "maximize") + "min_improvement = 0.01\n")
    high = load(ws)
    assert high.improves(1.02, 1.0) and not high.improves(1.005, 1.0) and not high.improves(0.9, 1.0)
    assert not high.improves(float("nan"), 1.0)


def test_equal_is_not_an_improvement_even_with_zero_min_improvement(tmp_path: Path) -> None:
    config = load(workspace(tmp_path))
    assert config.min_improvement == 0 and not config.improves(1.0, 1.0) and config.improves(0.999, 1.0)


def test_empty_metric_names_mean_none_and_runs_dir_may_be_relocated(tmp_path: Path) -> None:
    ws = workspace(tmp_path, BASE + 'memory_metric = ""\nruns_dir = "out/runs"\n')
    config = load(ws)
    assert config.memory_metric is None and config.runs_dir == ws / "out" / "runs"


def test_the_configuration_is_frozen(tmp_path: Path) -> None:
    config = load(workspace(tmp_path, PROFILES))
    with pytest.raises(AttributeError):
        config.metric = "loss"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.env["X"] = "1"  # type: ignore[index]
