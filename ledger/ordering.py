"""Put one run's records in time order before they are applied, in bounded memory.

Histories arrive from several systems and out of order (surveys synced a day late, a ticket
export loaded before the CRM export). Applying a run's facts in `occurred_at` order, ties
kept in input order, makes validation independent of line order, file order and batch size:
a fact is judged against the state at its own time, and the notification order (hence the
hash chain and the topic order) is a property of the data, not of how it was batched.
One exception to input order among ties: a rating (`RATES_THE_INSTANT`) comes after the
other facts of its instant (`order_key`).

Records that could not be parsed are passed through at once, in input order: they are
rejects, whatever their time. Valid records are sorted in runs of `run_size` in memory;
larger inputs spill sorted runs to temporary files and are merged, so multi-gigabyte
exports sort in constant memory. What is spilled is what `pack` makes of a record (plain
tuples of text, numbers and bytes, which `ledger.plain_bytes` writes several times faster
than objects) and `unpack` makes it a record again when the runs are merged.
"""

from __future__ import annotations

import errno
import heapq
import pickle
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from ledger.errors import SpillError
from ledger.plain_bytes import from_bytes, to_bytes

DEFAULT_RUN_SIZE = 200_000
#: Facts that rate work done up to their instant. At the same `occurred_at` they come after
#: the other facts, so a survey answer meets the case's owner and the interaction of that
#: instant, and a compliment the employee who joined then, whatever the line order (and as
#: a later run meets them: `Case.attributed_at` counts a step at the answer's instant as
#: before it). Nothing refers to a rating, so nothing can be missing for it to come last.
RATES_THE_INSTANT = frozenset({"SurveyAnswered", "ComplimentReceived"})
#: Records per chunk of a spilled run. Merging holds one chunk of every run in
#: memory, so this (not the run size) sets how memory grows with the number of runs.
SPILL_CHUNK = 512
#: A spilled chunk's length and CRC-32, before its bytes: a chunk the disk damaged is told as
#: that (marshal would read some damage as other values, and say "bad marshal data" of the rest).
_FRAME = struct.Struct("<II")


class _Timed(Protocol):
    @property
    def sort_time(self) -> int | None:
        """`order_key` of a valid record, None for a reject."""


R = TypeVar("R", bound=_Timed)
T = TypeVar("T")


def order_key(event_type: str, occurred_at: int) -> int:
    """A valid fact's place in its run (its `sort_time`): its time, a rating after the other
    facts of the same instant. One integer, so records sort as fast as by time alone."""
    return 2 * occurred_at + (event_type in RATES_THE_INSTANT)


def _same(record: Any) -> Any:
    return record


def in_time_order(
    records: Iterable[R],
    *,
    run_size: int = DEFAULT_RUN_SIZE,
    spill_dir: Path | None = None,
    pack: Callable[[R], Any] = _same,
    unpack: Callable[[Any], R] = _same,
) -> Iterator[R]:
    """Rejects as they come, then every valid record ordered by (sort_time, input position).

    Spilled runs hold `pack(record)`, read back with `unpack`.
    """
    # Compared as tuples: (time, input position) is unique, so records themselves are never
    # compared (a key function per comparison cost more than the comparisons).
    buffer: list[tuple[int, int, R]] = []
    spills: list[IO[bytes]] = []
    try:
        for sequence, record in enumerate(records):
            at = record.sort_time
            if at is None:
                yield record
                continue
            buffer.append((at, sequence, record))
            if len(buffer) >= run_size:
                spills.append(_spill(buffer, spill_dir, pack))
                buffer = []
        buffer.sort()
        if not spills:
            for _, _, record in buffer:
                yield record
            return
        runs: list[Iterable[tuple[int, int, R]]] = [_read_run(handle, unpack, spill_dir) for handle in spills]
        runs.append(buffer)
        for _, _, record in heapq.merge(*runs):
            yield record
    finally:
        for handle in spills:
            handle.close()


