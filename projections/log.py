"""The decoded log: every event of one source decoded once, in a Delta Lake table.

One log per source (the ledger's notification log, or one Kafka topic), shared by every
version of the read models, by `query`, `audit` and `explain`, and readable by any engine
that reads Delta (Spark, Trino, polars, DuckDB). Appends are exactly once: each commit
carries Delta application transactions, one per source stream (`ledger`, or
`<topic>:<partition>`), whose version is the last position in the commit. A killed
appender resumes from `transaction_version(stream)`; a commit is all or nothing, so
nothing is lost or written twice.

Undecodable messages are rows of the same table with `dead_letter` set (the error), so
that they are committed atomically with the positions too.

The narrow interface for other code: `DecodedLog.dataset()` (an Arrow dataset of a
snapshot) and `register_log()` (the same, as a relation named on a DuckDB connection).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError

from crm_ledger.errors import CrmLedgerError
from crm_ledger.settings import delta_unsafe_advice, delta_unsafe_part
from projections.columns import LOG_SCHEMA
from projections.errors import LogMismatchError, ProjectionError, StaleBatchError
from projections.sources import LEDGER_STREAM, Position

if TYPE_CHECKING:
    # Only for the types of `register_log`: writers of the log (decoder workers) never load DuckDB.
    import duckdb

#: The columns of the auditors' `ledger_events` and of each version's `events` view: the log
#: without its bookkeeping (stream and position are the source's own coordinates).
EVENT_COLUMNS = tuple(
    name for name in LOG_SCHEMA.names if name not in {"stream", "position", "dead_letter", "seen_at"}
)
#: Columns whose values are (nearly) all distinct: a dictionary page never pays for itself
#: there, yet the Parquet writer builds one for each column chunk before it falls back.
_DISTINCT_COLUMNS = ("position", "notification_id", "offset", "event_id", "occurred_at")
#: Large columns no reader filters on (a reader finds rows by stream and position, event id,
#: time): their min/max statistics cost a comparison of every value and skip nothing.
_UNFILTERED_COLUMNS = ("payload", "value", "chain")


def writer_properties() -> WriterProperties:
    """How the log's Parquet files are written (by every appender, so all files are alike).

    Snappy as delta-rs's default; no dictionary for the distinct columns and no statistics
    for the large unfiltered ones. Measured on 150,000-row batches of the decoded log: the
    write takes ~20% less CPU (1.9 against 2.4 s per 1M rows), the files are 1% smaller.
    Delta's own per-file statistics (the first 32 columns: stream, position, ...) are
    unchanged.
    """
    columns = {name: ColumnProperties(dictionary_enabled=False) for name in _DISTINCT_COLUMNS}
    unfiltered = ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")
    columns.update(dict.fromkeys(_UNFILTERED_COLUMNS, unfiltered))
    return WriterProperties(compression="SNAPPY", column_properties=columns)


#: The largest commit whose rows `DecodedLog.appended` keeps (a follower's batches are small;
#: a catch-up's large batches are read back from the files, not held in memory).
KEEP_APPENDED_ROWS = 20_000

#: The columns of `dead_letters`.
DEAD_LETTER_COLUMNS = (
    "source",
    '"partition"',
    '"offset"',
    "notification_id",
    "dead_letter AS error",
    "value",
    "seen_at",
)


#: The first line of a Rust panic's report ("thread 'tokio-rt-worker' (123) panicked at ...").
_PANIC = re.compile(rb"^thread '[^'\n]*' (?:\(\d+\) )?panicked at ", re.MULTILINE)
#: Held while descriptor 2 is redirected (`native_panics_hidden`).
_STDERR_TURNS = threading.RLock()
#: The line that ends a panic's report ("note: run with `RUST_BACKTRACE=1` ...").
_NOTE = re.compile(rb"^note: [^\n]*(?:\n|$)", re.MULTILINE)


@contextlib.contextmanager
def native_panics_hidden() -> Iterator[None]:
    """Keep delta-rs' panic reports off stderr while a write of the log runs and fails.

    A write that fails (a full disk) makes a background task of delta-rs panic too ("Already
    shut down", in object_store's buffered writer): Rust prints that report straight to file
    descriptor 2, lines before the write's own error, which the CLI tells in one line. So
    descriptor 2 goes to a pipe for the write; when the write raised, the panic reports are
    dropped (the report is printed before the write returns); anything else written there
    meanwhile is passed on afterwards, as it came.
    """
    # Descriptor 2 is the process's: writes of two threads take turns, so that one never
    # saves (and later puts back) the other's pipe.
    with _STDERR_TURNS:
        yield from _panics_hidden()


def _panics_hidden() -> Iterator[None]:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    saved = os.dup(2)
    reading, writing = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        while data := os.read(reading, 1 << 16):
            chunks.append(data)

    reader = threading.Thread(target=drain, name="native-stderr", daemon=True)
    reader.start()
    os.dup2(writing, 2)
    os.close(writing)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        os.dup2(saved, 2)  # the pipe's last writer closed: the reader sees its end
        os.close(saved)
        # Unless a process started meanwhile holds it as its stderr: not waited for then.
        reader.join(timeout=2.0)
        if not reader.is_alive():
            os.close(reading)
        text = b"".join(chunks)
        if failed:
            text = _without_panics(text)
        if text:
            with contextlib.suppress(OSError):
                os.write(2, text)


def _without_panics(text: bytes) -> bytes:
    """`text` without Rust panic reports: each from its "thread '...' panicked at" line (and
    the blank line Rust puts before it) to its closing "note: ..." line, or to the end."""
    while (found := _PANIC.search(text)) is not None:
        before = text[: found.start()]
        blank = before == b"\n" or before.endswith(b"\n\n")
        start = found.start() - 1 if blank else found.start()
        note = _NOTE.search(text, found.end())
        end = note.end() if note is not None else len(text)
        text = text[:start] + text[end:]
    return text


def log_slug(source: str) -> str:
    """A directory name for a source label (`ledger`, `kafka:crm.ledger.events`, a topic)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source)


