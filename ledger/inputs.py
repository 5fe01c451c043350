"""Input files as byte streams, plain or compressed as they were downloaded.

Public exports usually come compressed (the CFPB database as `complaints.csv.zip`, dumps
as `.gz`), and unpacking a multi-GB file first doubles the disk it needs. A name ending
in `.zip` (an archive holding one file), `.gz`, `.bz2` or `.xz` is read as a decompressed
stream, anything else as it is. The name decides, never the first bytes: a plain JSON
line may well begin with `BZh` or `PK`.

A compressed stream can be damaged (a download cut short, a flipped byte). The reader
then ends at the damage instead of raising mid-import: the records read before it land
like any others and the damage is reported as one rejected record (see `InputStream.damage`),
so a rerun with the repaired file adds only what was missing.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ledger.errors import ValidationError

#: A UTF-8 byte-order mark: accepted at a file's start, and dropped before its first record.
UTF8_BOM = b"\xef\xbb\xbf"
#: The compression each name ending stands for.
_COMPRESSIONS = {".zip": "zip", ".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".xz": "xz"}
#: Decompressed bytes asked for per read.
_READ_BYTES = 64 << 10
#: What a damaged compressed stream raises while it is read.
_DAMAGE = (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, ValueError)


def compression(path: Path) -> str | None:
    """The compression `path`'s name gives ('zip', 'gzip', 'bzip2', 'xz'), or None for a plain file."""
    return _COMPRESSIONS.get(path.suffix.lower())


