"""Files the commands write for people (`--out`, exports): whole or not at all.

A write cut short (Ctrl-C, a full disk, a file-size limit) used to leave a torn file where
the previous one was. The data goes to a hidden file beside the target, which is renamed
over it once complete; on failure the hidden file is removed and the old target stays.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

from crm_ledger.errors import CrmLedgerError


def refuse_missing_folder(path: Path) -> None:
    """Refuse a file to be written whose folder does not exist: a mistyped folder is not made anew."""
    if not path.parent.is_dir():
        raise CrmLedgerError(f"{path}: no folder {path.parent} to write it in")


@contextlib.contextmanager
def replaced_whole(target: Path) -> Iterator[Path]:
    """A path to write instead of `target`; it becomes `target` when the block ends without error.

    A target that is not a regular file (a device such as /dev/stdout or /dev/null, a pipe)
    is written directly: it cannot be renamed over, and nothing of it can be torn.
    """
    if target.exists() and not target.is_file():
        yield target
        return
    refuse_missing_folder(target)
    _remove_stale_partials(target)
    partial = target.with_name(f"{_partial_prefix(target)}{os.getpid()}")
    try:
        yield partial
        partial.replace(target)
    except OSError as error:
        if error.filename not in (None, str(partial), partial):
            raise  # another file's (an inner block's, in a set of files written together)
        # Named by the file asked for, not by the hidden one written first.
        raise OSError(error.errno, error.strerror, str(target)) from None
    finally:
        partial.unlink(missing_ok=True)


def _partial_prefix(target: Path) -> str:
    """The hidden file's name but the writing process's id: the machine's name is in it, so
    that a folder shared between machines (or containers) has each clean up its own only."""
    host = socket.gethostname().replace("/", "_") or "host"
    return f".{target.name}.partial-{host}-"


def _remove_stale_partials(target: Path) -> None:
    """Remove the hidden files of earlier writes of `target` on this machine whose process is gone.

    A write killed with kill -9 (or by the machine stopping) cleans nothing up: its hidden
    file stayed beside the target for good, as large as the write had got. One whose process
    still runs (another write of the same file), or that another machine writes, is left to it.
    """
    prefix = _partial_prefix(target)
    for leftover in target.parent.glob(f"{glob_escape(prefix)}*"):
        pid = leftover.name[len(prefix) :]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: it exists
    return True
