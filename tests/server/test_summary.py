import math

import pytest

from server.summary import format_summary, parse_summary


def test_the_last_block_wins_over_earlier_ones():
    text = "---\nval_bpb: 2.0\nstep: 10\n\nmore training\n---\nval_bpb: 0.9979\nstep: 20\n"
    assert parse_summary(text) == {"val_bpb": 0.9979, "step": 20.0}


def test_junk_before_and_after_the_block_is_ignored():
    text = (
        "loading data...\nstep 00100 loss 3.2\n"
        "---\n"
        "val_bpb:          0.997900\n"
        "training_seconds: 300.1\n"
        "device:           cuda\n"
        "Exception ignored in atexit callback\n"
        "weird: trailing line after junk\n"
    )
    assert parse_summary(text) == {"val_bpb": 0.9979, "training_seconds": 300.1, "device": "cuda"}


def test_text_without_a_block_gives_an_empty_dict():
    assert parse_summary("") == {}
    assert parse_summary("step 1 loss 2.0\nall done\n") == {}


def test_a_key_value_line_outside_a_block_is_ignored():
    assert parse_summary("val_bpb: 1.0\n") == {}
    assert parse_summary("---\nsteps: 5\n\nval_bpb: 1.0\n") == {"steps": 5.0}


def test_a_block_ends_at_the_first_line_that_is_not_a_key_value_pair():
    text = "---\na: 1\nbad-key: 2\nb: 3\n"
    assert parse_summary(text) == {"a": 1.0}
    assert parse_summary("---\na: 1\n  b: 2\n") == {"a": 1.0}


def test_only_a_line_of_exactly_three_dashes_starts_a_block():
    assert parse_summary("----\na: 1\n") == {}
    assert parse_summary(" ---\na: 1\n") == {}
    assert parse_summary("---  \r\na: 1\r\n") == {"a": 1.0}


def test_a_stray_empty_separator_after_the_result_does_not_erase_it():
    assert parse_summary("---\nval_bpb: 0.9\n---\n=== done ===\n") == {"val_bpb": 0.9}


def test_non_finite_numbers_come_back_as_floats_for_the_caller_to_reject():
    parsed = parse_summary("---\na: nan\nb: inf\nc: -Infinity\n")
    assert math.isnan(parsed["a"])
    assert parsed["b"] == math.inf
    assert parsed["c"] == -math.inf


def test_values_that_are_not_plain_numbers_stay_trimmed_strings():
    parsed = parse_summary("---\nfingerprint:   ab12cd  \nsize: 1_000\nhex: 0x10\nempty:\nratio: 1e-3\n")
    assert parsed == {"fingerprint": "ab12cd", "size": "1_000", "hex": "0x10", "empty": "", "ratio": 0.001}


def test_a_repeated_key_keeps_its_last_value():
    assert parse_summary("---\na: 1\na: 2\n") == {"a": 2.0}


def test_format_summary_aligns_values_and_reads_back_unchanged():
    summary = {"val_bpb": 0.99790123456789, "training_seconds": 300.0, "eval_tokens": 20971520, "device": "cpu"}
    text = format_summary(summary)
    assert text == (
        "---\n"
        "val_bpb:          0.99790123456789\n"
        "training_seconds: 300.0\n"
        "eval_tokens:      20971520\n"
        "device:           cpu\n"
    )
    assert parse_summary("noise\n" + text + "\n") == {k: (float(v) if k != "device" else v) for k, v in summary.items()}


def test_format_summary_rejects_keys_and_values_the_parser_could_not_read_back():
    with pytest.raises(ValueError, match="bad key"):
        format_summary({"bad key": 1.0})
    with pytest.raises(ValueError, match="'note'.*line break"):
        format_summary({"note": "two\nlines"})
    with pytest.raises(ValueError, match="bool"):
        format_summary({"flag": True})
