"""A stop asked for (Ctrl-C) interrupts the DuckDB statement under way, not only the next batch.

A replay's build is a few long statements over the whole log (~5 s at 1M events, minutes at
100M) with no batch boundary in between: a Ctrl-C, which asks the command to stop at the
next boundary, was heard only when the build had finished, and the command then ended as
if never asked. While the block runs, a watcher thread interrupts the connection's running
statement once `should_stop` says so; DuckDB raises `duckdb.InterruptException` there, and
the update's transaction rolls back as on any error (nothing half-written).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import duckdb

#: How often the watcher asks `should_stop` (a Ctrl-C is heard within this).
POLL_S = 0.05


@contextlib.contextmanager
def statements_interrupted_on_stop(
    connection: Callable[[], duckdb.DuckDBPyConnection | None], should_stop: Callable[[], bool]
) -> Iterator[None]:
    """Interrupt what `connection()` (the open connection, None when there is none) runs once
    `should_stop()` is true, until the block ends.

    DuckDB forgets an interrupt that comes between two statements: once asked to stop, the
    watcher interrupts again at every poll, so the next statement is stopped too.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if not should_stop():
                continue
            current = connection()
            if current is not None:
                with contextlib.suppress(duckdb.Error):  # closed meanwhile: nothing runs on it
                    current.interrupt()

    watcher = threading.Thread(target=watch, name="interrupt-on-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
