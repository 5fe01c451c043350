"""`audit reproduce`: rebuild a version's read models from its log and compare them.

What lets an auditor say "these scores follow from these events under this spec": the
version's mirrored log (whose bytes `audit verify` ties to the ledger and the topic) is
decoded again and projected by the ordinary projection code, under the version's own
spec and as-of moment, into a scratch DuckDB file beside the projection database; the
live database is only ever opened read-only. Every read-model table is then compared
with the live one in a canonical order (all non-float columns, then the floats): first
exactly, and where that fails row by row, floats equal when within a relative 1e-9 (the
order of a parallel floating-point sum can move the last bits). The first differing row
of each table is reported.

The two seams: `projections.mirror.defined_batches` reads the mirrored rows, and
`rebuild` feeds them through `projections.engine.Projector`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from audit.errors import ReproduceError
from crm_ledger.progress import Reporter
from projections.engine import Projector
from projections.mirror import defined_batches, open_mirror
from projections.models import MODEL_TABLES
from projections.sources import LEDGER_STREAM, Position, RawBatch, kafka_stream
from projections.store import ProjectionDB, VersionInfo, connect, promoted_of
from schemas.codec import AvroCodec

#: Floats are equal when |a - b| <= REL_TOLERANCE * max(1, |a|, |b|).
REL_TOLERANCE = 1e-9
_FLOAT_TYPES = ("DOUBLE", "FLOAT", "REAL", "DECIMAL")



@dataclass(frozen=True)
class TableResult:
    """One read model: row counts and, when they differ, the first differing row."""

    table: str
    live_rows: int
    rebuilt_rows: int
    difference: str | None = None
    within_tolerance: bool = False

    @property
    def ok(self) -> bool:
        return self.difference is None


@dataclass
class ReproduceReport:
    version: str
    name: str
    events: int = 0
    tables: list[TableResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)


class MirrorSource:
    """A log source over mirrored rows (Arrow batches): what `rebuild` projects."""

    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self.name = "mirror"
        self._batches = batches
        self.events = 0

    def batches(self, positions: Mapping[str, Position], *, follow: bool) -> Iterator[RawBatch]:
        del positions, follow  # a scratch build always starts empty and stops at the end
        for arrow in self._batches:
            batch = RawBatch()
            columns = {
                name: arrow.column(name).to_pylist()
                for name in ("value", "notification_id", "source", "partition", "offset", "chain")
            }
            batch.values = [bytes(v) for v in columns["value"]]
            batch.notification_ids = columns["notification_id"]
            batch.sources = columns["source"]
            batch.partitions = columns["partition"]
            batch.offsets = columns["offset"]
            batch.chains = columns["chain"]
            envelope = zip(
                batch.notification_ids,
                batch.sources,
                batch.partitions,
                batch.offsets,
                batch.chains,
                strict=True,
            )
            for nid, source, partition, offset, chain in envelope:
                if partition is None:
                    if nid is not None:
                        batch.positions[LEDGER_STREAM] = Position(LEDGER_STREAM, nid, chain)
                elif offset is not None:
                    stream = kafka_stream(source, partition)
                    known = batch.positions.get(stream)
                    if known is None or offset > known.offset:
                        batch.positions[stream] = Position(stream, offset)
            self.events += len(batch)
            yield batch

    def streams(self) -> list[str]:
        # A scratch log starts empty: no stream has a position to resume from.
        return []

    def lag(self, positions: Mapping[str, Position]) -> int:
        del positions
        return 0

    def close(self) -> None:
        return None


def rebuild(
    live: duckdb.DuckDBPyConnection,
    version: VersionInfo,
    scratch: Path,
    codec: AvroCodec,
    reporter: Reporter | None = None,
) -> int:
    """Rebuild `version`'s read models from its mirrored log into the file `scratch`.

    The version is created there with its own spec, source and as-of moment, so it gets
    the same id and schema name; returns how many events were projected.
    """
    as_of = version.as_of.replace(tzinfo=UTC) if version.as_of is not None else None
    spec = version.spec()
    with ProjectionDB(scratch) as db:
        rebuilt = db.ensure_version(spec, version.spec_text, version.source, as_of=as_of, name=version.name)
        if rebuilt.version != version.version:
            raise ReproduceError(
                f"version {version.version} does not match its own spec and settings (rebuilt as "
                f"{rebuilt.version}): its catalog row was changed"
            )
        # Through the view's definition, not the view stored in the live file (which could
        # have been narrowed along with the tables): see `defined_batches`.
        source = MirrorSource(defined_batches(live, version.source, as_of))
        Projector(db, rebuilt, source, codec).run(reporter=reporter)
        return source.events


def reproduce(
    path: Path, reference: str | None, codec: AvroCodec, reporter: Reporter | None = None
) -> ReproduceReport:
    """Rebuild one version (default: the promoted one) in a scratch file and compare every table."""
    live = connect(path, read_only=True, wait_s=600)
    try:
        version = _version(path, live, reference)
        open_mirror(live, path, [version.source])
        report = ReproduceReport(version.version, version.name)
        with tempfile.TemporaryDirectory(prefix="reproduce-", dir=path.parent) as folder:
            scratch = Path(folder) / f"reproduce-{version.version}.duckdb"
            report.events = rebuild(live, version, scratch, codec, reporter)
            live.execute(f"ATTACH '{scratch}' AS scratch (READ_ONLY)")
            try:
                for table in MODEL_TABLES:
                    report.tables.append(_compare(live, version.schema, table))
            finally:
                live.execute("DETACH scratch")
        return report
    finally:
        live.close()


def _version(path: Path, live: duckdb.DuckDBPyConnection, reference: str | None) -> VersionInfo:
    if reference is None:  # a blank one (a shell variable not set) is refused, not the promoted one
        reference = promoted_of(live)
    if reference is None:
        raise ReproduceError("no version is promoted: name the version to reproduce")
    db = _CatalogReader(path, live)
    version = db.find_version(reference)
    storage = db.storage_version(version)
    for each in {version.version: version, storage.version: storage}.values():
        if each.state != "ready":
            raise ReproduceError(
                f"version {each.version} holds events not yet in its read models (state {each.state!r}): "
                "let `crm-ledger project` or the replay finish first"
            )
    return version


class _CatalogReader(ProjectionDB):
    """The version catalog read through an existing read-only connection (no DDL, no writes)."""

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection) -> None:
        self.path = path
        self.wait_s = 0.0
        self._connection = connection


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in con.execute(f"DESCRIBE {relation}").fetchall()]


def _compare(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> TableResult:
    live, rebuilt = f"{schema}.{table}", f"scratch.{schema}.{table}"
    live_rows = int(con.execute(f"SELECT count(*) FROM {live}").fetchone()[0])  # type: ignore[index]
    rebuilt_rows = int(con.execute(f"SELECT count(*) FROM {rebuilt}").fetchone()[0])  # type: ignore[index]
    columns = _columns(con, live)
    if columns != _columns(con, rebuilt):
        return TableResult(table, live_rows, rebuilt_rows, "the columns differ")
    differing = con.execute(
        f"SELECT count(*) FROM ((SELECT * FROM {live} EXCEPT ALL SELECT * FROM {rebuilt}) "
        f"UNION ALL (SELECT * FROM {rebuilt} EXCEPT ALL SELECT * FROM {live}))"
    ).fetchone()
    if differing is not None and differing[0] == 0:
        return TableResult(table, live_rows, rebuilt_rows)
    floats = [i for i, (_, kind) in enumerate(columns) if kind.startswith(_FLOAT_TYPES)]
    order = ", ".join(
        f'"{name}" NULLS FIRST'
        for i, (name, _) in sorted(enumerate(columns), key=lambda item: (item[0] in floats, item[0]))
    )
    names = [name for name, _ in columns]
    first = _first_difference(
        con,
        f"SELECT * FROM {live} ORDER BY {order}",
        f"SELECT * FROM {rebuilt} ORDER BY {order}",
        names,
        set(floats),
    )
    return TableResult(table, live_rows, rebuilt_rows, first, within_tolerance=first is None)


def _first_difference(
    con: duckdb.DuckDBPyConnection, live_sql: str, rebuilt_sql: str, names: list[str], floats: set[int]
) -> str | None:
    """The first row (in canonical order) that differs beyond the float tolerance."""
    left, right = con.cursor(), con.cursor()
    try:
        left.execute(live_sql)
        right.execute(rebuilt_sql)
        row_number = 0
        while True:
            a_rows, b_rows = left.fetchmany(10_000), right.fetchmany(10_000)
            for a, b in zip(a_rows, b_rows, strict=False):
                row_number += 1
                columns = [names[i] for i in range(len(names)) if not _same(a[i], b[i], i in floats)]
                if columns:
                    return (
                        f"row {row_number} in canonical order differs in {', '.join(columns)}: "
                        f"live {_row(names, a)}, rebuilt {_row(names, b)}"
                    )
            if len(a_rows) != len(b_rows):
                longer, which = (a_rows, "live") if len(a_rows) > len(b_rows) else (b_rows, "rebuilt")
                extra = longer[min(len(a_rows), len(b_rows))]
                return (
                    f"row {row_number + 1} in canonical order is only in the {which} table: "
                    f"{_row(names, extra)}"
                )
            if not a_rows:
                return None
    finally:
        left.close()
        right.close()


def _same(a: Any, b: Any, is_float: bool) -> bool:
    if bool(a == b):
        return True
    if not is_float or a is None or b is None:
        return False
    x, y = float(a), float(b)
    if math.isnan(x) and math.isnan(y):
        return True
    return abs(x - y) <= REL_TOLERANCE * max(1.0, abs(x), abs(y))


def _row(names: list[str], row: tuple[Any, ...]) -> str:
    shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, row, strict=True))
    return "(" + (shown if len(shown) <= 400 else shown[:397] + "...") + ")"