def relation_name(source: str) -> str:
    """The name a source's log has on a DuckDB connection (see `register_log`)."""
    return "crm_log_" + re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_").lower()


#: Failures of a scan that say nothing about the log's files.
_NOT_THE_FILES = ("out of memory", "too many open files", "interrupt")
_MISSING_RELATION = re.compile(r"name (crm_log_\w+) does not exist")


def failed_reading_log(error: BaseException) -> bool:
    """Whether a DuckDB error is a log's relation failing to be read (a data file of the log
    missing or damaged), not a fault of the query, of the database or of the machine."""
    text = str(error)
    return "registered as 'crm_log_" in text and not any(cause in text.lower() for cause in _NOT_THE_FILES)


def missing_log(error: BaseException, sources: Iterable[str] | None = None) -> bool:
    """Whether a DuckDB error is a log's relation not being there: readers never create a log,
    and one moved away or not copied with the database is not registered. With `sources` (the
    database's sources), only their logs' relations count: a query that mistyped the name of
    one (`crm_log_ledgr`) is the query's fault."""
    found = _MISSING_RELATION.search(str(error))
    if found is None:
        return False
    return sources is None or found.group(1) in {relation_name(source) for source in sources}


def missing_log_advice(db: Path | None) -> str:
    """What to tell about a database whose decoded log is not there (`missing_log`)."""
    place = "the projection database" if db is None else f"the projection database {db}"
    return (
        f"the decoded log is not there beside {place} (moved, or not copied with it): put it back, "
        "or run `crm-ledger project` to decode the ledger into it again"
    )


@dataclass(frozen=True)
class Snapshot:
    """One committed version of the log and the stream positions it holds."""

    version: int
    positions: dict[str, Position]


#: How often a commit that lost the race to another process's commit is tried again.
COMMIT_ATTEMPTS = 50