def _spill(buffer: list[tuple[int, int, T]], spill_dir: Path | None, pack: Callable[[T], Any]) -> IO[bytes]:
    buffer.sort()
    try:
        # Deleted on close (and by the OS if the process dies): nothing is left behind.
        handle = tempfile.TemporaryFile(prefix="crm-ledger-sort-", dir=spill_dir)  # noqa: SIM115 - returned open
    except OSError as error:
        raise SpillError(_spill_fault(error, spill_dir)) from error
    try:
        for start in range(0, len(buffer), SPILL_CHUNK):
            part = buffer[start : start + SPILL_CHUNK]
            chunk = to_bytes([(at, sequence, pack(record)) for at, sequence, record in part])
            handle.write(_FRAME.pack(len(chunk), zlib.crc32(chunk)))
            handle.write(chunk)
        handle.flush()
        handle.seek(0)
    except OSError as error:
        handle.close()
        raise SpillError(_spill_fault(error, spill_dir)) from error
    return handle


def _spill_fault(error: OSError, spill_dir: Path | None) -> str:
    """What to say when a sorted run cannot be spilled: the file has no name of its own (it is
    deleted at once), so the line names the folder, and TMPDIR, which chooses it."""
    where = f"the temporary folder {_folder(spill_dir)} (TMPDIR), where a large run sorts its records,"
    # The spill comes while the run is read, before any batch is written.
    again = "nothing was written to the ledger; run the same command again"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where} is full: free space there or set TMPDIR to a folder with room; {again}"
    return f"{where} cannot be written ({error.strerror or error}): set TMPDIR to a writable folder; {again}"


def _folder(spill_dir: Path | None) -> Path | str:
    return spill_dir if spill_dir is not None else tempfile.gettempdir()


def _read_run(
    handle: IO[bytes], unpack: Callable[[Any], T], spill_dir: Path | None
) -> Iterator[tuple[int, int, T]]:
    while True:
        chunk = _read_chunk(handle, spill_dir)
        if chunk is None:
            return
        for at, sequence, packed in chunk:
            yield at, sequence, unpack(packed)


def _read_chunk(handle: IO[bytes], spill_dir: Path | None) -> list[tuple[int, int, Any]] | None:
    """The next chunk of a spilled run, None at its end; SpillError when the file is damaged."""
    try:
        frame = handle.read(_FRAME.size)
        if not frame:
            return None
        if len(frame) < _FRAME.size:
            raise SpillError(_damaged(spill_dir, "it ends inside a chunk's header"))
        size, crc = _FRAME.unpack(frame)
        data = handle.read(size)
    except OSError as error:
        raise SpillError(_damaged(spill_dir, f"it cannot be read: {error.strerror or error}")) from error
    if len(data) < size:
        raise SpillError(_damaged(spill_dir, f"it ends {size - len(data):,} bytes short of a chunk's end"))
    if zlib.crc32(data) != crc:
        raise SpillError(_damaged(spill_dir, "a chunk's bytes changed"))
    try:
        chunk: list[tuple[int, int, Any]] = from_bytes(data)
    except (EOFError, ValueError, TypeError, IndexError, pickle.UnpicklingError) as error:
        # Bytes that match their checksum yet do not decode: damaged before they were summed.
        raise SpillError(_damaged(spill_dir, f"a chunk cannot be decoded: {error}")) from error
    return chunk


def _damaged(spill_dir: Path | None, what: str) -> str:
    """What to say when a spilled run reads back other than it was written. The file has no
    name of its own (it is deleted at once): the line names the folder it was in."""
    # Merging feeds the batches as it reads: batches before the damage may be written (each
    # whole, one transaction); the same command run again finds them and records the rest.
    return (
        f"a sorted run spilled to the temporary folder {_folder(spill_dir)} (TMPDIR) was damaged "
        f"on the disk ({what}): it is temporary data, not the ledger, and nothing was half-written; "
        "check that disk or set TMPDIR to another folder, and run the same command again"
    )
