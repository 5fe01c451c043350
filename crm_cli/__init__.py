"""The `crm-ledger` command line: the top layer, which nothing else imports.

It builds the settings from flags and `CRM_LEDGER_*` variables, wires the packages below
(`ledger`, `projections`, `replay`, `schemas` over the shared base `crm_ledger`) and runs the
development services (the Kafka broker, the schema registry).

Imported by the command's entry point (`python -m crm_cli`, the `crm-ledger` script), this
package is the first of the project's code to run: from here until `main` takes over, a Ctrl-C
ends the process quietly (one line, exit 130) instead of with a traceback of whichever module
was being imported. Imported by anything else (a test, a program using `main`), it changes no
signal handling.
"""

from __future__ import annotations

# `_signal` and `os` are loaded by the interpreter's own start-up: importing them here costs
# nothing, while `signal` would first build its enums (a Ctrl-C in there was the traceback).
import _signal  # type: ignore[import-not-found,unused-ignore]
import os
import sys
from types import FrameType

#: A run stopped by Ctrl-C (128 + SIGINT); the same as `crm_cli.exit_codes.EXIT_INTERRUPTED`,
#: repeated here so that nothing needs importing before the handler is in place.
_EXIT_INTERRUPTED = 130


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    """End the starting command: nothing has been read or written yet, so nothing to flush."""
    # Not contextlib.suppress: it may not be imported yet, and importing is what is cut short.
    try:  # noqa: SIM105
        os.write(2, b"interrupted\n")
    except OSError:
        pass  # no standard error (started with `2>&-`): the exit code says it
    os._exit(_EXIT_INTERRUPTED)


def _imported_by_the_entry_point() -> bool:
    """Whether the import of this package comes straight from the command's start: runpy
    starting `python -m crm_cli`, or the top level of the `crm-ledger` script."""
    frame: FrameType | None = sys._getframe(2)  # past this function and the package's top level
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    if frame is None:
        return False
    if frame.f_globals.get("__name__") == "runpy":
        return sys.argv[:1] == ["-m"]  # runpy sets argv[0] to the module's file once it is found
    # The script installed for [project.scripts]: its first statement imports the entry point.
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    at_top = frame.f_back is None and frame.f_globals.get("__name__") == "__main__"
    return at_top and script == "crm-ledger"


def take_over_interrupts() -> None:
    """Give Ctrl-C back to Python (KeyboardInterrupt) if the start-up's quiet exit still
    holds it: from here on the command line handles an interruption itself.

    SIGTERM (`kill`, a service manager, a container stopping) is taken as a Ctrl-C from here
    on. By default it ended the process on the spot: no "interrupted", exit -15, and the
    workers forked by `ingest` and `import`, left writing to a closed pipe, each printed a
    traceback. As Ctrl-C, only in the command's own process (a program or test running
    `main` keeps its handlers), and only a SIGTERM nothing else handles.
    """
    if _signal.getsignal(_signal.SIGINT) is _quiet_exit:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        if _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:
            _signal.signal(_signal.SIGTERM, _signal.default_int_handler)


if _imported_by_the_entry_point() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _quiet_exit)
