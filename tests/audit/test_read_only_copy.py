"""Auditors get read-only copies: the read commands work on a ledger in a read-only folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from crm_ledger.settings import Settings, sqlite_read_only_uri
from ledger.application import LedgerApplication
from ledger.connect import open_ledger
from ledger.records import RecordParser
from tests.factory import basics
from tests.helpers import CLI, run_cli

#: Makes the folder ($0) a read-only bind mount of itself, in a mount namespace of its own.
_READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && ! touch "$0/.probe" 2>/dev/null'


def _run_in_read_only_folder(folder: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI while `folder` cannot be written: by its mode, or (for root, whom modes do
    not stop) by a read-only bind mount; skipped where neither can be had."""
    merged = {**os.environ, **env}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run([*CLI, *args], capture_output=True, text=True, env=merged, check=False)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no folder can be made read-only")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", _READ_ONLY_MOUNT, str(folder)], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here: {probe.stderr.strip()}")
    command = ["unshare", "-m", "sh", "-c", f'{_READ_ONLY_MOUNT} && exec "$@"', str(folder), *CLI, *args]
    return subprocess.run(command, capture_output=True, text=True, env=merged, check=False)


@pytest.fixture
def copy(settings: Settings, tmp_path: Path) -> Path:
    """A ledger's copy, alone in a folder of its own (as handed to an auditor)."""
    _recorded(settings)
    folder = tmp_path / "copy"
    folder.mkdir()
    _copied(Path(settings.store), folder / "ledger.sqlite")
    return folder / "ledger.sqlite"


def _recorded(settings: Settings) -> None:
    """The basic facts recorded in the ledger `settings` name."""
    app = LedgerApplication(settings.eventsourcing_env())
    parser = RecordParser(app.registry, now_ms=1_900_000_000_000)
    assert {o.status for o in app.record([parser.parse(r, strict=True) for r in basics()])} == {"accepted"}
    app.close()


def _copied(source: Path, target: Path) -> None:
    """A SQLite file copied whole: one file, its write-ahead log merged in."""
    reading, writing = sqlite3.connect(source), sqlite3.connect(target)
    try:
        reading.backup(writing)
    finally:
        reading.close()
        writing.close()


