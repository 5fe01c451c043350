"""Data files written once beside the decoded log, then committed to it by reference.

A decoder worker's commit can lose the race to another worker's commit; it is then tried
again against the newer snapshot, its partitions' positions checked again (see
projections.decoders). Written with `write_deltalake` against the snapshot, every attempt
encoded and wrote the batch's Parquet file anew, and the longer the write, the likelier the
race: measured at 150,000 rows a batch on a loaded machine, one worker lost 4 races in a run
and spent half its commit time writing the same rows again.

Here the rows are written once, by delta-rs itself, into the worker's private staging table
inside the log's directory (so the file and its statistics are exactly what a direct write
produces), the file is moved into the log's root (a rename: same file system), and each
attempt commits only its add action, which takes milliseconds. A file whose commit is
refused as stale stays unreferenced, like the file of any failed write, until `vacuum`.
The staging table is removed when the worker stops. A killed worker's `_staging/<id>/` holds
nothing the log refers to; each worker holds an exclusive lock on its folder's lock file
while it runs, so the next worker to start removes every folder whose lock it can take (its
owner is gone) and never one in use.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
from deltalake import PostCommitHookProperties, write_deltalake
from deltalake.transaction import AddAction

from crm_ledger.errors import CrmLedgerError
from projections.log import native_panics_hidden, writer_properties

#: Where the workers' staging tables live inside a log's directory (Delta readers never
#: list directories: they read the files the log names).
STAGING_DIR = "_staging"
#: Held locked by the worker that owns a staging folder, for as long as it runs.
LOCK_FILE = "owner.lock"


class Stager:
    """One worker's staging table: writes rows as Parquet files for the log to commit."""

    def __init__(self, log_path: Path) -> None:
        self.root = log_path
        self.path = log_path / STAGING_DIR / uuid.uuid4().hex
        self._version = -1
        # Locked before it gets its name, so no other worker ever sees it unlocked. The lock
        # is held until the process ends, killed or not: the kernel lets go of it then.
        making = self.path.with_name(f".new-{self.path.name}")
        making.mkdir(parents=True)
        self._lock = os.open(making / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        making.rename(self.path)
        remove_abandoned(log_path)

    def stage(self, table: pa.Table) -> list[AddAction]:
        """Write the rows once; the add actions that commit their files to the log."""
        with native_panics_hidden():
            write_deltalake(
                str(self.path),
                table,
                mode="append",
                writer_properties=writer_properties(),
                post_commithook_properties=PostCommitHookProperties(
                    create_checkpoint=False, cleanup_expired_logs=False
                ),
            )
        self._version += 1
        entry = self.path / "_delta_log" / f"{self._version:020d}.json"
        if not entry.exists():
            raise CrmLedgerError(f"the staging table {self.path} is not at version {self._version}")
        actions = []
        for line in entry.read_text(encoding="utf-8").splitlines():
            add = json.loads(line).get("add")
            if add is None:
                continue
            (self.path / add["path"]).rename(self.root / add["path"])
            actions.append(
                AddAction(
                    add["path"],
                    add["size"],
                    add["partitionValues"],
                    add["modificationTime"],
                    add["dataChange"],
                    add["stats"],
                )
            )
        return actions

    def close(self) -> None:
        """Remove the staging table (its files have all moved into the log)."""
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)


def remove_abandoned(log_path: Path) -> list[Path]:
    """Remove the staging folders of workers that are gone (their lock is free); which ones."""
    removed = []
    for folder in sorted((log_path / STAGING_DIR).glob("*")):
        try:
            handle = os.open(folder / LOCK_FILE, os.O_RDWR)
        except OSError:
            continue  # no lock file: being made or being removed
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its worker runs
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(handle)
    return removed
