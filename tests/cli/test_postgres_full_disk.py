"""PostgreSQL's data folder fills up during an ingest: one line, then every record once on the rerun.

A data file that cannot grow fails the statement (the batch is rolled back); a WAL segment
that cannot be made fails the server (PANIC: it stops, and on a full disk cannot recover).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from importers.generator import GeneratorConfig, write_history
from tests.full_disk import SmallDisk, small_disk
from tests.helpers import run_cli
from tests.postgres_server import PostgresServer, create_database, owner_ids, serve, start

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class _Server:
    """A throwaway server whose folder is a small disk; started again when it stopped."""

    def __init__(self, server: PostgresServer, process: subprocess.Popen[bytes], disk: SmallDisk) -> None:
        self.server, self.process, self.disk = server, process, disk

    def back_with_room(self) -> None:
        self.disk.free_up()
        if self.process.poll() is not None:
            process = serve(self.server, self.disk.enter)
            assert process is not None, "the server did not start again with room on its disk"
            self.process = process

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def server_on_small_disk() -> Iterator[_Server]:
    if os.geteuid() != 0:
        # In a user namespace of its own the server would be its root, which it refuses to be.
        pytest.skip("a PostgreSQL server on a disk of its own needs root (to mount it for the postgres user)")
    owner = owner_ids()
    if owner is None:
        pytest.skip("no postgres user on this machine")
    # Not under pytest's tmp folders: those are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="crm-ledger-pg-"))
    try:
        with small_disk(base, 96 * 1024, owner) as disk:
            started = start(base, disk.enter)
            if started is None:
                pytest.skip("PostgreSQL binaries are not available on this machine")
            running = _Server(*started, disk)
            try:
                yield running
            finally:
                running.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "leave",
    [
        # Room for the WAL, not for the tables: the statement fails, the server stays up.
        pytest.param(200 * 1024, id="data-files"),
        # Room for the tables, less than a WAL segment: the server PANICs mid-ingest.
        pytest.param(6 * 1024 * 1024, id="wal"),
    ],
)
def test_a_full_data_folder_of_postgresql_is_one_line_and_the_rerun_lands_every_record_once(
    tmp_path: Path, server_on_small_disk: _Server, leave: int
) -> None:
    running = server_on_small_disk
    env = {
        "CRM_LEDGER_STORE": create_database(running.server, "ledger"),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
        "CRM_LEDGER_STORE_TIMEOUT": "3",
    }
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=1500, employees=8, months=2, seed=4), handle)
    total = len(history.read_text().splitlines())
    running.disk.fill(leave=leave)
    result = run_cli("ingest", str(history), "--batch-size", "500", env=env)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    store = f"error: event store postgresql://{running.server.user}@127.0.0.1:{running.server.port}/ledger"
    disk_full = f"{store}: disk full: free some space; nothing was half-written; run the same command again"
    stopped = f"{store} is unreachable ("
    if result.returncode == 1:
        assert lines == [disk_full]
    else:
        # The server stopped under the ingest: temporary, once it is back the same command completes.
        assert result.returncode == 75 and lines[0].startswith(stopped), (result.returncode, lines)
        assert lines[0].endswith("start it or fix --store, then run the same command again"), lines

    running.back_with_room()
    rerun = run_cli("ingest", str(history), env=env, check=True)
    summary = re.search(r"accepted (\d+), duplicates skipped (\d+), rejected 0, conflicts 0", rerun.stdout)
    assert summary is not None, rerun.stdout
    # What the first run landed (whole batches) is skipped now, the rest is new.
    assert int(summary[1]) + int(summary[2]) == total, rerun.stdout
    audit = run_cli("audit", "verify", env=env)
    # Notification ids without gaps: a batch rolled back or lost in a crash took none for good.
    assert audit.returncode == 0, audit.stdout
    assert f"ledger: {total} events" in audit.stdout
