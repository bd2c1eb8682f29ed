import random

import pytest

from harness.backoff import Backoff


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_delays_double_from_the_base_until_the_cap_without_jitter():
    backoff = Backoff(5, 60, 0.0, FixedRng(0.5))
    assert [backoff.next_delay() for _ in range(6)] == [5, 10, 20, 40, 60, 60]


def test_jitter_only_shortens_a_delay_and_by_at_most_the_jitter_fraction():
    shortest = Backoff(8, 100, 0.25, FixedRng(0.999999))
    longest = Backoff(8, 100, 0.25, FixedRng(0.0))
    assert longest.next_delay() == 8
    assert shortest.next_delay() == pytest.approx(6, abs=1e-4)
    rng = random.Random(7)
    backoff = Backoff(8, 100, 0.25, rng)
    for n in range(12):
        raw = min(100, 8 * 2**n)
        assert raw * 0.75 <= backoff.next_delay() <= raw


def test_reset_starts_again_from_the_base():
    backoff = Backoff(1, 30, 0.0)
    for _ in range(4):
        backoff.next_delay()
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 1


def test_a_night_of_failures_never_overflows_past_the_cap():
    backoff = Backoff(5, 300, 0.0)
    delays = [backoff.next_delay() for _ in range(2000)]
    assert delays[-1] == 300


@pytest.mark.parametrize(
    ("base", "cap", "jitter", "words"),
    [(0, 10, 0.1, "base"), (5, 4, 0.1, "cap"), (5, 10, 1.0, "jitter"), (5, 10, -0.1, "jitter")],
)
def test_invalid_settings_are_rejected_with_the_offending_value(base, cap, jitter, words):
    with pytest.raises(ValueError, match=words):
        Backoff(base, cap, jitter)