class DecodedLog:
    """A source's decoded log (a Delta table at `path`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._latest: DeltaTable | None = None
        #: The positions this process last committed, at the log version its commit made:
        #: while the log is still at that version, they are its heads (their chain and message
        #: at hand, not read back from the Delta files: ~9 ms a follower's round at 1M events).
        self._committed: tuple[int, dict[str, Position]] | None = None
        #: The rows of this process's last commit, with the versions before and after it: a
        #: follower's index reads its new rows from here instead of finding the newest file
        #: by every file's statistics and reading it back (~10 ms a round at 1M events).
        self._appended: tuple[str, int, int, pa.Table] | None = None
        #: the dataset of a whole snapshot, by the table handle and version it was made from
        self._whole: tuple[DeltaTable, int, Any] | None = None
        unsafe = delta_unsafe_part(path)
        if unsafe is not None:
            raise ProjectionError(delta_unsafe_advice(f"decoded log {path}", unsafe))
        if not _created(path):
            path.mkdir(parents=True, exist_ok=True)
            # Several processes may race to create it; whoever loses finds it there.
            try:
                DeltaTable.create(str(path), LOG_SCHEMA, mode="ignore")
            except Exception:
                if not _created(path):
                    raise

    def table(self, version: int | None = None) -> DeltaTable:
        """The Delta table at `version` (the latest when None)."""
        if version is not None:
            if self._latest is not None and self._latest.version() == version:
                return self._latest  # already loaded: loading a version reads the whole Delta log again
            return DeltaTable(str(self.path), version=version)
        if self._latest is not None:
            try:
                self._latest.update_incremental()  # reads only the commits since the last look
                return self._latest
            except DeltaError:
                # The log was rebuilt beside this process (`replay --from-source`): its versions
                # start anew, below the one held here. Read it again from the start.
                self._latest = None
        self._latest = DeltaTable(str(self.path))
        return self._latest

    def version(self) -> int:
        return int(self.table().version())

    def positions(self, streams: Sequence[str], version: int | None = None) -> dict[str, Position]:
        """The last committed position per stream (from Delta's application transactions)."""
        table = self.table(version)
        committed = self._committed[1] if self._committed and self._committed[0] == table.version() else {}
        positions = {}
        for stream in streams:
            last = table.transaction_version(stream)
            if last is None:
                continue
            known = committed.get(stream)
            # The ledger's head needs its message at hand (a batch read from the ledger has it).
            if known is not None and known.offset == int(last) and (known.value or stream != LEDGER_STREAM):
                positions[stream] = known
            else:
                positions[stream] = self._head_at(table, stream, int(last))
        return positions

    @staticmethod
    def _head_at(table: DeltaTable, stream: str, position: int) -> Position:
        """The stream's position with the chain and message held there (the ledger's stream only:
        Kafka carries the chain in each record, and a partition's offsets name its messages)."""
        if stream != LEDGER_STREAM:
            return Position(stream, position)
        uris = _files_where(table, lambda f: _may_hold(f, stream, position, position))
        rows = ds.dataset(uris, schema=LOG_SCHEMA, format="parquet").to_table(
            columns=["chain", "value"],
            filter=(ds.field("stream") == stream) & (ds.field("position") == position),
        )
        if rows.num_rows == 0:
            # Every committed ledger position is a row of the same commit: its rows were taken out
            # of the log's commits, and reading on would chain the next events from nothing.
            raise LogMismatchError(
                f"the decoded log holds the ledger up to notification {position} by its commits, but "
                "no event there: its files were altered; rebuild it from the ledger: "
                "crm-ledger replay --from-source"
            )
        return Position(stream, position, str(rows.column(0)[0].as_py()), rows.column(1)[0].as_py())

    def append(
        self,
        table: pa.Table,
        positions: Sequence[Position],
        expected: Mapping[str, int | None] | None = None,
    ) -> int:
        """Commit rows with the new stream positions, atomically; returns the log version.

        Writes through the table handle kept between commits, brought up to date by reading
        only the commits since its last look: given a path, delta-rs loads the whole table
        state again for every commit (at 1M events 2-3x the time of the whole append).

        With `expected` (each stream's position in the log when its rows were read), the
        commit is made only while every stream is still there (`commit_checked`): two
        appenders of one source never both commit the same rows.
        """

        based_on: list[int] = []

        def write(snapshot: DeltaTable, retries: int | None = None) -> None:
            based_on.append(int(snapshot.version()))
            with native_panics_hidden():
                write_deltalake(
                    snapshot,
                    table,
                    mode="append",
                    writer_properties=writer_properties(),
                    commit_properties=CommitProperties(
                        app_transactions=[Transaction(p.stream, p.offset) for p in positions],
                        max_commit_retries=retries,
                    ),
                )

        if expected is None:
            write(self.table())
        else:
            self.commit_checked(positions, expected, functools.partial(write, retries=0))
        # The handle a commit went through holds the version it made (delta-rs updates it).
        version = self.version() if self._latest is None else int(self._latest.version())
        self._committed = (version, {p.stream: p for p in positions})
        kept = table.num_rows <= KEEP_APPENDED_ROWS and table.schema.equals(LOG_SCHEMA)
        if kept and based_on and self._latest is not None:
            self._appended = (str(self._latest.metadata().id), based_on[-1], version, table)
        else:
            self._appended = None
        return version

    def appended(self, table_id: str, since: int, version: int) -> pa.Table | None:
        """The rows committed between versions `since` and `version` of the Delta table
        `table_id`, when they are exactly this process's last commit (made on `since`, giving
        `version`); None otherwise."""
        if self._appended is None or version != since + 1:
            return None
        if self._appended[:3] != (table_id, since, version):
            return None
        return self._appended[3]

    def commit_checked(
        self,
        positions: Sequence[Position],
        expected: Mapping[str, int | None],
        commit: Callable[[DeltaTable], None],
    ) -> int:
        """Run `commit` against a snapshot in which every stream is at its `expected` position.

        `commit` must commit against the snapshot it is given with no automatic retry: a
        commit of another process in between makes it fail, and the check is made again on
        the newer snapshot. A stream another process moved on raises StaleBatchError.
        Returns how many attempts lost such a race before the commit was made.
        """
        for attempt in range(COMMIT_ATTEMPTS):
            snapshot = self.table()
            moved = [
                p.stream
                for p in positions
                if snapshot.transaction_version(p.stream) != expected.get(p.stream)
            ]
            if moved:
                raise StaleBatchError(
                    f"{', '.join(moved)} moved on in the decoded log since it was read: another process "
                    "appended the same source (nothing was written twice); run the same command again"
                )
            try:
                commit(snapshot)
            except CommitFailedError:
                continue  # another commit came first: the positions are checked again
            return attempt
        raise CrmLedgerError(f"the decoded log refused {COMMIT_ATTEMPTS} commits in a row")

    def dataset(self, version: int | None = None, after: Mapping[str, int] | None = None) -> Any:
        """A snapshot as an Arrow dataset (many readers, while appends go on).

        Built from the snapshot's file list: the log is neither partitioned nor written
        with deletion vectors, so its files are exactly its rows (and this is much
        cheaper than delta-rs's own dataset, which builds an expression per file).
        With `after` (the last position read per stream), the files that hold only rows of
        one of those streams at or before its position are left out, by the statistics
        Delta keeps per file: a reader that follows the log opens only the newer files.
        The rows past `after` are all still there; the caller filters them.
        """
        table = self.table(version)
        if "deletionVectors" in (table.protocol().writer_features or []):
            return table.to_pyarrow_dataset()
        if after is None:
            # A version's files never change: the dataset of the snapshot last asked for is
            # kept (a follower's round asks twice: registering the log, then updating).
            at = int(table.version())
            if self._whole is None or self._whole[0] is not table or self._whole[1] != at:
                self._whole = (table, at, ds.dataset(_data_files(table), schema=LOG_SCHEMA, format="parquet"))
            return self._whole[2]
        known = dict(after)
        return ds.dataset(
            _files_where(table, lambda f: not _read_before(f, known)), schema=LOG_SCHEMA, format="parquet"
        )

    def stream_ends(self, streams: Iterable[str], version: int | None = None) -> dict[str, int | None]:
        """Each stream's last committed position at `version` (its application transaction),
        without reading a row."""
        table = self.table(version)
        ends = {stream: table.transaction_version(stream) for stream in streams}
        return {stream: None if end is None else int(end) for stream, end in ends.items()}

    def snapshot(self, streams: Sequence[str]) -> Snapshot:
        version = self.version()
        return Snapshot(version, self.positions(streams, version))


def _created(path: Path) -> bool:
    """Whether the Delta table at `path` has its first commit. Its folder `_delta_log` alone is
    not enough: a creation that failed (a full disk) leaves it empty, and that error is then
    the one to tell, not "No files in log segment" from every later look at it."""
    commits = path / "_delta_log"
    # Any commit or checkpoint (the first commit's file goes once a checkpoint outlives it).
    return commits.is_dir() and any(entry.name.endswith((".json", ".parquet")) for entry in commits.iterdir())


def _data_files(table: DeltaTable) -> list[str]:
    """The snapshot's data files as paths Arrow opens: delta-rs gives a local table's files
    percent-encoded (a folder "my logs" as "my%20logs"), which Arrow looked for as they are."""
    return [uri if "://" in uri else unquote(uri) for uri in table.file_uris()]


def _files_where(table: DeltaTable, keep: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    """The snapshot's file URIs whose add action (path and column statistics) `keep` accepts."""
    uris = _data_files(table)
    by_name = {uri.rsplit("/", 1)[-1]: uri for uri in uris}
    kept = []
    actions = pa.table(table.get_add_actions(flatten=True))
    wanted = ["path", *(f"{m}.{c}" for m in ("min", "max") for c in ("stream", "position"))]
    for action in actions.select([c for c in wanted if c in actions.column_names]).to_pylist():
        uri = by_name.get(str(action["path"]).rsplit("/", 1)[-1])
        if uri is None:
            return uris  # a layout this reading does not know: every file
        if keep(action):
            kept.append(uri)
    return kept


def _may_hold(action: Mapping[str, Any], stream: str, low: int, high: int) -> bool:
    """Whether a file's statistics allow a row of `stream` with a position in [low, high]."""
    lo_s, hi_s = action.get("min.stream"), action.get("max.stream")
    lo_p, hi_p = action.get("min.position"), action.get("max.position")
    if lo_s is None or hi_s is None or lo_p is None or hi_p is None:
        return True
    return bool(lo_s <= stream <= hi_s and lo_p <= high and low <= hi_p)


def _read_before(action: Mapping[str, Any], after: Mapping[str, int]) -> bool:
    """Whether a file holds only rows of one stream at or before `after[stream]`.

    Only single-stream files are judged: a stream's rows are appended in position order,
    exactly once, so every row of it up to the last one read has been read. A file whose
    statistics span several streams may hold a stream not read yet: it is kept.
    """
    lo_s, hi_s, hi_p = action.get("min.stream"), action.get("max.stream"), action.get("max.position")
    if lo_s is None or hi_p is None or lo_s != hi_s or lo_s not in after:
        return False
    return bool(hi_p <= after[lo_s])


def register_log(
    connection: duckdb.DuckDBPyConnection, source: str, log: DecodedLog, version: int | None = None
) -> str:
    """Make a snapshot of the log readable as `relation_name(source)` on `connection`."""
    name = relation_name(source)
    # DuckDB refuses to register while a previous result is not fully fetched (a fetchone()).
    connection.complete()
    connection.register(name, log.dataset(version))
    return name


def register_logs(
    connection: duckdb.DuckDBPyConnection, root: Path, sources: Sequence[str]
) -> Mapping[str, DecodedLog]:
    """Register the latest snapshot of each source's log; returns the logs by source."""
    logs = {}
    for source in sources:
        path = root / log_slug(source)
        if not _created(path):
            # Readers never write: a log not made yet (or not copied with the database, or
            # whose making failed) is not created here; queries on it say the relation is missing.
            continue
        log = DecodedLog(path)
        register_log(connection, source, log)
        logs[source] = log
    return logs
