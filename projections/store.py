"""The projection database: versions side by side, one schema each, stable views on top.

Layout of the DuckDB file:
- `main.crm_versions`: one row per version (name, spec hash, as-of, source, state).
- `main.crm_promoted`: which version the stable views point at.
- `v_<hash>` schemas: a version's derived tables (the read models and their intermediate
  tables) and `tracking` (the log version and stream positions they reflect). Its
  `events` and `dead_letters` are views over the shared decoded log of its source
  (projections.log), filtered by `occurred_at` for an as-of version: no copy of the log.
- stable views in `main` (`reward_score`, `kpi_*`, `customer_profile`, `ledger_events`,
  ...) select from the promoted version and are switched in one transaction.

The decoded logs live beside the file (`<stem>.log/<source>/`, Delta tables); every
connection this module opens registers them, so the views over them resolve.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from crm_ledger.settings import log_root
from projections.errors import (
    AmbiguousVersionError,
    DatabaseBusyError,
    ProjectionError,
    UnknownVersionError,
)
from projections.log import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    DecodedLog,
    log_slug,
    register_log,
    relation_name,
)
from projections.models import MODEL_TABLES, SCORE_TABLES, SPEC_INDEPENDENT_TABLES, STABLE_VIEWS
from projections.spec import MetricSpec, parse_spec
from projections.tracking import DuckDBTrackingRecorder
from projections.transaction import transaction

#: The ledger facts of a reward period that name a version (`version`, or `new_version` of an
#: adjustment): what a statement, and the audit of it, points at.
REWARD_FACTS = ("RewardPeriodClosed", "RewardStatementIssued", "RewardAdjustmentIssued")
#: The tracking stream that holds the log version a version's tables reflect.
LOG_STREAM = "@log"
#: What a version built from another one reads from it instead of holding its own: a
#: weights-only version shares everything but the scores; a version with other KPI
#: definitions shares the tables that do not depend on the spec at all.
SHARED_WITH_DERIVED = (
    "events",
    "tracking",
    "dead_letters",
    *(t for t in MODEL_TABLES if t not in SCORE_TABLES),
)
SHARED_SPEC_INDEPENDENT = ("events", "tracking", "dead_letters", *SPEC_INDEPENDENT_TABLES)


def _quoted(column: str) -> str:
    return f'"{column}"' if column in {"partition", "offset"} else column


def events_view_sql(schema: str, source: str, as_of: datetime | None) -> str:
    """A version's `events`: the decoded events of its source's log (up to `as_of`)."""
    return f"CREATE OR REPLACE VIEW {schema}.events AS {events_select_sql(source, as_of)}"


def events_select_sql(source: str, as_of: datetime | None) -> str:
    """The query behind a version's `events` view (`events_view_sql`)."""
    columns = ", ".join(
        "payload::JSON AS payload" if c == "payload" else _quoted(c)
        for c in ("stream", "position", *EVENT_COLUMNS)
    )
    where = "dead_letter IS NULL"
    if as_of is not None:
        where += f" AND occurred_at <= TIMESTAMP '{as_of.replace(tzinfo=None).isoformat(sep=' ')}'"
    return f"SELECT {columns} FROM {relation_name(source)} WHERE {where}"


def mirror_view_sql(schema: str, source: str) -> str:
    """The auditors' `ledger_events`: every decoded event of the source's log."""
    return f"CREATE OR REPLACE VIEW {schema}.ledger_events AS {mirror_select_sql(source)}"


def mirror_select_sql(source: str) -> str:
    """The query behind `ledger_events` (`mirror_view_sql`)."""
    columns = ", ".join("payload::JSON AS payload" if c == "payload" else _quoted(c) for c in EVENT_COLUMNS)
    return f"SELECT {columns} FROM {relation_name(source)} WHERE dead_letter IS NULL"


def dead_letters_view_sql(schema: str, source: str) -> str:
    return (
        f"CREATE OR REPLACE VIEW {schema}.dead_letters AS SELECT {', '.join(DEAD_LETTER_COLUMNS)} "
        f"FROM {relation_name(source)} WHERE dead_letter IS NOT NULL"
    )


