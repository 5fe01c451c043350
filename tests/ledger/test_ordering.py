"""Time order in bounded memory: spilled runs give the order of one in-memory sort."""

from __future__ import annotations

import errno
import io
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import SpillError
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


def test_a_spill_that_cannot_be_written_names_the_temporary_folder_and_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary folder that filled up while a large run was sorted gave "disk full" and no
    name at all (the spill file has none): nothing told the user where, nor that TMPDIR
    chooses it."""
    records = [_Record(i % 7, f"r{i}") for i in range(100)]
    missing = tmp_path / "gone"
    with pytest.raises(SpillError, match=f"temporary folder {re.escape(str(missing))} \\(TMPDIR\\).*cannot be written"):
        list(in_time_order(records, run_size=10, spill_dir=missing, pack=_pack, unpack=_unpack))
    # A disk that fills up under the spill (a fault no test can make in its own process).
    monkeypatch.setattr("ledger.ordering.tempfile.TemporaryFile", lambda **_: _FullDisk())
    with pytest.raises(SpillError, match=f"temporary folder {re.escape(str(tmp_path))} \\(TMPDIR\\).* is full: free space"):
        list(in_time_order(records, run_size=10, spill_dir=tmp_path, pack=_pack, unpack=_unpack))


class _FullDisk(io.BytesIO):
    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
