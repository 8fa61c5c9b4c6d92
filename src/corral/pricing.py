"""List prices for budgets: USD per million tokens by model family, overridable in settings."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PRICES", "list_cost_cents", "price_for"]

# input, output, cache read, cache write (5 minute) — USD per million tokens.
DEFAULT_PRICES: dict[str, tuple[float, float, float, float]] = {
    "claude-opus": (5.0, 25.0, 0.5, 6.25),
    "claude-sonnet": (3.0, 15.0, 0.3, 3.75),
    "claude-haiku": (1.0, 5.0, 0.1, 1.25),
    "corral-demo": (0.0, 0.0, 0.0, 0.0),  # the offline demo model (models/demo.py) is free
}


def price_for(model: str, overrides: dict[str, list[float]] | None = None) -> tuple[float, ...] | None:
    """The longest matching prefix among overrides and defaults; None for a model without a list price."""
    table: dict[str, tuple[float, ...]] = {**DEFAULT_PRICES, **{k: tuple(v) for k, v in (overrides or {}).items()}}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


def list_cost_cents(usage: dict[str, Any], price: tuple[float, ...]) -> float:
    """Cost of `usage` (SessionUsage shape) in US cents."""
    cache_write = (usage.get("cache_creation") or {}).get("ephemeral_5m_input_tokens", 0)
    dollars = (
        usage.get("input_tokens", 0) * price[0]
        + usage.get("output_tokens", 0) * price[1]
        + usage.get("cache_read_input_tokens", 0) * price[2]
        + cache_write * price[3]
    ) / 1_000_000
    return dollars * 100
