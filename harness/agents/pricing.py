"""What the built-in API agent's tokens cost, so `--max-cost-usd` can stop a run before the bill surprises anyone.

Prices are USD per million tokens, from Anthropic's published price list (platform.claude.com/docs/en/about-claude/
pricing, read 2026). The agent caches with `cache_control: {"type": "ephemeral"}` (5-minute cache), whose writes
cost 1.25x the input price and whose reads cost 0.1x. The table is matched by the longest model-name prefix, so dated
names (`claude-opus-4-5-20251101`) and aliases (`claude-opus-4-5`) price alike.

An unknown model is priced at the most expensive rate on the list (Opus 4.1: $15 in / $75 out): overestimating makes
a cost limit stop a run early, underestimating would let it overspend. Add a row when a new family appears.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float  # 5-minute ephemeral cache write
    cache_read: float

    @classmethod
    def standard(cls, input: float, output: float) -> Price:
        """The usual shape: cache writes 1.25x input, cache reads 0.1x input."""
        return cls(input, output, input * 1.25, input * 0.1)


@dataclass(frozen=True)
class Usage:
    """Token counts as the Messages API reports them; `input_tokens` excludes the cached part."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_creation_input_tokens + other.cache_creation_input_tokens,
                     self.cache_read_input_tokens + other.cache_read_input_tokens)

    @property
    def context_tokens(self) -> int:
        """How big the conversation was for this call, plus what the model added: the next request's floor."""
        return (self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
                + self.output_tokens)

    def to_json(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens}

    @classmethod
    def from_object(cls, usage: object) -> Usage:
        """From the SDK's usage object or a dict of the same fields; missing or null counts read as 0."""
        def read(name: str) -> int:
            value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

        return cls(read("input_tokens"), read("output_tokens"), read("cache_creation_input_tokens"),
                   read("cache_read_input_tokens"))


UNKNOWN_MODEL_PRICE = Price.standard(15.0, 75.0)  # the dearest listed rate: a cost limit errs on the safe side

PRICES: dict[str, Price] = {
    # Opus 4.5 and later cost a third of the Opus 4 / 4.1 price.
    "claude-opus-5": Price.standard(5.0, 25.0),
    "claude-opus-4-8": Price.standard(5.0, 25.0),
    "claude-opus-4-7": Price.standard(5.0, 25.0),
    "claude-opus-4-6": Price.standard(5.0, 25.0),
    "claude-opus-4-5": Price.standard(5.0, 25.0),
    "claude-opus-4": Price.standard(15.0, 75.0),  # 4 and 4.1
    "claude-3-opus": Price.standard(15.0, 75.0),
    "claude-fable-": Price.standard(10.0, 50.0),
    "claude-mythos-": Price.standard(10.0, 50.0),
    # Every Sonnet since 3.5 has been $3 / $15 (up to 200K input tokens per request).
    "claude-sonnet-": Price.standard(3.0, 15.0),
    "claude-3-7-sonnet": Price.standard(3.0, 15.0),
    "claude-3-5-sonnet": Price.standard(3.0, 15.0),
    "claude-haiku-4-5": Price.standard(1.0, 5.0),
    "claude-3-5-haiku": Price.standard(0.8, 4.0),
    "claude-3-haiku": Price.standard(0.25, 1.25),
}


def price_for(model: str) -> Price:
    """The price of `model` by its longest matching prefix in `PRICES`, else `UNKNOWN_MODEL_PRICE`."""
    name = model.strip().lower()
    matches = [prefix for prefix in PRICES if name.startswith(prefix)]
    return PRICES[max(matches, key=len)] if matches else UNKNOWN_MODEL_PRICE


def cost_usd(model: str, usage: Usage) -> float:
    """What `usage` cost on `model`, in USD."""
    price = price_for(model)
    return (usage.input_tokens * price.input + usage.output_tokens * price.output
            + usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read) / 1_000_000
