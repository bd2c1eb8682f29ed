"""Finding and editing UPPER_CASE hyperparameters the way a person would, keeping comments and alignment."""

from __future__ import annotations

import random

import pytest

from harness.agents.random_agent import propose
from harness.hyperparams import find_hyperparameters, format_value, set_hyperparameter

SOURCE = '''import math

DEPTH = 4               # number of layers
LR = 3e-4               # learning rate
BATCH = 2**14           # tokens per step
NAME = "x"              # not a number
ENABLED = True          # not a number either

def f():
    INNER = 5
'''


def test_only_module_level_numeric_constants_are_found() -> None:
    found = {p.name: p for p in find_hyperparameters(SOURCE)}
    assert set(found) == {"DEPTH", "LR", "BATCH"}
    assert found["DEPTH"].is_int and found["BATCH"].value == 16384 and found["BATCH"].is_power_of_two_literal


def test_an_edit_keeps_the_comment_and_other_lines() -> None:
    edited = set_hyperparameter(SOURCE, "LR", "6e-4")
    assert "LR = 6e-4               # learning rate" in edited
    assert edited.replace("6e-4", "3e-4") == SOURCE


def test_integers_stay_integers_and_powers_of_two_stay_powers_of_two() -> None:
    params = {p.name: p for p in find_hyperparameters(SOURCE)}
    assert format_value(params["DEPTH"], 4 * 1.5) == "6"
    assert format_value(params["DEPTH"], 0.2) == "1"
    assert format_value(params["BATCH"], 16384 * 2) == "2**15"


def test_a_missing_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="MISSING"):
        set_hyperparameter(SOURCE, "MISSING", "1")


def test_the_random_agent_changes_exactly_one_line_and_says_which() -> None:
    new, description = propose(SOURCE, random.Random(3))
    changed = [(a, b) for a, b in zip(SOURCE.splitlines(), new.splitlines()) if a != b]
    assert len(changed) == 1
    assert description.split()[0] in {"DEPTH", "LR", "BATCH"} and "->" in description


def test_a_file_without_hyperparameters_is_refused() -> None:
    with pytest.raises(ValueError, match="no positive UPPER_CASE"):
        propose("x = 1\n", random.Random(0))


# ---- the ranges the offline agents read from the comments ----

from harness.hyperparams import RangeError, find_tunables  # noqa: E402

RANGED = '''LR = 0.04            # learning rate; range: 0.001..0.1 log
DEPTH = 4            # blocks; range: 2..8
DROPOUT = 0.1        # range: 0..0.5
BATCH = 2**14        # range: 2**12..2**16
ACT = "relu2"        # choices: relu2, gelu
SEED = 42            # seeds everything; fixed
MOMENTUM = 0.95      # no range declared
WIDTH = 8
USE_BIAS = True
NAME = "plain"       # a string without choices is left alone
ZERO = 0.0
'''


def test_declared_ranges_types_and_choices_are_read_from_the_comments() -> None:
    found = {t.name: t for t in find_tunables(RANGED)}
    assert (found["LR"].kind, found["LR"].low, found["LR"].high, found["LR"].log) == ("float", 0.001, 0.1, True)
    assert (found["DEPTH"].kind, found["DEPTH"].low, found["DEPTH"].high) == ("int", 2, 8)
    assert (found["DROPOUT"].kind, found["DROPOUT"].log) == ("float", False)
    assert (found["BATCH"].kind, found["BATCH"].low, found["BATCH"].high) == ("pow2", 12, 16)
    assert found["ACT"].choices == ("relu2", "gelu") and all(found[n].declared for n in ("LR", "DEPTH", "ACT"))
    assert "SEED" not in found and "NAME" not in found and "ZERO" not in found


def test_without_a_declaration_the_defaults_are_anchored_to_the_value() -> None:
    found = {t.name: t for t in find_tunables(RANGED)}
    assert (found["MOMENTUM"].low, found["MOMENTUM"].high, found["MOMENTUM"].log) == (0.95 / 4, 0.95 * 4, True)
    assert (found["WIDTH"].kind, found["WIDTH"].low, found["WIDTH"].high) == ("int", 4, 16)
    assert found["USE_BIAS"].choices == (True, False) and not found["USE_BIAS"].declared


@pytest.mark.parametrize("line, message", [
    ("LR = 0.1  # range: 0.5..0.01\n", "low end must be below"),
    ("LR = 0.1  # range: 0..1 log\n", "log scale needs a positive"),
    ("LR = 0.1  # range: fast\n", "cannot read the range of LR"),
    ("ACT = 'a'  # range: 1..2\n", "not a number"),
    ("ACT = 'a'  # choices: a\n", "at least two"),
    ("B = 2**10  # range: 100..5000\n", "powers of two"),
])
def test_a_range_that_cannot_be_used_is_refused_with_the_line_and_the_fix(line: str, message: str) -> None:
    with pytest.raises(RangeError, match=message) as error:
        find_tunables("\n" + line)
    assert "line 2" in str(error.value)


def test_the_random_agent_never_leaves_a_declared_range() -> None:
    source = "MUON_MOMENTUM = 0.95  # range: 0.8..0.99\nLR = 0.04  # range: 0.02..0.05 log\n"
    space, rng = find_tunables(source), random.Random(0)
    for _ in range(200):
        new, _ = propose(source, rng, space)
        for tunable in find_tunables(new):
            assert tunable.contains(tunable.current), (tunable.name, tunable.current)


def test_the_shipped_train_py_declares_a_range_for_every_literal_it_lets_agents_tune() -> None:
    from helpers import REPO_ROOT

    found = {t.name: t for t in find_tunables((REPO_ROOT / "train.py").read_text(encoding="utf-8"))}
    assert found and all(t.declared for t in found.values()), [n for n, t in found.items() if not t.declared]
    assert "SEED" not in found and "MAX_LOSS" not in found
    assert all(t.contains(t.current) for t in found.values())
