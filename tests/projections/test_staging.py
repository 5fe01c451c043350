"""Rows staged once and committed by reference are the rows a direct write commits."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

from projections.log import writer_properties
from projections.staging import STAGING_DIR, Stager, remove_abandoned


def _adds(path: Path) -> list[dict[str, object]]:
    adds = []
    for entry in sorted((path / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            if "add" in json.loads(line):
                adds.append(json.loads(line)["add"])
    return adds


def test_a_staged_file_commits_with_the_statistics_of_a_direct_write(tmp_path: Path) -> None:
    rows = pa.table(
        {"stream": ["t:0", "t:0", "t:1"], "position": [4, 5, 9], "payload": ['{"a":1}', None, "{}"]}
    )
    direct, staged = tmp_path / "direct", tmp_path / "staged"
    write_deltalake(str(direct), rows.slice(0, 0))
    write_deltalake(str(staged), rows.slice(0, 0))
    write_deltalake(str(direct), rows, mode="append", writer_properties=writer_properties())
    stager = Stager(staged)
    actions = stager.stage(rows)
    snapshot = DeltaTable(str(staged))
    write_deltalake(str(staged), rows.slice(0, 0), mode="append")  # another commit wins the race
    properties = CommitProperties(app_transactions=[Transaction("t:0", 5)], max_commit_retries=0)
    with pytest.raises(CommitFailedError):
        snapshot.create_write_transaction(
            actions, mode="append", schema=rows.schema, commit_properties=properties
        )
    # Tried again against the newer snapshot: the same file, not written again.
    DeltaTable(str(staged)).create_write_transaction(
        actions, mode="append", schema=rows.schema, commit_properties=properties
    )
    stager.close()
    log = DeltaTable(str(staged))
    assert log.to_pyarrow_table().equals(DeltaTable(str(direct)).to_pyarrow_table())
    assert log.transaction_version("t:0") == 5
    (direct_add,) = [a for a in _adds(direct) if a["stats"] and '"numRecords":3' in str(a["stats"])]
    (staged_add,) = [a for a in _adds(staged) if a["stats"] and '"numRecords":3' in str(a["stats"])]
    assert json.loads(str(staged_add["stats"])) == json.loads(str(direct_add["stats"]))
    assert not (staged / STAGING_DIR).exists() or not any((staged / STAGING_DIR).iterdir())


def test_a_gone_workers_staging_folder_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    write_deltalake(str(tmp_path), pa.table({"position": [1]}))
    running = Stager(tmp_path)
    running.stage(pa.table({"position": [2]}))
    gone = tmp_path / STAGING_DIR / ("0" * 32)
    gone.mkdir()
    (gone / "owner.lock").touch()  # nobody holds its lock: as after kill -9
    (gone / "part-0.parquet").write_bytes(b"rows nobody committed")
    assert remove_abandoned(tmp_path) == [gone]
    assert running.path.exists()  # its worker still holds the lock
    later = Stager(tmp_path)  # a new worker sweeps as it starts, and keeps the running one
    assert running.path.exists() and later.path.exists()
    running.close()
    later.close()
    assert not any((tmp_path / STAGING_DIR).iterdir())