CATALOG_DDL = [
    """CREATE TABLE IF NOT EXISTS main.crm_versions (
        version VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        spec_hash VARCHAR NOT NULL,
        kpi_hash VARCHAR NOT NULL,
        spec_json VARCHAR NOT NULL,
        spec_text VARCHAR NOT NULL,
        as_of TIMESTAMP,
        source VARCHAR NOT NULL,
        state VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        built_at TIMESTAMP,
        events BIGINT NOT NULL DEFAULT 0,
        position VARCHAR,
        built_from VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS main.crm_promoted (
        id INTEGER PRIMARY KEY, version VARCHAR NOT NULL, promoted_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS main.crm_promotions (
        version VARCHAR NOT NULL, promoted_at TIMESTAMP NOT NULL)""",
]


@dataclass(frozen=True)
class VersionInfo:
    """One row of the version catalog."""

    version: str
    name: str
    spec_hash: str
    kpi_hash: str
    spec_text: str
    as_of: datetime | None
    source: str
    state: str
    created_at: datetime
    built_at: datetime | None
    events: int
    position: str | None
    built_from: str | None
    promoted: bool = False

    @property
    def schema(self) -> str:
        return self.version

    def spec(self) -> MetricSpec:
        return parse_spec(self.spec_text, f"<spec of {self.version}>")


def version_id(spec: MetricSpec, as_of: datetime | None, source: str = "ledger") -> str:
    """`v_` + 12 hex digits of the spec's content hash, the as-of moment and the source.

    The source is part of the identity: a Kafka-fed and a ledger-fed build of the same
    spec track different positions and must never share a schema.
    """
    basis = spec.content_hash + (f"@{as_of.isoformat()}" if as_of else "")
    if source != "ledger":
        basis += f"<{source}"
    return "v_" + hashlib.sha256(basis.encode()).hexdigest()[:12]


def is_lock_error(error: Exception) -> bool:
    text = str(error)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


#: Where a DuckDB database file says what it is.
_DUCKDB_MAGIC = (8, b"DUCK")
#: The database files whose header this process has looked at (`_refuse_other_file`).
_LOOKED: set[str] = set()
_LOOKING = threading.Lock()


def _refuse_other_file(path: Path) -> None:
    """Refuse a file that is not a DuckDB database (a history, a Parquet export named by
    mistake) in words that say so: DuckDB refuses it too, but as "not a valid DuckDB database
    file", which reads as a damaged database to move away and rebuild. Checked once per file
    and process (below); a file replaced later is still refused by DuckDB itself."""
    if path.is_dir():
        # DuckDB's own words ("Could not read ... Is a directory") read as a damaged file, whose
        # advice, to move it away, would move a folder such as the ledger's own.
        raise ProjectionError(
            f"projection database {path} is a folder, not a DuckDB file: name the database file "
            "in it with --db or CRM_LEDGER_DB"
        )
    # Once per file and process, before its first connection: closing a file drops every
    # POSIX lock the process holds on it, so a look while a connection of this process is
    # open (the web pages' requests) would let another process write under that connection.
    key = str(path.resolve())
    with _LOOKING:
        if key in _LOOKED:
            return
        refuse_other_header(path)
        _LOOKED.add(key)


def refuse_other_header(path: Path) -> None:
    """Refuse a file whose header is not a DuckDB database's, each time it is called: only
    while this process holds no connection to it (a look drops the process's locks on it)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_DUCKDB_MAGIC[0] + len(_DUCKDB_MAGIC[1]))
    except OSError:
        # Missing: made by DuckDB; unreadable: DuckDB's own error names the permission problem.
        head = b""
    if head and head[_DUCKDB_MAGIC[0] :] != _DUCKDB_MAGIC[1]:
        raise ProjectionError(
            f"projection database {path} is not a DuckDB database file: name the right one with "
            "--db or CRM_LEDGER_DB (or move this one away and run `crm-ledger project` to rebuild it)"
        )


def _refuse_missing(path: Path) -> None:
    """Refuse a projection database that does not exist (a mistyped path is not made anew)."""
    if not path.exists():
        raise ProjectionError(f"{path}: no projection database yet (run `crm-ledger project`)")


def connect(path: Path, *, read_only: bool = False, wait_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Open the projection database, waiting up to `wait_s` while another process writes it.

    DuckDB allows one writing process per file. A following projector releases the file
    whenever it is idle, so short commands (promote, query, period close) get their turn.
    """
    if read_only:
        _refuse_missing(path)
    _refuse_other_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if not is_lock_error(error):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusyError(
                    f"{path} stayed locked by another process for {wait_s:.0f}s (a busy "
                    "`project --follow` or `replay`?): DuckDB allows one writer per file"
                ) from error
            time.sleep(0.1)


