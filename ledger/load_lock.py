"""One bulk load at a time per ledger: a second `ingest` or `import` waits for the first.

Two loads run at once decided their batches against each other's half-written state: the
one that lost a race for SQLite's write lock could give up as "stayed busy" after the
store's timeout, and records of the other's files were judged before the facts they name
had landed (an unknown customer, refused). Loads are long and bulk: they now take turns,
the later one saying it waits. Single facts written meanwhile (a goal, a period close)
still interleave with a load, as before.

The turn is an advisory lock that nothing else takes: a lock file beside a SQLite store
(`flock`, released by the system when its process ends, however it ends) and a session
advisory lock on PostgreSQL (released when its connection closes).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crm_ledger.settings import POSTGRES_SCHEMES

#: The PostgreSQL advisory lock's first key ("crml" + 1); the second is the schema's hash, so
#: that ledgers in two schemas of one database do not wait for each other.
_LOCK_KEY = 0x63726D6D
#: How often a waiting load asks again (a Ctrl-C is heard in between).
POLL_S = 0.5


def lock_file_of(store: str) -> Path:
    """The lock file of a SQLite store: beside it, by its name."""
    return Path(f"{store}.load-lock")


@contextlib.contextmanager
def one_load_at_a_time(store: str, recorder: Any, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold the ledger's load turn while the block runs; call `waiting()` once if another
    load holds it, then wait for it.

    `store` is the settings' store (a SQLite path or a postgresql:// URL), `recorder` the
    ledger's eventsourcing recorder (whose datastore holds the PostgreSQL connection pool).
    """
    if store.startswith(POSTGRES_SCHEMES):
        with _postgres_turn(recorder.datastore, waiting):
            yield
        return
    with _sqlite_turn(lock_file_of(store), waiting):
        yield


@contextlib.contextmanager
def _sqlite_turn(path: Path, waiting: Callable[[], None]) -> Iterator[None]:
    try:
        handle = path.open("a")
    except OSError:
        try:
            # Made by another user, who may write the store too: flock works on a read-only
            # descriptor, and the turn is still taken.
            handle = path.open("r")
        except OSError:
            # None, in a folder this process cannot write in: the store's own writes fail there
            # with their own clear message; no turn is needed for a load that cannot write.
            yield
            return

    def taken() -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    with handle:
        _wait_for(taken, waiting)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _postgres_turn(datastore: Any, waiting: Callable[[], None]) -> Iterator[None]:
    # Asked again and again without waiting in the server: a blocking pg_advisory_lock would
    # be cut off by the session's lock_timeout, and would not hear a Ctrl-C.
    keys = (_LOCK_KEY, datastore.schema or "public")
    take = "SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS taken"  # rows are dicts there
    with datastore.get_connection() as connection:  # autocommit: the lock is the session's
        _wait_for(lambda: bool(connection.execute(take, keys).fetchone()["taken"]), waiting)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a connection gone releases the lock itself
                connection.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", keys)


def _wait_for(taken: Callable[[], bool], waiting: Callable[[], None]) -> None:
    """Ask `taken()` until it is true, every POLL_S; say `waiting()` once, if it was not at once."""
    if taken():
        return
    waiting()
    while not taken():
        time.sleep(POLL_S)
