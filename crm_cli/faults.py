"""Faults of the machine and its files, told as one line that names the file and what to do.

A full disk, a file-size limit, a read-only or truncated file, a permission problem or an
unreachable store are not bugs: the CLI prints what `describe` says and exits 1 (75 for a
temporary one: an unreachable or busy store, a database in use), never a traceback. Every
write the project makes is transactional (store batches, DuckDB transactions, Kafka
transactions), so after any of these nothing was half-written and the same command can
simply be run again.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
from eventsourcing.persistence import PersistenceError

from crm_cli.disk_room import nearly_full
from crm_cli.runtime import STANDARD_OUTPUT
from crm_ledger.settings import POSTGRES_SCHEMES, Settings, log_root
from ledger.errors import key_store_of

_AGAIN = "nothing was half-written; run the same command again"
_OUTPUT_CUT = "the output is cut short; run the same command again"


@dataclass(frozen=True)
class Fault:
    """What to tell the user, and whether running the same command later may simply work."""

    line: str
    temporary: bool = False


def describe(error: BaseException, settings: Settings | None) -> Fault | None:
    """One line for a known fault, or None when `error` is not one (a bug keeps its traceback)."""
    store = settings.store_label if settings is not None else "the event store"
    db = str(settings.projections_db) if settings is not None else "the projection database"
    if isinstance(error, OSError) and error.errno is not None:
        return Fault(_os_fault(error))
    folder = log_root(settings.projections_db) if settings is not None else None
    log = str(folder) if folder is not None else "the decoded log"
    if _is_deltalake(error):
        return _log_fault(str(error), log)
    # Arrow names a file by the absolute path delta-rs gives (a --db with `..` or a link differs).
    paths = (log, str(folder.resolve())) if folder is not None else ()
    if _reads_damaged_log(error, paths):
        return _log_fault(str(error), log, damaged=True)
    if isinstance(error, duckdb.Error):
        # Only a process that registered a log can fail so (and need not pay for loading it here).
        from projections.log import missing_log, missing_log_advice  # noqa: PLC0415

        if missing_log(error):
            return Fault(missing_log_advice(settings.projections_db if settings is not None else None))
    if isinstance(error, (sqlite3.Error, PersistenceError)) or _is_psycopg(error):
        keys = key_store_of(error)
        local = keys if keys is not None else settings.store if settings is not None else None
        full = False
        if local is not None and not local.startswith(POSTGRES_SCHEMES):
            full = nearly_full(Path(local).parent)
        what = f"key store {keys}" if keys is not None else f"event store {store}"
        return _store_fault(str(error), what, full=full)
    if isinstance(error, duckdb.Error):
        return _duckdb_fault(error, db)
    if isinstance(error, MemoryError):
        return Fault(f"out of memory; {_AGAIN} with a smaller --batch-size, or on a larger machine")
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _os_fault(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    # What went to stdout (`> file`) up to the failure stays there: it is not taken back.
    again = _OUTPUT_CUT if error.filename == STANDARD_OUTPUT else _AGAIN
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full{where}: free some space; {again}"
    if code == errno.EFBIG:
        return f"file size limit reached{where} (ulimit -f): raise the limit; {again}"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: check the file's owner and mode"
    if code == errno.EROFS:
        return f"read-only file system{where}: use a writable location"
    if code == errno.ENOENT:
        return f"no such file or folder{where}"
    return f"{error.strerror or error}{where}"


def _store_fault(text: str, what: str, *, full: bool = False) -> Fault:
    """`what`: the store at fault, named ("event store PATH", "key store PATH"); `full`: its
    disk has next to no room left (`crm_cli.disk_room`): SQLite tells ENOSPC as "disk I/O
    error" where it grows its shared-memory file (as a mere reader too) and in some writes."""
    lowered = text.lower()
    if "disk is full" in lowered or "no space" in lowered or (full and "disk i/o error" in lowered):
        return Fault(f"{what}: disk full: free some space; {_AGAIN}")
    if "disk i/o error" in lowered:
        return Fault(
            f"{what}: the disk refused a write (full, a file-size limit, or failing): "
            f"fix that; {_AGAIN}"
        )
    if "readonly" in lowered or "read-only" in lowered:
        return Fault(f"{what} is read-only: check the file's (and its folder's) permissions")
    if "not a database" in lowered or "malformed" in lowered:
        return Fault(f"{what} is damaged ({_first_line(text)}): restore it from a backup")
    if "unable to open" in lowered:
        return Fault(f"{what} cannot be opened: check that its folder exists and is writable")
    if "locked" in lowered or "busy" in lowered:
        return Fault(f"{what} stayed busy (another writer); {_AGAIN}", temporary=True)
    if "connection" in lowered or "connect" in lowered:
        return Fault(
            f"{what} is unreachable ({_first_line(text)}): start it or fix --store, "
            "then run the same command again",
            temporary=True,
        )
    return Fault(f"{what}: {_first_line(text)}")


