"""`demo --dir` recreates its folder: only a new, empty or earlier demo folder is ever removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crm_cli.demo import _recreate
from crm_ledger.errors import CrmLedgerError


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
    assert folder.is_dir() and not any(folder.iterdir())
    _recreate(tmp_path / "new" / "demo")
    assert (tmp_path / "new" / "demo").is_dir()
