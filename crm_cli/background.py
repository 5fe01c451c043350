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


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` when that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def run_fetch_script(script: Path, what: str) -> None:
    """Run a project script that fetches `what` with Maven; a clear error when it cannot."""
    if shutil.which("mvn") is None:
        raise ConfigurationError(f"{what} is missing and mvn was not found: Maven fetches it")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigurationError(f"fetching {what} failed:\n{result.stderr[-2000:]}")


def stop_process(pid_file: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after `timeout_s`; False when none was running."""
    pid = read_pid(pid_file)
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
        if waited == pid or read_pid(pid_file) is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
