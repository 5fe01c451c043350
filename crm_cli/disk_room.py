"""Whether a disk has next to no room left: how a fault that does not say so is told as a full disk.

SQLite reports ENOSPC as "disk I/O error" in some writes, and a Kafka broker whose log folder
filled up exits while starting with only a fault in reading its index files: the room left
under the file or folder is what tells a full disk from the other causes.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Less room than this for the folder's user: a full disk.
NEARLY_FULL = 1 << 20


def nearly_full(folder: Path) -> bool:
    """Whether the disk holding `folder` has less than `NEARLY_FULL` bytes left for its user
    (False when it cannot be asked)."""
    try:
        stats = os.statvfs(folder)
    except (OSError, ValueError):
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL
