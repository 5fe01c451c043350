"""The simulations' agenda: actions due at a moment, kept in a heap."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True)
class Scheduled:
    """An action a simulation will take at `at` (ties in scheduling order, by `seq`)."""

    at: int
    seq: int
    action: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False)


def pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    """A value drawn with the given weights (one draw of `rng`, so streams stay reproducible)."""
    roll = rng.random()
    for value, weight in weighted:
        roll -= weight
        if roll <= 0:
            return value
    return weighted[-1][0]
