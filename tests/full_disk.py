"""A small disk (a tmpfs in a mount namespace of its own) that a service runs on and a test fills.

`run_cli_on_full_disk` mounts a disk for one command; a service (a broker, a database server)
outlives the command that starts it, and its data has to outlive the service (to restart it
on the same disk once there is room again). So a holder process keeps the namespace alive,
commands are started inside it with `nsenter`, and the test reaches the disk's files from
outside through `/proc/HOLDER/root`, which resolves paths in the holder's mounts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Mounts a tmpfs of $2 KiB (owned by uid $3 and gid $4) on the folder $1, says so, then waits:
#: the namespace lives as long as this process. Exit 97: no such disk can be had here.
_HOLD = r"""
mount -t tmpfs -o "size=$2k,uid=$3,gid=$4,mode=0700" tmpfs "$1" || exit 97
echo mounted
exec sleep infinity
"""

_FILLER = ".filler"


class SmallDisk:
    """A tmpfs mounted on `folder` in a namespace of its own (see the module's docstring)."""

    def __init__(self, folder: Path, holder: subprocess.Popen[str]) -> None:
        self.folder = folder
        self._holder = holder

    @property
    def enter(self) -> list[str]:
        """The command prefix that runs a command in the disk's namespace."""
        prefix = ["nsenter", "-t", str(self._holder.pid), "-m"]
        if os.geteuid() != 0:
            prefix += ["-U", "--preserve-credentials"]
        return prefix

    def inside(self, path: Path) -> Path:
        """`path` (under the folder) as the namespace sees it."""
        return Path(f"/proc/{self._holder.pid}/root") / path.resolve().relative_to("/")

    def free_bytes(self) -> int:
        stats = os.statvfs(self.inside(self.folder))
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take all the room but `leave` bytes with one file (real ENOSPC for whoever writes)."""
        room = self.free_bytes() - leave
        if room > 0:
            subprocess.run(["fallocate", "-l", str(room), str(self.inside(self.folder / _FILLER))], check=True)

    def free_up(self) -> None:
        (self.inside(self.folder / _FILLER)).unlink(missing_ok=True)


@contextmanager
def small_disk(folder: Path, size_kib: int, owner: Sequence[int] = (0, 0)) -> Iterator[SmallDisk]:
    """A tmpfs of `size_kib` on `folder`, owned by `owner` (uid, gid); unmounted (its files gone)
    when the block ends. Skipped where a mount namespace cannot be had."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None or shutil.which("fallocate") is None:
        pytest.skip("no unshare, nsenter or fallocate here: no small disk can be mounted")
    folder.mkdir(parents=True, exist_ok=True)
    unshare = ["unshare", "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "-r")  # a user namespace of its own may mount a tmpfs
    uid, gid = owner if os.geteuid() == 0 else (0, 0)
    holder = subprocess.Popen(
        [*unshare, "sh", "-c", _HOLD, "sh", str(folder), str(size_kib), str(uid), str(gid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "mounted":
            holder.wait(timeout=30)
            pytest.skip(f"no small disk can be mounted here: {holder.stderr.read().strip() if holder.stderr else ''}")
        yield SmallDisk(folder, holder)
    finally:
        holder.kill()
        holder.wait(timeout=30)
