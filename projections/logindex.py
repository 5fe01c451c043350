"""The log index: one compact DuckDB table per source, beside the versions.

An incremental update must find every event of the cases, customers, contracts and field
visits that the new events touch. Those rows are spread over the whole log (a customer's
events span every file), so neither Delta file statistics nor row-group statistics skip
anything: finding them in the Delta table reads the key columns of every file. The index
holds the typed columns the read models read (not `value` or `chain`, and the JSON payload
only for the few event types whose fields are read from it: contracts, field visits,
installed products and team goals), with `contract_id` and `visit_id` taken out of the
payload, so that DuckDB finds a key's rows with a hash join over its own columns.

The rows of those payload event types (about a tenth of the log) are also kept in a table
of their own (`payload_table`): the models that read a payload look their events up there,
so a lookup scans and decompresses a tenth of the rows (the touched contracts' or visits'
rows lie in every row group of the index, and fetching them decompresses the whole payload
column: ~25-40 ms a lookup at 1M events).

It is derived from the log and rebuildable: one per source (every version of the source
reads it), synced to the log version an update reads and committed just before that
update's own transaction (DuckDB reads rows a transaction has appended far more slowly
than committed ones); it may stand ahead of a version's tables (an update that failed after
the sync), which find their new events by their own positions, never the index's. A log
rebuilt from its source (another Delta table id) or older than the index is indexed anew.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pds

from projections.log import EVENT_COLUMNS, DecodedLog

#: The state of each source's index: the Delta table and the log version it reflects.
STATE = "main.crm_log_index"
#: Event types whose payload the incremental service and goal models read.
PAYLOAD_TYPES = (
    "ContractStarted",
    "ContractRenewed",
    "ContractEnded",
    "FieldVisitScheduled",
    "FieldVisitCompleted",
    "FieldVisitCancelled",
    "ProductInstalled",
    "ProductRemoved",
    "TeamGoalSet",
    "TeamGoalRevised",
    "TeamGoalClosed",
)
#: Columns of the log kept in the index as they are.
INDEX_COLUMNS = (
    "stream",
    "position",
    "dead_letter",
    *(c for c in EVENT_COLUMNS if c not in {"payload", "value", "chain"}),
)
#: Columns the index adds: the kept payloads and the keys read from them.
DERIVED_COLUMNS = ("payload", "contract_id", "visit_id")


def _quoted(column: str) -> str:
    return f'"{column}"'


def index_table(source: str) -> str:
    """The name of a source's index table."""
    return "main.crm_index_" + re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_").lower()


def payload_table(source: str) -> str:
    """The name of the table of a source's payload events (the index's rows of PAYLOAD_TYPES)."""
    return index_table(source) + "_payloads"


def visible_sql(as_of: datetime | None) -> str:
    """The condition of the rows a version reads (not dead letters; up to its as-of moment)."""
    where = "dead_letter IS NULL"
    if as_of is not None:
        where += f" AND occurred_at <= {timestamp_sql(as_of)}"
    return where


def timestamp_sql(moment: datetime | None) -> str:
    """A TIMESTAMP literal (UTC, naive as in the log), NULL for None."""
    if moment is None:
        return "NULL::TIMESTAMP"
    return f"TIMESTAMP '{moment.replace(tzinfo=None).isoformat(sep=' ')}'"


#: The rows whose payload is kept (those of payload_table).
_KEPT = f"dead_letter IS NULL AND event_type IN ({', '.join(repr(t) for t in PAYLOAD_TYPES)})"


def _select_from(relation: str) -> str:
    return (
        f"SELECT {', '.join(_quoted(c) for c in INDEX_COLUMNS)}, "
        f"CASE WHEN {_KEPT} THEN payload::JSON END AS payload, "
        "CASE WHEN dead_letter IS NULL AND event_type LIKE 'Contract%' "
        "THEN payload::JSON ->> 'contract_id' END AS contract_id, "
        "CASE WHEN dead_letter IS NULL AND event_type LIKE 'FieldVisit%' "
        "THEN payload::JSON ->> 'visit_id' END AS visit_id "
        f"FROM {relation}"
    )