def test_the_read_commands_read_a_ledger_in_a_read_only_folder(copy: Path, tmp_path: Path) -> None:
    """SQLite made the -wal and -shm files beside the store even to read it, so every read
    command failed on a copy in a read-only folder ("check that its folder ... is writable")."""
    env = {"CRM_LEDGER_STORE": str(copy), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    for args in (["audit", "verify", "--source", "ledger"], ["audit", "head"], ["customer", "show", "c1"]):
        expected = run_cli(*args, env={**env, "CRM_LEDGER_STORE": str(tmp_path / "ledger.sqlite")})
        assert expected.returncode == 0, (args, expected.stderr)
        result = _run_in_read_only_folder(copy.parent, *args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.split("(")[0] == expected.stdout.split("(")[0], args  # (head: when it was read)
    assert sorted(p.name for p in copy.parent.iterdir()) == ["ledger.sqlite"]
    # A command that writes still says in one line that it cannot.
    refused = _run_in_read_only_folder(copy.parent, "goal", "close", "g1", "--outcome", "achieved", env=env)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr


def test_immutable_is_asked_for_only_where_nobody_can_write(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """immutable=1 reads without locks or the -wal: only safe in a folder no writer can use,
    and never while a -wal beside the file may hold committed transactions."""
    assert sqlite_read_only_uri(copy) == f"{copy.resolve().as_uri()}?mode=ro"
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)  # the folder cannot be written
    assert sqlite_read_only_uri(copy) == f"{copy.resolve().as_uri()}?mode=ro&immutable=1"
    wal = copy.with_name(copy.name + "-wal")
    wal.write_bytes(b"")
    assert sqlite_read_only_uri(copy).endswith("&immutable=1")  # an empty one holds nothing
    wal.write_bytes(b"\0" * 32)
    copy.with_name(copy.name + "-shm").write_bytes(b"")  # copied with the store (see below without)
    assert sqlite_read_only_uri(copy) == f"{copy.resolve().as_uri()}?mode=ro"


def test_a_separate_key_store_is_read_in_a_read_only_folder_too(tmp_path: Path) -> None:
    """The ledger was opened read-only there, its separate key store (--key-store) for writing,
    so `customer show` still failed on the auditor's copy."""
    made = tmp_path / "made"
    made.mkdir()
    _recorded(Settings(store=str(made / "ledger.sqlite"), key_store=made / "keys.sqlite"))
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("ledger.sqlite", "keys.sqlite"):
        _copied(made / name, folder / name)
    env = {
        "CRM_LEDGER_STORE": str(folder / "ledger.sqlite"),
        "CRM_LEDGER_KEY_STORE": str(folder / "keys.sqlite"),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
    }
    expected = run_cli(
        "customer", "show", "c1",
        env={**env, "CRM_LEDGER_STORE": str(made / "ledger.sqlite"), "CRM_LEDGER_KEY_STORE": str(made / "keys.sqlite")},
    )
    assert expected.returncode == 0, expected.stderr
    result = _run_in_read_only_folder(folder, "customer", "show", "c1", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["keys.sqlite", "ledger.sqlite"]


#: A store written before the event-id index: without its table (as an old store opened
#: read-only is, nothing having made it), or with the table and no rows.
_WITHOUT_THE_INDEX = {"no table": "DROP TABLE crm_event_ids", "no rows": "DELETE FROM crm_event_ids"}


def _index_rows(store: Path) -> int | None:
    """Rows of the store's event-id index; None without its table. (Read as the file is: no
    -wal or -shm made beside it, and no writer is at work.)"""
    with contextlib.closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro&immutable=1", uri=True)) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'crm_event_ids'").fetchall():
            return None
        return int(con.execute("SELECT count(*) FROM crm_event_ids").fetchone()[0])


@pytest.mark.parametrize("old", _WITHOUT_THE_INDEX.values(), ids=_WITHOUT_THE_INDEX.keys())
def test_a_copy_written_before_the_event_id_index_is_read_without_indexing_it(
    copy: Path, tmp_path: Path, old: str
) -> None:
    """Opening such a ledger indexed it first, which a read-only copy refused: every read
    command failed ("no such table: crm_event_ids", or "is read-only")."""
    env = {"CRM_LEDGER_STORE": str(copy), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    expected = {
        args: run_cli(*args, env={**env, "CRM_LEDGER_STORE": str(tmp_path / "ledger.sqlite")})
        for args in (("audit", "verify", "--source", "ledger"), ("audit", "head"), ("customer", "show", "c1"))
    }
    with contextlib.closing(sqlite3.connect(copy)) as con:
        con.execute(old)
        con.commit()
    before = _index_rows(copy)
    for args, shown in expected.items():
        assert shown.returncode == 0, (args, shown.stderr)
        result = _run_in_read_only_folder(copy.parent, *args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.split("(")[0] == shown.stdout.split("(")[0], args  # (head: when it was read)
    assert _index_rows(copy) == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["ledger.sqlite"]


@pytest.mark.parametrize("old", _WITHOUT_THE_INDEX.values(), ids=_WITHOUT_THE_INDEX.keys())
def test_a_read_only_ledger_without_the_index_finds_its_facts_by_event_id(
    copy: Path, settings: Settings, old: str
) -> None:
    with contextlib.closing(sqlite3.connect(settings.store)) as con:
        held_ids = [str(event_id) for (event_id,) in con.execute("SELECT event_id FROM crm_event_ids")]
    with contextlib.closing(sqlite3.connect(copy)) as con:
        con.execute(old)
        con.commit()
    before = _index_rows(copy)
    # Opened as the read commands open it: SQLite's mode=ro refuses every write.
    app = open_ledger(Settings(store=str(copy)), read_only=True)
    try:
        for event_id in held_ids:
            held = app.recorded_fact(event_id)
            assert held is not None and held.event_id == event_id
        assert app.recorded_fact("no-such-event") is None
    finally:
        app.close()
    assert _index_rows(copy) == before
    # Opened for writing, it is indexed as before.
    LedgerApplication(Settings(store=str(copy)).eventsourcing_env()).close()
    assert _index_rows(copy) == len(held_ids) == 5


def test_a_copy_with_a_write_ahead_log_and_no_index_file_is_refused_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    """A copy taken as files while a writer was at work: its -wal holds committed transactions,
    and without its -shm file SQLite can read them only by making one, which a read-only folder
    refuses. It said "cannot be opened: check that its folder exists and is writable"."""
    _recorded(settings)
    folder = tmp_path / "copy"
    folder.mkdir()
    store = folder / "ledger.sqlite"
    _copied(Path(settings.store), store)
    # A committed transaction left in the -wal (no checkpoint at close), as a file copy finds it.
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute('PRAGMA user_version = 7')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(store)], check=True)
    store.with_name(store.name + "-shm").unlink()
    assert store.with_name(store.name + "-wal").stat().st_size > 0
    env = {"CRM_LEDGER_STORE": str(store), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    result = _run_in_read_only_folder(folder, "audit", "verify", "--source", "ledger", env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "ledger.sqlite-wal holds transactions not yet in the file" in result.stderr
    assert "Traceback" not in result.stderr
