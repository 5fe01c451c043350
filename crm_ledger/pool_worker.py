"""How a forked pool worker (the parse workers of ingest and import) takes signals and its parent's end."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal

#: prctl's option that has the kernel signal this process when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1


def become_pool_worker() -> None:
    """Set up a forked pool worker's signals; call first in the pool's initializer.

    - Ctrl-C reaches the whole process group: the main process stops the run (and the pool);
      a worker interrupted on its own would only print a traceback.
    - The pool stops its workers by SIGTERM, which the command took over as a Ctrl-C: a
      worker that inherited that would stop with a traceback instead.
    - A main process killed with kill -9 left its workers writing results to a closed pipe,
      each printing a traceback on the terminal: the kernel now ends a worker with its parent
      (where it can: Linux; elsewhere the pipe's end still stops it, noisily).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
