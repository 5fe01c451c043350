"""A process of its own that writes decided batches to the event store.

Writing a large batch is mostly the store's own work (SQLite's B-trees and its log, or
PostgreSQL's round trips). In a thread of the deciding process that work still costs the
deciding process its CPU (~21 µs per event at 1M events, about a third of it). A writing
process takes it to the other core: the main process only pickles each batch's rows
(`ledger.batch_rows.BatchRows`, plain tuples) and sends them through a pipe; this process
writes them with the same `write_batch` the writing thread uses, through a recorder and key
vault of its own on the same store, and answers with whether the batch was committed and
the error, if any.

It is started (spawned: a clean interpreter, never a copy of the deciding process's
memory) for a run's first large batch and serves the whole run. It ignores Ctrl-C (the
deciding process waits for the commit in flight and then stops it), and it stops by itself
when the deciding process is gone: a commit in progress then completes or is rolled back
whole, never half-written.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from ledger.batch_rows import BatchRows, write_batch
from ledger.errors import WriteProcessError
from ledger.vault import PersonalDataVault

#: How the writing process is started. Tests fork it instead, so that the faults they plant
#: in the store's classes are inherited by it.
START_METHOD = "spawn"
#: Seconds between checks that the deciding process is still there, while idle.
_PARENT_CHECK_S = 1.0


class WriteProcess:
    """The writing process of one run and the pipe to it (one batch in flight at most)."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        context: Any = multiprocessing.get_context(START_METHOD)  # its Process class is not typed
        self._connection, child = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_serve,
            args=(child, name, dict(env), os.getpid()),
            name="ledger-writer",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._waiting = False

    def send(self, rows: BatchRows) -> None:
        """Hand a batch over; `receive` gives its result."""
        assert not self._waiting, "receive the result of the batch in flight first"
        self._connection.send_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        self._waiting = True

    def receive(self) -> tuple[bool, BaseException | None]:
        """Wait for the batch in flight: (whether it was committed, the error if any)."""
        assert self._waiting
        try:
            reply = self._connection.recv_bytes()
        except (EOFError, OSError):
            self._waiting = False
            # Whether the batch was committed is unknown: it must not be decided again.
            return True, WriteProcessError(
                "the writing process stopped unexpectedly; run the same command again "
                "(every batch is one transaction: nothing is half-written)"
            )
        self._waiting = False
        committed, error = pickle.loads(reply)
        return bool(committed), error

    def close(self) -> None:
        """Wait for a batch in flight (a commit is never cut off), then stop the process."""
        try:
            if self._waiting:
                self.receive()
            self._connection.send_bytes(b"")
        except (OSError, EOFError, ValueError):
            pass  # already gone
        finally:
            self._connection.close()
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join()


def _serve(connection: Connection, name: str, env: dict[str, str], parent: int) -> None:
    """The writing process: write each batch received, answer (committed, error)."""
    # Ctrl-C reaches the whole process group; the deciding process handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    factory = InfrastructureFactory.construct(Environment(name, env))
    recorder = factory.application_recorder()
    vault = PersonalDataVault(recorder, Environment(name, env).get("KEY_STORE"))
    try:
        while True:
            while not connection.poll(_PARENT_CHECK_S):
                if os.getppid() != parent:
                    return  # the deciding process is gone: nothing more will come
            message = connection.recv_bytes()
            if not message:
                return
            connection.send_bytes(_written(recorder, vault, pickle.loads(message)))
    except (EOFError, OSError):
        return
    finally:
        factory.close()


def _written(recorder: Any, vault: PersonalDataVault, rows: BatchRows) -> bytes:
    """Write one batch; the reply for the deciding process."""
    done: list[bool] = []
    try:
        write_batch(recorder, vault, rows, lambda: done.append(True))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to be judged
        return _reply(bool(done), error)
    return _reply(True, None)


def _reply(committed: bool, error: BaseException | None) -> bytes:
    """(committed, error) pickled; an error that cannot travel goes as its one-line text."""
    try:
        data = pickle.dumps((committed, error), protocol=pickle.HIGHEST_PROTOCOL)
        # Exceptions whose __init__ takes other arguments than their message fail here.
        pickle.loads(data)
    except Exception:  # noqa: BLE001 - replaced by a plain error with the same text
        substitute: Any = WriteProcessError(f"{type(error).__name__}: {error}")
        data = pickle.dumps((committed, substitute), protocol=pickle.HIGHEST_PROTOCOL)
    return data
