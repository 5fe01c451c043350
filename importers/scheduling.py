"""The simulations' agenda: actions due at a moment, kept in a heap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True)
class Scheduled:
    """An action a simulation will take at `at` (ties in scheduling order, by `seq`)."""

    at: int
    seq: int
    action: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
