"""The metric, the offline corpus and the tokenizer of prepare.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import prepare


def test_val_bpb_is_summed_nats_over_ln2_times_target_bytes_on_a_hand_computed_case() -> None:
    # Vocabulary of 4: tokens decode to 1, 2, 3 and 0 bytes (the last is special and is not scored).
    token_bytes = torch.tensor([1, 2, 3, 0])
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = math.log(3)  # probabilities 1/6, 3/6, 1/6, 1/6 -> target 1 costs ln 2
    targets = torch.tensor([[1, 2, 3]])  # uniform row: target 2 costs ln 4; target 3 has no bytes
    nats, nbytes = prepare.score_logits(logits, targets, token_bytes)
    assert nats == pytest.approx(3 * math.log(2))
    assert nbytes == 5
    assert prepare.bits_per_byte(nats, nbytes) == pytest.approx(0.6)


def test_bits_per_byte_refuses_an_empty_slice() -> None:
    with pytest.raises(ValueError, match="no bytes"):
        prepare.bits_per_byte(1.0, 0)


def test_the_offline_corpus_is_deterministic_for_a_salt_and_its_three_splits_disjoint() -> None:
    train1, val1, hold1 = prepare.offline_corpus(2_000_000, "salt-a")
    train2, val2, hold2 = prepare.offline_corpus(2_000_000, "salt-a")
    assert (train1, val1, hold1) == (train2, val2, hold2)
    assert not set(train1) & set(val1) and not set(train1) & set(hold1) and not set(val1) & set(hold1)
    total = sum(len(d.encode()) for d in train1 + val1 + hold1)
    assert 1_500_000 < total <= 2_000_000
    assert 0 < sum(map(len, val1)) < sum(map(len, train1)) and sum(map(len, hold1)) > 0


def test_the_split_depends_on_the_secret_salt_so_train_py_cannot_recompute_it() -> None:
    _, val_a, _ = prepare.offline_corpus(2_000_000, "salt-a")
    _, val_b, _ = prepare.offline_corpus(2_000_000, "salt-b")
    assert set(val_a) != set(val_b)


def test_every_salt_gives_both_scored_splits_their_share_of_the_bytes_even_for_a_small_corpus() -> None:
    """The salt picks which files are scored, never how much: each split holds at least 5% of the bytes."""
    for salt in (f"{i:032x}" for i in range(40)):
        train, val, holdout = prepare.offline_corpus(400_000, salt)
        sizes = [sum(len(d.encode()) for d in split) for split in (train, val, holdout)]
        total = sum(sizes)
        assert min(sizes[1], sizes[2]) >= total * prepare.OFFLINE_VAL_PERCENT / 200, (salt, sizes)
        assert sizes[0] > 0.6 * total, (salt, sizes)


@pytest.mark.slow
def test_the_default_offline_corpus_is_several_megabytes_of_text() -> None:
    train, val, holdout = prepare.offline_corpus(prepare.SOURCE_DEFAULTS["offline"].corpus_bytes)
    assert sum(len(d.encode()) for d in train + val + holdout) > 6_000_000
    assert any("Return" in d for d in val)  # real prose from docstrings


def test_the_tokenizer_round_trips_text_and_counts_its_bytes_exactly(tiny_cache: dict[str, str]) -> None:
    tokenizer = prepare.Tokenizer.load(prepare.source_dir() / "tokenizer.json")
    text = "def naïve(x):\n    return x ** 2  # café ☕ 🙂 日本語\n"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert int(tokenizer.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    assert tokenizer.vocab_size == 512
    assert tokenizer.token_bytes()[tokenizer.bos_token_id] == 0


def test_the_cache_records_a_fingerprint_and_preparing_twice_changes_nothing(
        tiny_cache: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    root = prepare.source_dir()
    before = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    prepare.prepare(prepare.source_settings())
    assert "already prepared" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == before
    prepared = prepare.load_prepared()
    assert len(prepared.fingerprint) == 64
    assert prepared.val_tokens.dtype == np.uint16 and prepared.val_tokens.size > 1024


def test_the_training_batches_follow_the_seed(tiny_cache: dict[str, str]) -> None:
    prepared = prepare.load_prepared()
    a = prepare.train_batches(prepared, 4, 64, seed=1)
    b = prepare.train_batches(prepared, 4, 64, seed=1)
    c = prepare.train_batches(prepared, 4, 64, seed=2)
    xa, ya, _ = next(a)
    xb, _, _ = next(b)
    xc, _, _ = next(c)
    assert (xa == xb).all() and not (xa == xc).all()
    assert (xa[:, 1:] == ya[:, :-1]).all()


def test_the_time_budget_comes_from_the_environment_or_the_device_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTORESEARCH_TIME_BUDGET", raising=False)
    assert prepare.time_budget("cuda") == 300 and prepare.time_budget("cpu") == 60 and prepare.time_budget("mps") == 120
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "12.5")
    assert prepare.time_budget("cuda") == 12.5
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "soon")
    with pytest.raises(prepare.PrepareError, match="soon"):
        prepare.time_budget()


def test_bad_flags_are_refused_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        prepare.main(["--num-shards", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    assert prepare.main(["--source", "offline", "--num-shards", "3"]) == 2
    assert "--num-shards applies to --source climbmix" in capsys.readouterr().err
