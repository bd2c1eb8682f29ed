"""Capped exponential backoff with jitter, for restarting an agent while its API is overloaded or down.

Delays double from `base` up to `cap`; each is then scaled down by a random fraction of at most `jitter`, so that
several runs sharing one API key do not retry in lockstep, and the cap stays a true maximum.
"""

from __future__ import annotations

import math
import random
from typing import Protocol


class Rng(Protocol):
    def random(self) -> float:  # uniform in [0, 1)
        ...


class Backoff:
    """The n-th delay (0-based) lies in [raw * (1 - jitter), raw] with raw = min(cap, base * 2**n)."""

    def __init__(self, base: float, cap: float, jitter: float, rng: Rng | None = None) -> None:
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"backoff base must be a finite number of seconds > 0, got {base!r}")
        if not (math.isfinite(cap) and cap >= base):
            raise ValueError(f"backoff cap must be a finite number of seconds >= base ({base}), got {cap!r}")
        if not (0 <= jitter < 1):
            raise ValueError(f"backoff jitter must be a fraction with 0 <= jitter < 1, got {jitter!r}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rng: Rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        # Bound the exponent too: 2.0 ** n overflows a float after about a thousand failures in a row.
        raw: float = min(self.cap, self.base * 2.0 ** min(self._attempt, 64))
        self._attempt += 1
        return raw * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from `base`: called once the agent has proven healthy."""
        self._attempt = 0