def _duckdb_fault(error: duckdb.Error, db: str) -> Fault:
    text = str(error)
    lowered = text.lower()
    if "no space" in lowered or "disk is full" in lowered:
        return Fault(f"projection database {db}: disk full: free some space; {_AGAIN}")
    if "could not set lock" in lowered or "conflicting lock" in lowered:
        return Fault(
            f"projection database {db} is in use by another process: wait for it, then run this again",
            temporary=True,
        )
    # "Operation not permitted": an immutable file (chattr +i) or a read-only mount, as root too.
    if any(w in lowered for w in ("permission denied", "operation not permitted", "read-only", "readonly")):
        return Fault(
            f"projection database {db} cannot be written: check the file's (and its folder's) permissions"
        )
    if isinstance(error, (duckdb.SerializationException, duckdb.IOException)) or "not a valid" in lowered:
        return Fault(
            f"projection database {db} is damaged or truncated ({_first_line(text)}): "
            "move it away and run `crm-ledger project` to rebuild it from the log"
        )
    return Fault(f"projection database {db}: {_first_line(text)}")


def _log_fault(text: str, log: str, damaged: bool = False) -> Fault:
    """The decoded log's files (Delta Lake, written by delta-rs: its errors carry no errno)."""
    lowered = text.lower()
    if "no space" in lowered or "disk is full" in lowered or "os error 28" in lowered:
        return Fault(f"decoded log {log}: disk full: free some space; {_AGAIN}")
    if any(w in lowered for w in ("permission denied", "operation not permitted", "read-only file system")):
        return Fault(f"decoded log {log} cannot be written: check its folders' and files' permissions")
    if damaged or "json error" in lowered or "no table metadata or protocol" in lowered:
        return Fault(
            f"decoded log {log} is damaged ({_first_line(text)}): rebuild it from the source with "
            "`crm-ledger replay --metrics SPEC --from-source`"
        )
    return Fault(f"decoded log {log}: {_first_line(text)}")


def _reads_damaged_log(error: BaseException, paths: tuple[str, ...]) -> bool:
    """A data file of the decoded log (in a folder of `paths`) missing or unreadable, met by Arrow
    directly (a FileNotFoundError without an errno, an ArrowInvalid naming the file) or by
    DuckDB scanning the log's relation."""
    pyarrow = sys.modules.get("pyarrow")
    arrow = pyarrow is not None and isinstance(error, pyarrow.lib.ArrowException)
    missing = isinstance(error, FileNotFoundError) and error.errno is None
    if (arrow or missing) and any(path in str(error) for path in paths):
        return True
    if not isinstance(error, duckdb.Error):
        return False
    # Only a process that registered a log can fail so (and need not pay for loading it here).
    from projections.log import failed_reading_log  # noqa: PLC0415

    return failed_reading_log(error)


def _is_deltalake(error: BaseException) -> bool:
    # delta-rs raises its own errors, and for file failures plain OSErrors without an errno
    # that carry the OS's own code in their text. A process that never imported deltalake
    # cannot have raised its errors (and need not pay for importing it here).
    exceptions = sys.modules.get("deltalake.exceptions")
    if exceptions is not None and isinstance(error, exceptions.DeltaError):
        return True
    return isinstance(error, OSError) and error.errno is None and "(os error " in str(error)


def _is_psycopg(error: BaseException) -> bool:
    return type(error).__module__.startswith("psycopg")
