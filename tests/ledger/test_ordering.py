"""Time order in bounded memory: spilled runs give the order of one in-memory sort."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import re
import struct
from collections.abc import Callable, Iterator
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


def _spill_files(folder: Path) -> list[int]:
    """This process's open spill files in `folder` (they have no names: deleted on creation)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/"):
                found.append(int(fd))
    return found


def _damaging_at_the_end(records: list[_Record], folder: Path, damage: Callable[[int], None]) -> Iterator[_Record]:
    """`records`, then, once every run is spilled and before any is read back, `damage` done
    to each spill file."""
    yield from records
    files = _spill_files(folder)
    assert files, "nothing was spilled"
    for fd in files:
        damage(fd)


def _first_chunk_size(fd: int) -> int:
    return int(struct.unpack("<I", os.pread(fd, 4, 0))[0])


@pytest.mark.parametrize(
    ("damage", "told"),
    [
        # A short read: the file ends inside the last chunk, or inside a chunk's header.
        (lambda fd: os.truncate(fd, os.fstat(fd).st_size - 10), "bytes short of a chunk's end"),
        (lambda fd: os.truncate(fd, 8 + _first_chunk_size(fd) + 3), "ends inside a chunk's header"),
        # A changed byte, which marshal would have read as another value or as "bad marshal data".
        (lambda fd: os.pwrite(fd, bytes([os.pread(fd, 1, 20)[0] ^ 0x55]), 20), "a chunk's bytes changed"),
        (lambda fd: os.pwrite(fd, b"\xff", 8), "a chunk's bytes changed"),
    ],
)
def test_a_spilled_run_the_disk_damaged_is_a_spill_error_that_says_so(
    tmp_path: Path, damage: Callable[[int], None], told: str
) -> None:
    """A spill file read back short or changed gave marshal's own "bad marshal data" or
    EOFError (a traceback), or records other than those spilled."""
    records = [_Record(i % 97, f"r{i}" * 20) for i in range(3000)]
    ordered = in_time_order(
        _damaging_at_the_end(records, tmp_path, damage), run_size=1000, spill_dir=tmp_path, pack=_pack, unpack=_unpack
    )
    with pytest.raises(SpillError) as raised:
        list(ordered)
    message = str(raised.value)
    assert f"spilled to the temporary folder {tmp_path} (TMPDIR) was damaged" in message, message
    assert told in message and "run the same command again" in message and "\n" not in message
