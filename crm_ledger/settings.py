"""One frozen settings object, built at the edge (CLI) from flags and CRM_LEDGER_* variables."""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, unquote, urlparse

from crm_ledger.errors import ConfigurationError
from crm_ledger.outputs import refuse_missing_folder

ENV_PREFIX = "CRM_LEDGER_"
EVENTS_TOPIC = "crm.ledger.events"
CHECKPOINTS_TOPIC = "crm.ledger.checkpoints"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: the password in `scheme://user:password@host`, kept out of every message
_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^/]*@", re.IGNORECASE)


#: The largest record ingest may be told to accept stays under one Kafka message (1 MB by default).
RECORD_BYTES_RANGE = (1024, 900_000)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _record_bytes(text: str) -> int:
    value = int(text)
    if not RECORD_BYTES_RANGE[0] <= value <= RECORD_BYTES_RANGE[1]:
        raise ValueError(text)
    return value


#: The longest wait a timeout setting may ask for (a day): beyond it the connection pool's
#: clock overflows, and a wait of weeks is a typo, not a plan.
MAX_WAIT_S = 86_400.0


def _seconds(text: str) -> float:
    # float() takes 'nan', 'inf' and negatives: a wait of nan seconds never ends.
    value = float(text)
    if not math.isfinite(value) or not 0 < value <= MAX_WAIT_S:
        raise ValueError(text)
    return value


def log_root(projections_db: Path) -> Path:
    """Where the decoded logs of a projection database live: `<db stem>.log/` beside it."""
    return projections_db.parent / f"{projections_db.stem}.log"


#: What the Delta library (delta-rs) reads in a local path as something else: "%41" is
#: decoded (to "A") when it reads a table but not when it writes one, whatever the path's
#: form (a file:// URL with "%25" is decoded once more on reading too), and a backslash is
#: taken for a folder separator. A decoded log under such a folder is written and never found.
_DELTA_UNSAFE = re.compile(r"%[0-9A-Fa-f]{2}|\\")


def delta_unsafe_part(path: Path) -> str | None:
    """What in `path`, made absolute (the current folder counts too), the decoded log's Delta
    library would read as something else; None when nothing."""
    found = _DELTA_UNSAFE.search(str(path.absolute()))
    return found.group() if found else None


def delta_unsafe_advice(what: str, part: str) -> str:
    """The one line refusing `what` (the projection database, a decoded log) whose path holds `part`."""
    return (
        f"{what}: its path holds {part!r}, which the Delta library reads as "
        f"{'an escape' if part.startswith('%') else 'a folder separator'}, so the decoded log would "
        "be looked for in another folder: put the projection database (--db, CRM_LEDGER_DB) in a folder "
        "without it"
    )


#: The event store when none is given: its folder is the one made on first use.
DEFAULT_STORE = ".crm-ledger/ledger.sqlite"
#: The projection database when none is given (in the same folder).
DEFAULT_DB = Path(".crm-ledger/projections.duckdb")


#: The table every SQLite ledger has (eventsourcing's), from the first time it is opened on.
LEDGER_TABLE = "stored_events"


def sqlite_tables(path: Path) -> set[str] | None:
    """The tables of the SQLite file at `path`, read without writing to it; None when it
    cannot be read as one (no file, another kind of file, locked): whoever opens it then
    tells that."""
    try:
        return _read_tables(path)
    except sqlite3.Error:
        return None


def _read_tables(path: Path) -> set[str] | None:
    # Only through SQLite: a plain open and close of the file would drop the locks this
    # process's SQLite connections hold on it (POSIX locks are per process), and another
    # process could then delete the write-ahead log's index under them.
    if not path.is_file():
        return None
    # mode=ro: a look must not make the file a database, nor add a journal to it.
    connection = sqlite3.connect(sqlite_read_only_uri(path), uri=True, timeout=1)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        connection.close()
    return {str(name) for (name,) in rows}


def sqlite_read_only_uri(path: Path) -> str:
    """The URI that opens the SQLite file at `path` for reading only, in a folder that may be
    read-only too (an auditor's copy).

    `mode=ro` changes nothing in the database, yet SQLite still makes the -wal and -shm files
    of a WAL-mode database beside it, which a read-only folder refuses. `immutable=1` reads
    without them, but also without locks or noticing changes: safe only while nobody writes
    the file. It is added only when the folder cannot be written, where no SQLite writer can
    commit either (every journal it keeps, -wal or -journal, is a file in that folder). A
    -wal file already there may hold committed transactions that immutable would skip: then
    it is not added, and SQLite reads them if it can: only with the -shm file beside it, which
    it cannot make there, so such a copy without one is refused in one line saying so.
    """
    resolved = path.resolve()
    uri = f"{resolved.as_uri()}?mode=ro"
    wal = resolved.with_name(resolved.name + "-wal")
    unwritten_wal = not wal.exists() or wal.stat().st_size == 0
    if os.access(resolved.parent, os.W_OK):
        return uri
    if unwritten_wal:
        return uri + "&immutable=1"
    shm = resolved.with_name(resolved.name + "-shm")
    if not shm.exists():
        # SQLite says only "unable to open database file", which reads as a missing file.
        raise ConfigurationError(
            f"{path}: its {wal.name} holds transactions not yet in the file, and SQLite reads them "
            f"only with a {shm.name} file, which it cannot make in this read-only folder: copy the "
            "store with `sqlite3 FILE '.backup COPY'` (one file), or into a folder that can be written"
        )
    return uri


