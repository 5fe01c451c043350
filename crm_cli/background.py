"""Background services the CLI runs for development (the Kafka broker, the schema registry).

Both are Java processes fetched from Maven Central by a project script, started in their own
session and remembered by a pid file in their data folder; this module holds what they share.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from crm_ledger.errors import ConfigurationError


def read_pid(pid_file: Path, marker: str) -> int | None:
    """The pid recorded in `pid_file` when that process is alive and is the one started there
    (`marker` is one of its command line's arguments), else None.

    A pid file outlives a service that crashed or a machine that restarted, and its pid is
    then given to some other process: without the marker, `down` sent that one SIGTERM (and
    SIGKILL 30 s later), and `status` said the service was running.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's: its command line says whether it is ours
    if not _runs(pid, marker):
        return None
    return pid


def _runs(pid: int, marker: str) -> bool:
    """Whether `marker` is an argument of process `pid`'s command line; True where that cannot be read
    (no /proc: other systems), as before the check."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        # No /proc at all: nothing to check. With /proc, the process ended meanwhile.
        return not Path("/proc/self").exists()
    except OSError:
        return True
    return marker.encode() in command.split(b"\0")


def run_fetch_script(script: Path, what: str) -> None:
    """Run a project script that fetches `what` with Maven; a clear error when it cannot."""
    if shutil.which("mvn") is None:
        raise ConfigurationError(f"{what} is missing and mvn was not found: Maven fetches it")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        verdict = first_error(result.stderr + "\n" + result.stdout)
        raise ConfigurationError(f"fetching {what} with {script.name} failed: {verdict}")


def first_error(output: str) -> str:
    """The line of a failed tool's output that says why, for a one-line error: its first
    error line (the script's `error:`, Maven's `[ERROR]`; later ones are advice), else its last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "[error]"))]
    return (errors or lines or ["it said nothing"])[0 if errors else -1]


def stop_process(pid_file: Path, marker: str, timeout_s: float = 30.0) -> bool:
    """SIGTERM the recorded process (`read_pid`), SIGKILL it after `timeout_s`; False when none
    was running."""
    pid = read_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited = 0
        if waited == pid or read_pid(pid_file, marker) is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
