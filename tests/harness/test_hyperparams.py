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
