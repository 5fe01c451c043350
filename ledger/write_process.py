"""A process of its own that writes decided batches to the event store.

Writing a large batch is mostly the store's own work (SQLite's B-trees and its log, or
PostgreSQL's round trips). In a thread of the deciding process that work still costs the
deciding process its CPU (~21 µs per event at 1M events, about a third of it). A writing
process takes it to the other core: the main process only packs each batch's rows
(`ledger.batch_rows.BatchRows`, plain tuples: `ledger.plain_bytes`) and sends them through a
pipe; this process encodes the records whose message the parse workers could not prepare
(fields the ledger filled in or encrypted: about four in ten events of a generated history),
and writes them with the same `write_batch` the writing thread uses, through a recorder and
key vault of its own on the same store, and answers with whether the batch was committed and
the error, if any.

It is started for a run's first large batch and serves the whole run, as a fresh
interpreter running this module (never a copy of the deciding process's memory, and
without importing the caller's main module as multiprocessing's spawn would). It ignores
Ctrl-C (the deciding process waits for the commit in flight and then stops it), and it
stops by itself when the deciding process is gone: a commit in progress then completes or
is rolled back whole, never half-written.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from crm_ledger.collector import RUN_THRESHOLDS
from ledger.batch_rows import BatchRows, Encode, encoded, write_batch
from ledger.errors import WriteProcessError
from ledger.plain_bytes import from_bytes, to_bytes
from ledger.vault import PersonalDataVault
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry

#: How the writing process is started: "exec" (a new interpreter) in use; tests "fork" it,
#: so that the faults they plant in the store's classes are inherited by it.
START_METHOD = "exec"
#: Seconds between checks that the deciding process is still there, while idle.
_PARENT_CHECK_S = 1.0
_LAUNCH = "import sys; sys.path[:0] = {path!r}; from ledger.write_process import main; main()"


class WriteProcess:
    """The writing process of one run and the pipes to it (one batch in flight at most)."""

    def __init__(self, name: str, env: Mapping[str, str], registry: SchemaRegistry) -> None:
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        parent = os.getpid()
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        if START_METHOD == "fork":
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the forked child (tests only)
                os.close(to_child)
                os.close(from_child)
                code = 0
                try:
                    given = Connection(from_parent, writable=False)
                    _serve(Connection(to_parent, readable=False), given, parent)
                except BaseException:  # noqa: BLE001 - the child's exit code tells the parent
                    code = 3
                os._exit(code)
            self._pid = pid
        else:
            launch = _LAUNCH.format(path=sys.path)
            self._popen = subprocess.Popen(
                [sys.executable, "-c", launch, str(from_parent), str(to_parent), str(parent)],
                pass_fds=(from_parent, to_parent),
                stdin=subprocess.DEVNULL,
                # A process group of its own: a Ctrl-C sent to the command's group while this
                # interpreter was still starting (before it ignores the signal) printed a traceback.
                process_group=0,
            )
        os.close(from_parent)
        os.close(to_parent)
        self._send = Connection(to_child, readable=False)
        self._receive = Connection(from_child, writable=False)
        self._waiting = False
        self._send.send_bytes(pickle.dumps((name, dict(env), registry)))

    def send(self, rows: BatchRows) -> None:
        """Hand a batch over; `receive` gives its result."""
        assert not self._waiting, "receive the result of the batch in flight first"
        self._send.send_bytes(packed_rows(rows))
        self._waiting = True

    def receive(self) -> tuple[bool, BaseException | None]:
        """Wait for the batch in flight: (whether it was committed, the error if any)."""
        assert self._waiting
        try:
            reply = self._receive.recv_bytes()
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
            self._send.send_bytes(b"")
        except (OSError, EOFError, ValueError):
            pass  # already gone
        finally:
            self._send.close()
            self._receive.close()
            self._wait()

    def _wait(self) -> None:
        if self._popen is not None:
            try:
                self._popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        elif self._pid is not None:
            os.waitpid(self._pid, 0)


def main() -> None:
    """The writing process's entry point (argv: read fd, write fd, the deciding process's pid)."""
    read_fd, write_fd, parent = (int(a) for a in sys.argv[1:4])
    _serve(Connection(write_fd, readable=False), Connection(read_fd, writable=False), parent)


def _serve(out: Connection, given: Connection, parent: int) -> None:
    """Write each batch received, answer (committed, error); stop at an empty message."""
    # Ctrl-C reaches the whole process group; the deciding process handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name, env, registry = pickle.loads(given.recv_bytes())
    # Each batch's rows are freed by reference counting: the collector need not walk them
    # (or the interpreter's start-up objects, set aside for good) every 700 new objects.
    gc.freeze()
    gc.set_threshold(*RUN_THRESHOLDS)
    codec = AvroCodec(registry, epoch_millis=True)
    environment = Environment(name, env)
    factory = InfrastructureFactory.construct(environment)
    try:
        recorder = factory.application_recorder()
        vault = PersonalDataVault(recorder, environment.get("KEY_STORE"))
        while True:
            while not given.poll(_PARENT_CHECK_S):
                if os.getppid() != parent:
                    return  # the deciding process is gone: nothing more will come
            message = given.recv_bytes()
            if not message:
                return
            out.send_bytes(_written(recorder, vault, unpacked_rows(message), codec.encode))
    except (EOFError, OSError):
        return
    finally:
        factory.close()


#: The first byte of a packed batch: how the rest is serialised.
def packed_rows(rows: BatchRows) -> bytes:
    """A batch as bytes for the writing process (`unpacked_rows` reads them).

    Marshalled where the rows allow it (`ledger.plain_bytes`: plain tuples, text, numbers,
    bytes and the records' dicts, always for parsed facts), which packs a batch of rows ~3.5
    times faster than pickle (0.33 against 1.18 µs per event of the deciding process's CPU,
    25,000-event batches of a generated history) and reads it back a little faster.
    """
    return to_bytes((rows.events, rows.new_keys, rows.forgotten))


def unpacked_rows(message: bytes) -> BatchRows:
    """The batch `packed_rows` made `message` of."""
    events, new_keys, forgotten = from_bytes(message)
    return BatchRows(events, new_keys, forgotten)


def _written(recorder: Any, vault: PersonalDataVault, rows: BatchRows, encode: Encode) -> bytes:
    """Encode the records still to encode and write one batch; the reply for the deciding process."""
    done: list[bool] = []
    try:
        write_batch(recorder, vault, encoded(rows, encode), lambda: done.append(True))
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
