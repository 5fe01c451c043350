"""Time order in bounded memory: spilled runs give the order of one in-memory sort."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ledger.ordering import in_time_order


@dataclass(frozen=True)
class _Record:
    sort_time: int | None
    name: str


def _pack(record: _Record) -> tuple[Any, ...]:
    return (record.sort_time, record.name)


def _unpack(packed: tuple[Any, ...]) -> _Record:
    return _Record(*packed)


def test_spilled_runs_merge_into_the_in_memory_order() -> None:
    rng = random.Random(4)
    records = [
        _Record(None if rng.random() < 0.05 else rng.randrange(50), f"r{i}") for i in range(2000)
    ]
    in_memory = list(in_time_order(records, run_size=10_000))
    unpacked: list[tuple[Any, ...]] = []

    def counting_unpack(packed: tuple[Any, ...]) -> _Record:
        unpacked.append(packed)
        return _unpack(packed)

    spilled = list(in_time_order(records, run_size=37, pack=_pack, unpack=counting_unpack))
    assert spilled == in_memory
    # Rejects first, as they came; then (time, input position).
    rejects = [r for r in records if r.sort_time is None]
    assert in_memory[: len(rejects)] == rejects
    valid = [r for r in records if r.sort_time is not None]
    assert in_memory[len(rejects) :] == sorted(valid, key=lambda r: (r.sort_time, int(r.name[1:])))
    # Everything but the last, unspilled run went through the spill format.
    assert len(unpacked) == len(valid) - len(valid) % 37
