"""Prices of hosted models, in US dollars per token (input, output), for cost and budgets.

The table holds list prices per million tokens as published by the providers; extend or
correct it with `set_price("openai:my-fine-tune", 3.0, 12.0)` (per million tokens). A model
missing from the table costs 0 and cost budgets do not limit it.
"""

from __future__ import annotations

__all__ = ["price_of", "set_price"]

_PER_MILLION: dict[str, tuple[float, float]] = {
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:gpt-4.1": (2.00, 8.00),
    "openai:gpt-4.1-mini": (0.40, 1.60),
    "openai:gpt-4.1-nano": (0.10, 0.40),
    "anthropic:claude-3-5-haiku-latest": (0.80, 4.00),
    "anthropic:claude-3-7-sonnet-latest": (3.00, 15.00),
    "anthropic:claude-sonnet-4-0": (3.00, 15.00),
    "anthropic:claude-opus-4-0": (15.00, 75.00),
}


def set_price(model: str, input_per_million: float, output_per_million: float) -> None:
    """Set the price of `model` (its full model string, e.g. `openai:gpt-4o`)."""
    _PER_MILLION[model] = (input_per_million, output_per_million)


def price_of(model: str) -> tuple[float, float] | None:
    """(input, output) dollars per token of a model string, or None when unknown."""
    p = _PER_MILLION.get(model)
    return None if p is None else (p[0] / 1e6, p[1] / 1e6)