def _zip_member(archive: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    """The one file a downloaded archive holds (folders and macOS resource forks aside)."""
    files = [
        info for info in archive.infolist() if not info.is_dir() and not info.filename.startswith("__MACOSX/")
    ]
    if len(files) != 1:
        names = ", ".join(info.filename for info in files[:5]) or "nothing"
        raise ValidationError(
            "(file)", f"{path.name}: a zip archive is read only when it holds one file; it holds {names}"
        )
    return files[0]


def input_size(path: Path) -> int | None:
    """The bytes a reader of `path` will count (for progress), or None when the format does not say.

    A UTF-8 byte-order mark is left out: the readers drop it before their first record, so
    a total that held it ended the bar short of 100%.
    """
    size = _data_size(path)
    if size is not None and leading_bytes(path, len(UTF8_BOM)) == UTF8_BOM:
        return size - len(UTF8_BOM)
    return size


def _data_size(path: Path) -> int | None:
    """The bytes of data in `path` (decompressed), or None when the format does not say.

    A zip records its member's size; gzip records the size modulo 4 GiB, so the smallest
    value at least as large as the compressed file is taken (text compresses, it never grows).
    """
    kind = compression(path)
    size = path.stat().st_size
    if kind is None:
        return size
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                return _zip_member(archive, path).file_size
        if kind == "gzip" and size >= 4:
            with path.open("rb") as handle:
                handle.seek(-4, io.SEEK_END)
                modulo = int.from_bytes(handle.read(4), "little")
            return modulo + ((max(0, size - modulo) + (1 << 32) - 1) >> 32 << 32)
    except (OSError, zipfile.BadZipFile):
        return None
    return None


#: Stream openers of the compressions other than zip (an archive, opened by member).
_OPENERS: dict[str, type[gzip.GzipFile] | type[bz2.BZ2File] | type[lzma.LZMAFile]] = {
    "gzip": gzip.GzipFile,
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}

#: Name endings of the compressed forms `open_input` reads.
COMPRESSED_SUFFIXES = frozenset(_COMPRESSIONS)


def data_suffix(path: Path) -> str:
    """The suffix of the data inside `path`: '.csv' for `a.csv`, `a.csv.gz` and a zip holding `a.csv`."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    if suffixes:
        return suffixes[-1]
    if path.is_file() and compression(path) == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                return Path(_zip_member(archive, path).filename).suffix.lower()
        except (OSError, zipfile.BadZipFile, ValidationError):
            pass
    return path.suffix.lower()


class InputStream(io.RawIOBase):
    """A decompressing reader that ends at damage instead of raising, and says where it was."""

    def __init__(self, inner: IO[bytes] | io.BufferedIOBase) -> None:
        super().__init__()
        self._inner = inner
        self._lines = 0
        self._bytes = 0
        #: Why the stream ended early, as a rejected record's error; None while it is sound.
        self.damage: ValidationError | None = None
        #: The line the damage fell on (the reader's numbering, from 1).
        self.damaged_line = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.damage is not None:
            return 0
        try:
            # Small reads: a damaged stream loses only what was decompressed in the failing read.
            data = self._inner.read(min(len(buffer), _READ_BYTES))
        except _DAMAGE as error:
            self.damaged_line = self._lines + 1
            self.damage = ValidationError(
                "(file)",
                f"compressed data damaged after {self._bytes:,} bytes ({error or type(error).__name__});"
                " reading stopped there",
            )
            return 0
        count = len(data)
        buffer[:count] = data
        self._bytes += count
        self._lines += data.count(b"\n")
        return count

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[IO[bytes]]:
    """`path` as a buffered byte stream, decompressed when it is compressed (see the module doc).

    A plain file is returned as it is; a compressed one as a buffered `InputStream`, whose
    damage the caller checks after reading (`input_damage`).
    """
    kind = compression(path)
    with contextlib.ExitStack() as stack:
        if kind is None:
            yield stack.enter_context(path.open("rb"))
            return
        inner: IO[bytes] | io.BufferedIOBase
        if kind == "zip":
            try:
                archive = stack.enter_context(zipfile.ZipFile(path))
            except zipfile.BadZipFile as error:
                raise ValidationError(
                    "(file)", f"{path.name}: not a readable zip archive ({error})"
                ) from None
            inner = stack.enter_context(archive.open(_zip_member(archive, path)))
        else:
            inner = stack.enter_context(_OPENERS[kind](path, "rb"))
        yield stack.enter_context(io.BufferedReader(InputStream(inner), 1 << 20))


def input_damage(handle: IO[bytes]) -> tuple[int, ValidationError] | None:
    """(line, error) when `handle` from `open_input` ended at damaged data, else None."""
    raw = getattr(handle, "raw", None)
    if isinstance(raw, InputStream) and raw.damage is not None:
        return raw.damaged_line, raw.damage
    return None


#: Byte-order marks of text that is not UTF-8 (UTF-32's little-endian mark starts as UTF-16's:
#: it is looked for first).
_NOT_UTF8 = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


#: How much of a file's start is looked at for its encoding and line endings.
LEADING_BYTES = 1 << 16


def leading_bytes(path: Path, count: int = LEADING_BYTES) -> bytes:
    """The first `count` bytes of the data in `path` (decompressed)."""
    with open_input(path) as handle:
        return handle.read(count)


def refuse_unreadable_text(name: str, start: bytes) -> None:
    """Refuse, naming it, a file whose text every record would be misread from (`start`: its
    first bytes), before any record is read.

    - UTF-16 or UTF-32 text (spreadsheets save "Unicode text" this way): read as UTF-8 it
      gives one confusing reject per line, NUL bytes everywhere.
    - Lines ended by a carriage return alone (classic Mac, a spreadsheet's "CSV
      (Macintosh)"): the whole file reads as one line, a CSV's header as every row's.
    """
    for mark, encoding in _NOT_UTF8:
        if start.startswith(mark):
            raise ValidationError("(file)", f"{name}: {encoding} text; save it as UTF-8 and try again")
    first_break = start.find(b"\r")
    if b"\n" not in start and first_break >= 0 and start[first_break + 1 :].strip():
        raise ValidationError(
            "(file)",
            f"{name}: lines end with a carriage return alone (classic Mac text); save it with "
            "LF or CRLF line endings (e.g. `tr '\\r' '\\n'`) and try again",
        )


def readable_start(path: Path) -> bytes:
    """The first bytes of the data in `path`, once `refuse_unreadable_text` accepts them: what
    every reader of records checks before its first record."""
    start = leading_bytes(path)
    refuse_unreadable_text(path.name, start)
    return start
