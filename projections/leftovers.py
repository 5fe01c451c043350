"""What a failed build that decoded nothing made is removed again.

A build from Kafka with no broker failed after the decoded log's folder (an empty Delta
table: a valid log of no events) and the projection database were made: the next reader
took that empty log for a complete one. Only what the run itself made is removed, and only
while its log holds no data: a build that decoded events keeps them, as a rerun resumes there.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crm_ledger.settings import log_root
from projections.log import log_slug


@contextmanager
def removed_if_nothing_decoded(db: Path, source_label: str) -> Iterator[None]:
    """Run a build into `db` from the source `source_label`; when it fails before decoding an
    event, remove the log folder, the database and the folders it made (none that were there)."""
    log = log_root(db) / log_slug(source_label)
    made = [path for path in (db.parent, log.parent, log) if not path.exists()]
    db_made = not db.exists()
    try:
        yield
    except BaseException:
        if log in made and not _holds_data(log):
            shutil.rmtree(log, ignore_errors=True)
            if db_made:
                for file in (db, db.with_name(db.name + ".wal")):
                    with contextlib.suppress(OSError):
                        file.unlink(missing_ok=True)
            for folder in (log.parent, db.parent):
                if folder in made:
                    with contextlib.suppress(OSError):  # not empty: something else is in it now
                        folder.rmdir()
        raise


def _holds_data(log: Path) -> bool:
    """Whether the log folder holds any decoded events: every append writes a Parquet file, so
    a folder without one holds none, whatever its Delta log says (or if it has none yet)."""
    return any(log.rglob("*.parquet"))