class LogIndex:
    """A source's index on one connection (the projection database's writer)."""

    def __init__(
        self, connect: Callable[[], duckdb.DuckDBPyConnection], source: str, log: DecodedLog
    ) -> None:
        #: the database's current connection (a follower lets go of it between refreshes)
        self.connect = connect
        self.source = source
        self.log = log
        self.table = index_table(source)
        self.payloads = payload_table(source)
        #: (Delta table id, log version, last position per stream) of the index as last synced
        #: here: finding them again scans the whole index (~5-10 ms at 1M events), three
        #: times an update. Trusted only while the index's state row says the same version
        #: (an update rolled back leaves the row, and the index, as they were).
        self._known: tuple[str, int, dict[str, int]] | None = None

    def sync(self, snapshot: int, dataset: Any, tables: set[str]) -> None:
        """Bring the index to `snapshot` (`dataset` is that snapshot), inside the caller's transaction.

        `tables` names the tables of schema `main` (the caller looks them up before its
        transactions: projections.catalog.existing_tables).

        Only the rows after the index's last position per stream are read from the log:
        file statistics skip the files that hold none of them. When those rows are exactly
        this process's last commit (a follower's round), they are taken from it instead.
        """
        run = self.connect().execute
        run(
            f"CREATE TABLE IF NOT EXISTS {STATE} "
            "(source VARCHAR PRIMARY KEY, table_id VARCHAR, log_version BIGINT)"
        )
        row = run(f"SELECT table_id, log_version FROM {STATE} WHERE source = ?", [self.source]).fetchone()
        # The table handle at `snapshot` (the one the caller just read: no look at newer commits).
        table_id = str(self.log.table(snapshot).metadata().id)
        exists = {self.table.removeprefix("main."), self.payloads.removeprefix("main.")} <= tables
        if row is not None and exists and row[0] == table_id and int(row[1]) == snapshot:
            return
        if row is None or not exists or row[0] != table_id or int(row[1]) > snapshot:
            rows = dataset.to_table(columns=[*INDEX_COLUMNS, "payload"])
            self._insert(rows, replace=True)
            self._known = None
        else:
            known = self._cached(table_id, int(row[1])) or self._scan()
            columns = [*INDEX_COLUMNS, "payload"]
            appended = self.log.appended(table_id, int(row[1]), snapshot)
            if appended is not None:
                # Committed on the version the index holds: every row of it is past the index
                # (each stream's positions were checked at the commit), so none is filtered.
                rows = appended.select(columns)
            else:
                wanted = ~pds.field("stream").isin(pa.array(list(known), pa.string()))
                for stream, position in known.items():
                    wanted = wanted | ((pds.field("stream") == stream) & (pds.field("position") > position))
                # Only the files that may hold rows past the index (file statistics), then the rows.
                newer = self.log.dataset(snapshot, after=known)
                rows = newer.to_table(columns=columns, filter=wanted)
            if rows.num_rows:
                self._insert(rows, replace=False)
                last = rows.group_by("stream").aggregate([("position", "max")]).to_pylist()
                known.update({str(r["stream"]): int(r["position_max"]) for r in last})
            self._known = (table_id, snapshot, known)
        run(f"DELETE FROM {STATE} WHERE source = ?", [self.source])
        run(f"INSERT INTO {STATE} VALUES (?, ?, ?)", [self.source, table_id, snapshot])

    def _cached(self, table_id: str, log_version: int) -> dict[str, int] | None:
        """The positions kept at the last sync, if the index still stands where that left it."""
        if self._known is None or self._known[:2] != (table_id, log_version):
            return None
        return dict(self._known[2])

    def _scan(self) -> dict[str, int]:
        rows = self.connect().execute(f"SELECT stream, max(position) FROM {self.table} GROUP BY stream")
        return {str(stream): int(last) for stream, last in rows.fetchall()}

    def _insert(self, rows: Any, *, replace: bool) -> None:
        con = self.connect()
        con.complete()
        con.register("crm_index_rows", rows)
        payloads = f"SELECT * FROM ({_select_from('crm_index_rows')}) WHERE {_KEPT}"
        try:
            if replace:
                con.execute(f"CREATE OR REPLACE TABLE {self.table} AS {_select_from('crm_index_rows')}")
                con.execute(f"CREATE OR REPLACE TABLE {self.payloads} AS {payloads}")
            else:
                con.execute(f"INSERT INTO {self.table} {_select_from('crm_index_rows')}")
                con.execute(f"INSERT INTO {self.payloads} {payloads}")
        finally:
            con.unregister("crm_index_rows")

    def positions(self) -> dict[str, int]:
        """The last position per stream the index holds."""
        row = (
            self.connect()
            .execute(f"SELECT table_id, log_version FROM {STATE} WHERE source = ?", [self.source])
            .fetchone()
        )
        cached = None if row is None else self._cached(str(row[0]), int(row[1]))
        return self._scan() if cached is None else cached