#: What `version_id` makes: the only version ids (schema names, written into SQL) a catalog may hold.
_VERSION_ID = re.compile(r"v_[0-9a-f]{12}")


def checked_id(value: object) -> str:
    """A version id read from the catalog, refused unless `version_id` could have made it: one
    planted there (`x; COPY ... TO '...'`) would run as SQL where it names the version's schema."""
    if not isinstance(value, str) or not _VERSION_ID.fullmatch(value):
        raise ProjectionError(
            f"the projection database's catalog names a version {value!r}, which is no version id "
            "(v_ and 12 hex digits): it was altered; move it away and run `crm-ledger project` to rebuild it"
        )
    return value


def promoted_of(connection: duckdb.DuckDBPyConnection) -> str | None:
    """The promoted version's id, or None: none promoted yet, or a DuckDB file without the
    catalog at all (another program's, or an empty one), which promotes nothing either."""
    try:
        row = connection.execute("SELECT version FROM main.crm_promoted WHERE id = 1").fetchone()
    except duckdb.CatalogException:
        return None
    return None if row is None else checked_id(row[0])


def versions_of(connection: duckdb.DuckDBPyConnection) -> list[VersionInfo]:
    """Every version in the database on `connection` (none in a database without a catalog)."""
    promoted = promoted_of(connection)
    try:
        rows = connection.execute(
            "SELECT version, name, spec_hash, kpi_hash, spec_text, as_of, source, state, created_at, "
            "built_at, events, position, built_from FROM main.crm_versions ORDER BY created_at, version"
        ).fetchall()
    except duckdb.CatalogException:
        return []
    for r in rows:
        checked_id(r[0])
        if r[-1] is not None:
            checked_id(r[-1])
    names = [f.name for f in fields(VersionInfo) if f.name != "promoted"]
    return [VersionInfo(**dict(zip(names, r, strict=True)), promoted=r[0] == promoted) for r in rows]


def require_built(version: VersionInfo) -> None:
    """Refuse a version whose first build has not finished (its read models are not there yet)."""
    if version.built_at is None:
        raise ProjectionError(f"version {version.version} is still building: finish its replay first")


#: How much of a version reference an error message quotes: a reference is anything a user or a
#: page address gives (a web page echoed a megabyte `?version=` whole).
MAX_QUOTED_REFERENCE = 80


def quoted_reference(reference: str) -> str:
    """`reference` quoted for an error message, cut to `MAX_QUOTED_REFERENCE` characters."""
    if len(reference) <= MAX_QUOTED_REFERENCE:
        return repr(reference)
    return repr(reference[:MAX_QUOTED_REFERENCE] + "…")


def find_version(versions: list[VersionInfo], reference: str) -> VersionInfo:
    """A version of `versions` by id, unique id prefix, or name (the only one of that name)."""
    quoted = quoted_reference(reference)
    if not reference.strip().removeprefix("v_"):
        # An empty prefix matches every version (a shell variable that was not set).
        raise AmbiguousVersionError("no version named: give a version id, id prefix or name")
    exact = [v for v in versions if v.version in {reference, f"v_{reference}"}]
    if exact:
        return exact[0]
    by_prefix = [v for v in versions if v.version.removeprefix("v_").startswith(reference.removeprefix("v_"))]
    if len(by_prefix) == 1:
        return by_prefix[0]
    by_name = [v for v in versions if v.name == reference]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        raise AmbiguousVersionError(
            f"version name {quoted} is ambiguous ({', '.join(v.version for v in by_name)}): "
            "use the version id, or give replays distinct --name values"
        )
    if by_prefix:
        raise AmbiguousVersionError(
            f"version id prefix {quoted} is ambiguous ({', '.join(v.version for v in by_prefix)}): "
            "give more of the id"
        )
    known = ", ".join(f"{v.version} ({v.name})" for v in versions) or "none"
    raise UnknownVersionError(f"unknown version {quoted}; known versions: {known}")


