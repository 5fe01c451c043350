"""`demo --dir` recreates its folder: only a new, empty or earlier demo folder is ever removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crm_cli.demo import DEMO_MARK, _recreate
from crm_ledger.errors import CrmLedgerError
from tests.helpers import run_cli, run_cli_on_full_disk


def test_a_folder_with_other_files_is_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    (folder / "keep").mkdir(parents=True)
    (folder / "keep" / "notes.txt").write_text("mine")
    (folder / "ledger.sqlite").write_text("a demo's")
    with pytest.raises(CrmLedgerError, match="holds keep, which a demo did not write"):
        _recreate(folder)
    assert (folder / "keep" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("given", ["", ".", ".."])
def test_the_folder_worked_in_or_above_is_refused(tmp_path: Path, given: str) -> None:
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    (inside / "history.jsonl").write_text("{}")
    before = os.getcwd()
    os.chdir(inside)
    try:
        with pytest.raises(CrmLedgerError, match="give one below this one"):
            _recreate(Path(given))
    finally:
        os.chdir(before)
    assert (inside / "history.jsonl").exists()


def test_an_earlier_demo_folder_is_recreated_empty(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    (folder / "projections.log" / "ledger").mkdir(parents=True)
    for name in ("history.jsonl", "rejects.jsonl", "ledger.sqlite", "ledger.sqlite-wal", "projections.duckdb"):
        (folder / name).write_text("x")
    _recreate(folder)
    assert folder.is_dir() and [p.name for p in folder.iterdir()] == [DEMO_MARK]
    _recreate(tmp_path / "new" / "demo")
    assert (tmp_path / "new" / "demo" / DEMO_MARK).is_file()


def test_a_ledgers_own_folder_is_never_taken_for_a_demos(tmp_path: Path) -> None:
    # `.crm-ledger` holds only names a demo writes too: `demo --dir .crm-ledger` emptied it,
    # the ledger (the facts every read model is built from) lost.
    folder = tmp_path / ".crm-ledger"
    (folder / "projections.log" / "ledger").mkdir(parents=True)
    for name in ("ledger.sqlite", "projections.duckdb", "rejects.jsonl"):
        (folder / name).write_text("the ledger's")
    with pytest.raises(CrmLedgerError, match="holds a ledger or projection database no demo made"):
        _recreate(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "ledger.sqlite", "projections.duckdb", "projections.log", "rejects.jsonl"
    ]
    # A demo's own folder is marked, and recreated.
    _recreate(tmp_path / "demo")
    (tmp_path / "demo" / "ledger.sqlite").write_text("a demo's")
    _recreate(tmp_path / "demo")
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [DEMO_MARK]


def test_a_full_disk_under_the_demo_names_the_demo_s_own_files(tmp_path: Path) -> None:
    """A full disk while the demo wrote its history was "disk full" naming no file, and while
    it ingested, the error named the default store (.crm-ledger/ledger.sqlite), not the
    demo's."""
    disk = tmp_path / "disk"
    disk.mkdir()
    demo = disk / "demo"
    args = ("demo", "--dir", str(demo), "--customers", "40", "--employees", "4", "--months", "1")
    env = {"CRM_LEDGER_STORE": str(tmp_path / "default.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    no_room = run_cli_on_full_disk(disk, 0, *args, env=env)
    assert no_room.returncode == 1 and no_room.stderr.strip().splitlines() == [
        f"error: disk full ({demo / DEMO_MARK}): free some space; nothing was half-written; "
        "run the same command again"
    ], no_room.stderr
    assert list(demo.iterdir()) == []
    # Room for the demo's mark, not for its history.
    no_history = run_cli_on_full_disk(disk, 16_384, *args, env=env)
    assert no_history.returncode == 1 and no_history.stderr.strip().splitlines() == [
        f"error: disk full ({demo / 'history.jsonl'}): free some space; nothing was half-written; "
        "run the same command again"
    ], no_history.stderr
    history = tmp_path / "history.jsonl"
    run_cli("generate", "--customers", "40", "--employees", "4", "--months", "1", "--seed", "42",
            "--out", str(history), check=True)
    # Room for the history, not for the ledger made of it.
    no_ledger = run_cli_on_full_disk(disk, history.stat().st_size + 65_536, *args, env=env)
    assert no_ledger.returncode == 1, no_ledger.stderr
    assert f"error: event store {demo / 'ledger.sqlite'}: " in no_ledger.stderr, no_ledger.stderr
    assert run_cli(*args, env=env).returncode == 0
