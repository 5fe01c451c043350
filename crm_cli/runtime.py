"""Process-level wiring of the CLI: Ctrl-C and SIGTERM become a clean stop at a batch boundary."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class StopFlag:
    """Set by SIGINT/SIGTERM; long loops check it between batches and stop cleanly."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a clean stop at the next batch boundary."""
    flag = StopFlag()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.stopped:
            raise KeyboardInterrupt
        flag.stopped = True

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C while the block runs (a long command's heavy imports) and raise it as
    KeyboardInterrupt when the block ends.

    Raised inside an extension module's initialisation, the interrupt was swallowed there
    (the command then ran to its end, exit 0) or marked the interpreter, which ended by the
    signal itself after the command said "interrupted" (exit -2): about one Ctrl-C in ten
    in the first second of `project`.
    """
    held: list[int] = []
    # SIGTERM too, where the command takes it as a Ctrl-C (crm_cli.take_over_interrupts).
    signals = [signal.SIGINT]
    if signal.getsignal(signal.SIGTERM) is signal.default_int_handler:
        signals.append(signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt


def silence_stdout() -> None:
    """Point stdout at /dev/null: the reader went away, and the interpreter's last flush of
    what is still buffered would fail again (a warning on stderr)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


#: How an error of a write to stdout names it (an `OSError`'s filename).
STANDARD_OUTPUT = "standard output"


class NamedStdout(io.BufferedWriter):
    """stdout's buffered writer: a write that fails names standard output (the OS error names
    no file), so that a full disk under `> file` is told as that, not as a store's file."""

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as error:
            _raise_named(error)
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as error:
            _raise_named(error)
            raise


def _raise_named(error: OSError) -> None:
    # A reader gone away stays what it is (BrokenPipeError: exit 141, no message).
    if error.filename is None and not isinstance(error, BrokenPipeError):
        raise OSError(error.errno, error.strerror, STANDARD_OUTPUT) from error
