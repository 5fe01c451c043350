"""Read-only access for auditors and downstream readers: `query`, `explain`, `export`, `versions`.

Connections are opened with DuckDB's `read_only` flag and with external access switched
off, so neither SQL nor ATTACH nor COPY can change the database or write files; this is
enforced by DuckDB, not by inspecting the SQL text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crm_ledger.errors import CrmLedgerError
from crm_ledger.outputs import replaced_whole
from crm_ledger.settings import log_root
from projections.errors import ProjectionError, QueryRefusedError, QueryStoppedError
from projections.log import DecodedLog, failed_reading_log, log_slug, missing_log, register_logs
from projections.models import STABLE_VIEWS
from projections.store import VersionInfo, connect, versions_of

T = TypeVar("T")
DEFAULT_QUERY_TIMEOUT_S = 300.0


def within(connection: duckdb.DuckDBPyConnection, work: Callable[[], T], timeout_s: float) -> T:
    """Run `work` (which uses `connection`) with a time limit; Ctrl-C interrupts it too.

    DuckDB runs a query without returning to Python, so the work runs on a thread and the
    main thread, which receives Ctrl-C, interrupts the connection when time is up.
    """
    outcome: dict[str, object] = {}
    # Its own flag, not the thread's: a join that Ctrl-C interrupts can leave the thread
    # marked as stopped while it still runs (CPython 3.11).
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=target, name="query", daemon=True).start()
    try:
        done.wait(timeout_s)
    except KeyboardInterrupt:
        _stop(connection, done)
        raise
    if not done.is_set():
        _stop(connection, done)
        raise QueryStoppedError(f"query stopped after {timeout_s:g} s (raise it with --timeout)")
    error = outcome.get("error")
    if isinstance(error, duckdb.Error) and not (failed_reading_log(error) or _missing_log(connection, error)):
        raise QueryRefusedError(f"query failed: {str(error).splitlines()[0]}") from error
    if isinstance(error, BaseException):
        raise error
    return outcome["value"]  # type: ignore[return-value]


def _stop(connection: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    """Interrupt the connection until the work using it has returned (`done`).

    An interrupt reaches only a statement DuckDB is running: the thread may be between two
    (fetching rows, building the table), so it is repeated. Closing the connection, or leaving
    the process, while the thread still uses it fails ("connection is busy") or aborts.
    """
    while not done.is_set():
        try:
            connection.interrupt()
            done.wait(0.05)
        except KeyboardInterrupt:
            continue  # a second Ctrl-C: still stopping


@contextmanager
def reader(path: Path, wait_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection with no file access beyond the database itself."""
    connection = connect(path, read_only=True, wait_s=wait_s)
    try:
        # The decoded logs are registered (as Arrow datasets) before file access is shut.
        register_logs(connection, log_root(path), _sources(connection))
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        yield connection
    finally:
        connection.close()


def list_versions(path: Path, wait_s: float = 60.0) -> list[VersionInfo]:
    """The versions in the database at `path`, read through a read-only connection."""
    connection = connect(path, read_only=True, wait_s=wait_s)
    try:
        return versions_of(connection)
    finally:
        connection.close()


def reflected_position(path: Path, version: VersionInfo) -> int:
    """The highest ledger notification id among the events `version`'s tables reflect (0 for
    none): read from the decoded log as it was at the log version they were built at.

    Reads only: the log of a version that was never built is not created.
    """
    built_at = json.loads(version.position or "{}").get("log_version")
    folder = log_root(path) / log_slug(version.source)
    if built_at is None or not (folder / "_delta_log").exists():
        return 0
    ids = DecodedLog(folder).dataset(int(built_at)).to_table(columns=["notification_id"]).column(0)
    highest = pc.max(ids).as_py()
    return 0 if highest is None else int(highest)


def _sources(connection: duckdb.DuckDBPyConnection) -> list[str]:
    return sorted({v.source for v in versions_of(connection)})


def _missing_log(connection: duckdb.DuckDBPyConnection, error: duckdb.Error) -> bool:
    """Whether `error` is the log of one of the database's sources not being there."""
    if not missing_log(error):
        return False
    try:
        sources = {version.source for version in versions_of(connection)}
    except duckdb.Error:  # the connection is past use (an interrupted query): the error says enough
        return True
    return missing_log(error, sources)


def run_query(connection: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation | None:
    try:
        # One statement: DuckDB runs them all and shows the last, so the others' results were lost.
        if len(connection.extract_statements(sql)) > 1:
            raise QueryRefusedError("query not run: give one statement (this holds several)")
        return connection.sql(sql)
    except duckdb.Error as error:
        if _missing_log(connection, error):
            raise  # the decoded log's folder is not there: not a fault of the query (crm_cli.faults)
        text = str(error)
        if "read-only" in text or "read only" in text or "external access" in text.lower():
            raise QueryRefusedError(f"refused: queries are read-only ({text.splitlines()[0]})") from error
        raise QueryRefusedError(
            f"query not run: {text.splitlines()[0]} (queries are read-only; the stable names are views)"
        ) from error


def render(relation: duckdb.DuckDBPyRelation, fmt: str, out: Path | None) -> str | None:
    """Text for table/csv/json formats, or write Parquet to `out` (and return None)."""
    if fmt == "parquet":
        if out is None:
            raise CrmLedgerError("--format parquet needs --out FILE")
        with replaced_whole(out) as partial:
            pq.write_table(relation.to_arrow_table(), partial)
        return None
    columns = list(relation.columns)
    rows = relation.fetchall()
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        text = buffer.getvalue()
    elif fmt == "json":
        records = [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        text = json.dumps(records, indent=2, default=str, allow_nan=False) + "\n"
    else:
        return None
    if out is not None:
        with replaced_whole(out) as partial:
            partial.write_text(text)
        return ""
    return text


def _json_value(value: object) -> object:
    """NaN and infinities are no JSON: they are null, as a missing number is."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def export_parquet(path: Path, folder: Path) -> Iterator[Path]:
    """Every stable read model of the promoted version as `<folder>/<name>.parquet`, yielded
    once all are written.

    The files are one set, read in one transaction: each is written beside its target
    (`replaced_whole`) and all replace theirs only when every one is written. An export cut
    short (Ctrl-C, a full disk, a damaged log) while writing leaves the earlier export's files
    as they were, not a folder of files from two moments. The renames come last, one file after
    another: only a rename failing among them (a target made a folder meanwhile) leaves a mix.
    """
    with reader(path) as connection:
        if not any(v.promoted for v in versions_of(connection)):
            raise ProjectionError(f"{path}: no version promoted yet (run `crm-ledger project` or `promote`)")
        made = not folder.exists()
        folder.mkdir(exist_ok=True)
        existing = {
            r[0]
            for r in connection.execute(
                "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main'"
            ).fetchall()
        }
        targets = [folder / f"{view}.parquet" for view in STABLE_VIEWS if view in existing]
        try:
            # Each block renames its file when the stack closes without an error; an error
            # in any removes every one written so far.
            with contextlib.ExitStack() as stack:
                for target in targets:
                    partial = stack.enter_context(replaced_whole(target))
                    pq.write_table(connection.sql(f"SELECT * FROM {target.stem}").to_arrow_table(), partial)
        except BaseException:
            if made:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # the folder this export made, empty again
            raise
    yield from targets