def refuse_foreign_database(path: Path, own_table: str, what: str, option: str) -> None:
    """Refuse a file that is no SQLite database (a history file, the projection database),
    which was told as a damaged `what` to restore from a backup; and a SQLite file that holds
    tables but not `own_table`: another program's database (a mistyped path), in which every
    command would have made this one's tables. `option` names where the right file is given."""
    try:
        tables = _read_tables(path)
    except sqlite3.DatabaseError as error:
        # SQLite's words for a file whose header is not its own; a damaged one ("malformed")
        # is told as such when the store is opened.
        if str(error) != "file is not a database":
            return
        raise ConfigurationError(
            f"{path}: not a SQLite database file, so not a {what}: name the right file with {option}"
        ) from None
    except sqlite3.Error:
        return  # locked, unreadable: the store's own opening tells that
    if tables and own_table not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigurationError(
            f"{path}: not a {what}: it holds another database's tables ({shown}) and not the "
            f"{what}'s; name the right file with {option}"
        )


def _refuse_mistyped_folder(path: Path, default: Path) -> None:
    """Refuse a file to be made in a folder that does not exist, unless it is `default` (by any
    path to it), whose folder is made on first use."""
    if path.resolve() != default.resolve():
        refuse_missing_folder(path)


@dataclass(frozen=True)
class Settings:
    """Where the ledger, the projections and the broker are."""

    store: str = DEFAULT_STORE
    projections_db: Path = DEFAULT_DB
    bootstrap: str = "127.0.0.1:9092"
    events_topic: str = EVENTS_TOPIC
    partitions: int = 6
    transactional_id: str = "crm-ledger-relay"
    #: The Confluent-compatible API of a schema registry; producers check it before writing.
    schema_registry_url: str | None = None
    kafka_data: Path = Path(".kafka/data")
    #: Largest record (input and encoded event) ingest accepts: always fits one Kafka message.
    max_record_bytes: int = 512 * 1024
    #: How long the relay and the follower wait for an unreachable broker before giving up.
    broker_timeout_s: float = 60.0
    #: How long a command waits for a connection to a PostgreSQL store before giving up (the
    #: connection pool's own wait is 30 s, long for a store that is simply not there).
    store_timeout_s: float = 10.0
    #: a separate SQLite file for the personal-data keys (None: the event store's database)
    key_store: Path | None = None
    #: None: `crm.ledger.checkpoints` beside the default events topic, else `<events topic>.checkpoints`
    checkpoints_topic: str | None = None
    #: the relay publishes the chain head whenever the notification id crosses a multiple of this
    checkpoint_every: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from `CRM_LEDGER_*` variables, then explicit (non-None) overrides."""
        values: dict[str, Any] = {}
        # suffix -> (field, conversion, what a valid value is)
        table: dict[str, tuple[str, Callable[[str], Any], str]] = {
            "STORE": ("store", str, ""),
            "DB": ("projections_db", Path, ""),
            "BOOTSTRAP": ("bootstrap", str, ""),
            "TOPIC": ("events_topic", str, ""),
            "PARTITIONS": ("partitions", int, "a whole number"),
            "TRANSACTIONAL_ID": ("transactional_id", str, ""),
            "REGISTRY_URL": ("schema_registry_url", str, ""),
            "KAFKA_DATA": ("kafka_data", Path, ""),
            "MAX_RECORD_BYTES": ("max_record_bytes", _record_bytes, "a whole number from 1024 to 900000"),
            "BROKER_TIMEOUT": ("broker_timeout_s", _seconds, "a positive number of seconds, at most 86400"),
            "STORE_TIMEOUT": ("store_timeout_s", _seconds, "a positive number of seconds, at most 86400"),
            "KEY_STORE": ("key_store", Path, ""),
            "CHECKPOINTS_TOPIC": ("checkpoints_topic", str, ""),
            "CHECKPOINT_EVERY": ("checkpoint_every", _positive, "a whole number of at least 1"),
        }
        for suffix, (name, convert, expected) in table.items():
            raw = environ.get(ENV_PREFIX + suffix)
            if raw:
                try:
                    values[name] = convert(raw)
                except ValueError:
                    hint = f": expected {expected}" if expected else ""
                    raise ConfigurationError(f"{ENV_PREFIX}{suffix}={raw!r} is not valid{hint}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)
        db = settings.projections_db
        if db.name in ("", ".", ".."):
            raise ConfigurationError(
                f"projection database {str(db)!r} (--db, CRM_LEDGER_DB) is no file name: name a file"
            )
        if log_root(db) == db:
            raise ConfigurationError(
                f"projection database {db}: its decoded log is the folder {log_root(db).name} beside it, "
                f"the same name: name the database otherwise (e.g. {db.with_suffix('.duckdb').name})"
            )
        return settings

    def refuse_missing_db_folder(self) -> None:
        """Refuse to make a projection database named in a folder that does not exist (only the
        default's folder is made): a mistyped folder would hold read models nobody finds."""
        _refuse_mistyped_folder(self.projections_db, DEFAULT_DB)

    @property
    def checkpoints(self) -> str:
        """The compacted topic that holds the chain-head checkpoints of the events topic."""
        if self.checkpoints_topic:
            return self.checkpoints_topic
        return CHECKPOINTS_TOPIC if self.events_topic == EVENTS_TOPIC else f"{self.events_topic}.checkpoints"

    def holds(self, path: Path) -> bool:
        """Whether writing `path` would overwrite the event store, the key store or the
        projection database (with their journals and the decoded logs beside it)."""
        target = path.resolve()
        files = [self.projections_db, *([self.key_store] if self.key_store else [])]
        if not self.store.startswith(POSTGRES_SCHEMES):
            files.append(Path(self.store))
        for held in (f.resolve() for f in files):
            # SQLite's -wal/-shm/-journal and DuckDB's .wal sit beside the file, by its name.
            if target.parent == held.parent and target.name.startswith(held.name):
                return True
        logs = log_root(self.projections_db.resolve())
        return target == logs or logs in target.parents

    @property
    def store_label(self) -> str:
        """The store as messages name it: a PostgreSQL URL without its password."""
        return _PASSWORD.sub(r"\1***@", self.store)

    @property
    def rejects_file(self) -> Path:
        """Where ingest writes rejected records by default: beside the projection DB."""
        return self.projections_db.parent / "rejects.jsonl"

    def eventsourcing_env(self, *, read_only: bool = False) -> dict[str, str]:
        """The eventsourcing persistence settings for the configured event store.

        A path means eventsourcing's SQLite module; a postgresql:// URL its PostgreSQL module.
        `KEY_STORE` (read by the ledger application) is the separate key file, when set.
        `read_only` (commands that only read an existing ledger) opens a SQLite store so that
        it works in a read-only folder too (`sqlite_read_only_uri`), making no tables.
        """
        keys = {}
        if read_only:
            # The ledger then changes nothing in it, not even to index a store written before
            # its event-id index (`ledger.application`).
            keys["LEDGER_READ_ONLY"] = "true"
        if self.key_store is not None:
            keys["KEY_STORE"] = str(self.key_store)  # made with it, in a folder that exists (ledger.vault)
            if read_only:
                keys["KEY_STORE_READ_ONLY"] = "true"  # read as the store is (`sqlite_read_only_uri`)
        if self.store.startswith(POSTGRES_SCHEMES):
            url, port = self._postgres_url()
            return keys | {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": url.path.lstrip("/"),
                "POSTGRES_HOST": url.hostname or "127.0.0.1",
                "POSTGRES_PORT": str(port or 5432),
                "POSTGRES_USER": unquote(url.username or ""),
                "POSTGRES_PASSWORD": unquote(url.password or ""),
                # eventsourcing takes whole seconds: the pool's wait for a connection.
                "POSTGRES_CONNECT_TIMEOUT": str(math.ceil(self.store_timeout_s)),
            }
        path = Path(self.store)
        # A mistyped folder would otherwise hold a new, empty ledger that the next run does not find.
        _refuse_mistyped_folder(path, Path(DEFAULT_STORE))
        refuse_foreign_database(path, LEDGER_TABLE, "ledger store", "--store or CRM_LEDGER_STORE")
        if read_only:
            return keys | {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": sqlite_read_only_uri(path),
                "SQLITE_LOCK_TIMEOUT": "30",
                "CREATE_TABLE": "false",
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        return keys | {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "30",
        }

    def _postgres_url(self) -> tuple[ParseResult, int | None]:
        """The parsed store URL and its port; a malformed one is a user error, not a crash."""
        try:
            url = urlparse(self.store)
            return url, url.port  # the port is only checked when it is read
        except ValueError as error:
            reason = str(error)
            raise ConfigurationError(
                f"the store URL {self.store_label} is malformed ({reason[:1].lower()}{reason[1:]}): "
                "fix --store or CRM_LEDGER_STORE"
            ) from None