class ProjectionDB:
    """A writer's handle on the projection database."""

    def __init__(self, path: Path, wait_s: float = 30.0, *, create: bool = True) -> None:
        """With `create` False (work on versions that must exist: promote, drop, a period's
        close), a database that does not exist is refused, not made anew at a mistyped path."""
        if not create:
            _refuse_missing(path)
        self.path = path
        self.wait_s = wait_s
        self._logs: dict[str, DecodedLog] = {}
        self._connection: duckdb.DuckDBPyConnection | None = connect(path, wait_s=wait_s)
        for statement in CATALOG_DDL:
            self._connection.execute(statement)
        self._register_logs(self._connection)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._connection is None:
            self._connection = connect(self.path, wait_s=max(self.wait_s, 3600.0))
            self._register_logs(self._connection)
        return self._connection

    def open_connection(self) -> duckdb.DuckDBPyConnection | None:
        """The connection if the file is open now, else None (never opens it: another thread
        may ask, to interrupt what runs on it)."""
        return self._connection

    def log(self, source: str) -> DecodedLog:
        """The decoded log of a source (created empty when new)."""
        if source not in self._logs:
            self._logs[source] = DecodedLog(log_root(self.path) / log_slug(source))
        return self._logs[source]

    def _register_logs(self, connection: duckdb.DuckDBPyConnection) -> None:
        for (source,) in connection.execute("SELECT DISTINCT source FROM main.crm_versions").fetchall():
            register_log(connection, source, self.log(source))

    def refresh_logs(self) -> None:
        """See the latest snapshot of every log on this connection (registration is a snapshot)."""
        self._register_logs(self.connection)

    def release(self) -> None:
        """Let go of the file (and its lock) until the next use: idle followers do this."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        self.release()

    def __enter__(self) -> ProjectionDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions -----------------------------------------------------------------------
    def versions(self) -> list[VersionInfo]:
        return versions_of(self.connection)

    def find_version(self, reference: str) -> VersionInfo:
        """A version by id, unique id prefix, or name (see `find_version`)."""
        return find_version(self.versions(), reference)

    def promoted_version(self) -> str | None:
        return promoted_of(self.connection)

    def ensure_version(
        self,
        spec: MetricSpec,
        spec_text: str,
        source: str,
        *,
        as_of: datetime | None = None,
        name: str | None = None,
        built_from: str | None = None,
    ) -> VersionInfo:
        """The version for this spec (and as-of), created empty when new."""
        version = version_id(spec, as_of, source)
        exists = self.connection.execute(
            "SELECT 1 FROM main.crm_versions WHERE version = ?", [version]
        ).fetchone()
        if exists is None:
            register_log(self.connection, source, self.log(source))
            with transaction(self.connection):
                self.connection.execute(f"CREATE SCHEMA IF NOT EXISTS {version}")
                if built_from is None:
                    self.connection.execute(events_view_sql(version, source, as_of))
                    self.connection.execute(dead_letters_view_sql(version, source))
                    DuckDBTrackingRecorder(self.connection, version)
                else:
                    base = self.find_version(built_from)
                    same_kpis = base.kpi_hash == spec.kpi_hash
                    shared = SHARED_WITH_DERIVED if same_kpis else SHARED_SPEC_INDEPENDENT
                    for table in shared:
                        self.connection.execute(
                            f"CREATE VIEW {version}.{table} AS SELECT * FROM {built_from}.{table}"
                        )
                self.connection.execute(
                    "INSERT INTO main.crm_versions (version, name, spec_hash, kpi_hash, spec_json, "
                    "spec_text, as_of, source, state, created_at, built_from) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'building', ?, ?)",
                    [
                        version,
                        name or spec.name,
                        spec.content_hash,
                        spec.kpi_hash,
                        spec.to_toml_json(),
                        spec_text,
                        as_of.replace(tzinfo=None) if as_of else None,
                        source,
                        _now(),
                        built_from,
                    ],
                )
        return self.find_version(version)

    def tracking(self, version: VersionInfo) -> DuckDBTrackingRecorder:
        return DuckDBTrackingRecorder(self.connection, version.schema)

    def mark_built(self, version: VersionInfo, log_version: int, events: int | None = None) -> None:
        """Record that the version's read models are current (inside the caller's transaction)."""
        if events is None:
            row = self.connection.execute(f"SELECT count(*) FROM {version.schema}.events").fetchone()
            events = int(row[0]) if row else 0
        positions = self.tracking(self.storage_version(version)).positions()
        position = json.dumps(
            {
                "log_version": log_version,
                **{k: p.offset for k, p in sorted(positions.items()) if k != LOG_STREAM},
            }
        )
        self.connection.execute(
            "UPDATE main.crm_versions SET state = 'ready', built_at = ?, events = ?, position = ? "
            "WHERE version = ?",
            [_now(), events, position, version.version],
        )

    def storage_version(self, version: VersionInfo) -> VersionInfo:
        """The version whose spec-independent tables (and tracking) a derived version shares."""
        while version.built_from:
            version = self.find_version(version.built_from)
        return version

    def chain(self, version: VersionInfo) -> list[VersionInfo]:
        """The version and those it is built from, the storage version first."""
        chain = [version]
        while chain[-1].built_from:
            chain.append(self.find_version(chain[-1].built_from or ""))
        return chain[::-1]

    def built_log_version(self, version: VersionInfo) -> int | None:
        """The log version a version's own tables were last brought to (None: never built)."""
        row = self.connection.execute(
            "SELECT position, state FROM main.crm_versions WHERE version = ?", [version.version]
        ).fetchone()
        if row is None or row[0] is None:
            return None
        value = json.loads(row[0]).get("log_version")
        return None if value is None else int(value)

    def promote(self, version: VersionInfo) -> None:
        """Point every stable view at `version`, in one transaction."""
        require_built(version)
        if version.as_of is not None:
            raise ProjectionError(
                f"version {version.version} is frozen as of {version.as_of:%Y-%m-%d %H:%M:%S}: "
                "it is for comparison (diff), not for promotion"
            )
        con = self.connection
        with transaction(con):
            for view in STABLE_VIEWS:
                if view == "ledger_events":
                    con.execute(mirror_view_sql("main", version.source))
                elif view == "dead_letters":
                    con.execute(dead_letters_view_sql("main", version.source))
                else:
                    con.execute(
                        f"CREATE OR REPLACE VIEW main.{view} AS SELECT * FROM {version.schema}.{view}"
                    )
            for view, sql in extra_views(version.schema).items():
                con.execute(f"CREATE OR REPLACE VIEW main.{view} AS {sql}")
            con.execute(
                "INSERT OR REPLACE INTO main.crm_promoted VALUES (1, ?, ?)",
                [version.version, _now()],
            )
            con.execute("INSERT INTO main.crm_promotions VALUES (?, ?)", [version.version, _now()])

    def reward_periods_naming(self, version: VersionInfo) -> set[str]:
        """The reward periods whose close, statements or adjustments name `version`, as the
        decoded logs hold them."""
        periods: set[str] = set()
        for source in sorted({v.source for v in self.versions()}):
            periods.update(
                str(row[0])
                for row in self.connection.execute(
                    f"SELECT DISTINCT period FROM {relation_name(source)} WHERE dead_letter IS NULL "
                    f"AND event_type IN ({', '.join(repr(t) for t in REWARD_FACTS)}) "
                    "AND ? IN (payload::JSON ->> 'version', payload::JSON ->> 'new_version')",
                    [version.version],
                ).fetchall()
            )
        return periods

    def logged_position(self) -> int:
        """The highest ledger notification id the decoded logs hold (0 when they hold none)."""
        highest = 0
        for source in sorted({v.source for v in self.versions()}):
            relation = relation_name(source)
            row = self.connection.execute(f"SELECT max(notification_id) FROM {relation}").fetchone()
            highest = max(highest, int(row[0]) if row and row[0] is not None else 0)
        return highest

    def drop(self, version: VersionInfo, closed_periods: Iterable[str] = ()) -> None:
        """Remove a version's schema and catalog row: never the promoted one, nor one that a
        reward period's statements name (those in the decoded logs, and `closed_periods`
        the caller found beyond them), for those would then point at nothing."""
        if version.version == self.promoted_version():
            raise ProjectionError(
                f"version {version.version} is promoted: promote another version before dropping it"
            )
        named = sorted(self.reward_periods_naming(version) | set(closed_periods))
        if named:
            raise ProjectionError(
                f"version {version.version} is named by the statements of closed reward period(s) "
                f"{', '.join(named)}: it is kept for as long as they point at it"
            )
        dependants = [v.version for v in self.versions() if v.built_from == version.version]
        if dependants:
            raise ProjectionError(
                f"version {version.version} holds tables that {', '.join(dependants)} share: drop those first"
            )
        con = self.connection
        with transaction(con):
            con.execute(f"DROP SCHEMA IF EXISTS {version.schema} CASCADE")
            con.execute("DELETE FROM main.crm_versions WHERE version = ?", [version.version])


def extra_views(schema: str) -> dict[str, str]:
    """Stable views added by later features; each maps to SQL over the version schema."""
    del schema
    return {}


def _now() -> datetime:
    return datetime.now(tz=UTC).replace(tzinfo=None)


def rows_as_dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
