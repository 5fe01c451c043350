"""`python -m crm_cli` and the `crm-ledger` script: the command line behind a light entry point.

The command line imports DuckDB, Delta Lake and the Kafka client, which takes a noticeable
moment: Ctrl-C pressed during it must end as any other interruption does (one line, exit
130), not with a traceback of an import. So nothing heavy is imported before the guard.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys

from crm_cli.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from crm_cli.runtime import NamedStdout, interrupt_after, silence_stdout


def _stdout_written_whole() -> None:
    """Give stdout a buffered writer of its own over its file descriptor.

    Under PYTHONUNBUFFERED (python -u) stdout writes straight to its file, and a write the
    reader cut short (`| head`) returns fewer bytes, which the text layer drops without an
    error: the command ended 0 with its output silently cut. A buffered writer in between
    writes every byte or raises (BrokenPipeError: 141); full lines still go out at once.
    And a write that fails (a full disk under `> file`) names no file: this writer's failures
    name standard output, so the error line says where and that the output is cut short.
    """
    stream = sys.stdout
    if not isinstance(stream, io.TextIOWrapper):
        return
    buffer = stream.buffer
    raw = buffer.raw if isinstance(buffer, io.BufferedWriter) else buffer
    if not isinstance(raw, io.FileIO):
        return  # not a file descriptor's stream (a test's capture): left as it is
    stream.flush()
    unbuffered = isinstance(buffer, io.FileIO)
    # closefd=False: the file descriptor stays sys.__stdout__'s too.
    buffered = NamedStdout(io.FileIO(stream.fileno(), "w", closefd=False))
    sys.stdout = io.TextIOWrapper(
        buffered,
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=unbuffered or stream.line_buffering,
    )


class _ClosedOutput(io.TextIOBase):
    """Standing for a standard stream the process was started without (`>&-`): Python makes
    it None, which the first use of it (the command line's own set-up) fails on with a
    traceback. Writing to it fails as writing to a closed file does (EBADF), in one line."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def write(self, text: str) -> int:
        if not text:
            return 0
        raise OSError(errno.EBADF, f"{self._name} is closed")


def _closed_streams_stand_in() -> None:
    """Give a closed stdout an object that refuses writes; a closed stderr one that drops them
    (nowhere is left to say anything)."""
    if sys.stdout is None:
        sys.stdout = _ClosedOutput("standard output")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process's life


def run() -> None:
    """Run the command line; an interruption at any moment is one line and exit 130."""
    _closed_streams_stand_in()
    # Past a file-size limit, writes fail with EFBIG (a clear error) instead of a silent kill.
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _stdout_written_whole()
    code = 0
    try:
        with interrupt_after():  # see there: an interrupt inside an extension's import
            from crm_cli.cli import main  # noqa: PLC0415 - after the guard, on purpose

        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        code = EXIT_BROKEN_PIPE
    except OSError as error:
        # The output's last lines could not be written (a full disk, a file-size limit): told
        # here unless the command told a failed write already; what is still buffered would
        # only fail again when the interpreter ends.
        silence_stdout()
        if code == 0:
            from crm_cli.faults import describe  # noqa: PLC0415 - only on this failure

            fault = describe(error, None)
            sys.stderr.write(f"error: {fault.line if fault else error}\n")
            code = 1
    # The command is done and `code` says how: a Ctrl-C from here on would only cut the
    # interpreter's shutdown short and hide that (the process ended by the signal, silently).
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    run()
