"""Test helpers that run the real CLI in a subprocess and read stores directly."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.application import LedgerApplication
from ledger.vault import PERSONAL_FIELDS

CLI = [sys.executable, "-m", "crm_cli"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **(env or {})}
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=merged, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def run_cli_on_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Run the CLI with its stdout on a pseudo-terminal (as a user at a terminal sees it):
    its exit code and the bytes the terminal received."""
    merged = {**os.environ, **(env or {})}
    parent, child = pty.openpty()
    process = subprocess.Popen([*CLI, *args], stdout=child, stderr=subprocess.DEVNULL, env=merged)
    os.close(child)
    received = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the child's side closed (EIO on Linux)
            break
        if not chunk:
            break
        received += chunk
    os.close(parent)
    return process.wait(timeout=60), received


def assert_gives_up_on_a_missing_broker(*args: str, env: dict[str, str], what: str) -> None:
    """Run a command with nothing listening at the bootstrap address and a 2 s broker timeout:
    it gives up after that timeout (not a client's own 30 s) with the relay's one line, exit 75."""
    env = {**env, "CRM_LEDGER_BOOTSTRAP": "127.0.0.1:1", "CRM_LEDGER_BROKER_TIMEOUT": "2"}
    started = time.monotonic()
    result = run_cli(*args, env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 75, (args, result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"error: Kafka at 127.0.0.1:1 was unreachable for 2 s; gave up {what} "
        "(set CRM_LEDGER_BROKER_TIMEOUT to wait longer); run the same command again when it is back"
    ], args
    assert elapsed < 20, (args, elapsed)


#: Makes the folder $1 a small tmpfs holding its own files and only $2 bytes free, runs the rest
#: of the arguments there, and puts the folder's files (without the filler) back in the real
#: folder, so that a test reads what the command left. Exit 97: no such disk can be had here.
_FULL_DISK = r"""
set -e
folder=$1; free=$2; shift 2
under=$(mktemp -d)
mount --bind "$folder" "$under" || exit 97
size=$(( $(du -sk "$folder" | cut -f1) + free / 1024 + 1024 ))
mount -t tmpfs -o size=${size}k tmpfs "$folder" || exit 97
cp -a "$under/." "$folder/"
room=$(( $(stat -f -c '%a * %S' "$folder") - free ))
if [ "$room" -gt 0 ]; then fallocate -l "$room" "$folder/.filler" || exit 97; fi
set +e
if [ -n "$CRM_TEST_STDOUT" ]; then "$@" > "$CRM_TEST_STDOUT"; else "$@"; fi
code=$?
rm -f "$folder/.filler"
find "$under" -mindepth 1 -delete
cp -a "$folder/." "$under/"
exit $code
"""


def run_cli_on_full_disk(
    folder: Path, free: int, *args: str, env: dict[str, str] | None = None, stdout: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI while `folder` is on a disk (a tmpfs) with only `free` bytes left: real
    ENOSPC, not a file-size limit. The folder's files are on that disk during the run and
    back in the folder after it; `stdout` (a file in it) takes the CLI's stdout. Skipped
    where a mount namespace cannot be had."""
    if shutil.which("unshare") is None or shutil.which("fallocate") is None:
        pytest.skip("no unshare or fallocate here: no small disk can be mounted")
    merged = {**os.environ, **(env or {})}
    unshare = ["unshare", "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "-r")  # a user namespace of its own may mount a tmpfs
    probe = subprocess.run(
        [*unshare, "sh", "-c", _FULL_DISK, "sh", str(folder), "0", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no small disk can be mounted here: {probe.stderr.strip()}")
    merged["CRM_TEST_STDOUT"] = str(stdout) if stdout is not None else ""
    return subprocess.run(
        [*unshare, "sh", "-c", _FULL_DISK, "sh", str(folder), str(free), *CLI, *args],
        capture_output=True, text=True, env=merged, check=False,
    )


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    merged = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=merged
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll until `condition()` holds (tests never sleep a fixed time instead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """CPU time a running process has used so far (user and system, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_hard(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def stored_rows(path: Path) -> int:
    """Rows in a SQLite event store, read without taking part in its transactions."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT count(*) FROM stored_events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def ledger_content(app: LedgerApplication) -> list[tuple[str, dict[str, Any]]]:
    """Every stored event in notification order, without the recorded_at stamp."""
    content = []
    start = 1
    while True:
        batch = list(app.read_notifications(start, 5000))
        if not batch:
            return content
        for notification in batch:
            event_type, record = app.codec.decode(notification.state)
            record.pop("recorded_at")
            # Ciphertexts differ between ledgers (own keys, random nonces): compare plaintext.
            for name in PERSONAL_FIELDS.get(event_type, ()):
                record[name] = app.vault.reveal(record["customer_id"], record[name])
            content.append((event_type, record))
        start = batch[-1].id + 1
