"""The items of a JSON file holding many records, read as a stream.

Exports come as one JSON array (`[{...}, {...}]`, as the CFPB database's JSON download)
or as objects one after another (JSON lines). Each item's extent is found by a scanner that
follows only strings and brackets, and the item is then parsed on its own: a bad item is
rejected alone, and the file is never held in memory whole (a multi-GB array is one line).
Only a break in the structure itself (a file that ends inside an item or before its array
is closed, text after the array) ends the reading: the items before it are kept and the
rest is one rejected record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ledger.errors import ValidationError

#: Read this much at a time.
CHUNK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
#: What moves the scanner: a string's opening quote or a bracket.
_NEXT = re.compile(rb'["\[\]{}]')
#: The rest of a string after its opening quote (escapes skipped); no match: not in the buffer yet.
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.S)
#: What separates items: white space, and commas in an array.
_BETWEEN = re.compile(rb"[ \t\r\n,]*")
#: A bare value at the top (a number, true, false, null, or garbage) up to the next separator.
_BARE = re.compile(rb'[^ \t\r\n,\[\]{}"]+')


@dataclass(frozen=True)
class JsonItem:
    """One item: its location, its text (None when it was too large or the file broke off),
    its size in bytes, and why it cannot be read when it cannot."""

    location: str
    text: bytes | None
    size: int
    error: ValidationError | None = None


class _Buffer:
    """The file's bytes from the current item on, read in chunks as the scanner needs them."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.data = b""
        self.at_end = False

    def more(self) -> bool:
        """Read another chunk; False at the end of the file."""
        if self.at_end:
            return False
        chunk = self.handle.read(CHUNK_BYTES)
        if not chunk:
            self.at_end = True
            return False
        self.data += chunk
        return True

    def drop(self, count: int) -> None:
        self.data = self.data[count:]


def json_items(name: str, handle: IO[bytes], max_record_bytes: int) -> Iterator[JsonItem]:
    """Every top-level item of a JSON array, or every value of a file of JSON values.

    Locations are `name[i]` (the 0-based index, as `jq '.[i]'`) in an array and `name:line`
    (the line the value starts on) otherwise. An item larger than `max_record_bytes` comes
    with no text and an error, and the reading goes on after it.
    """
    buffer = _Buffer(handle)
    while len(buffer.data) < len(_BOM) and buffer.more():
        pass
    if buffer.data.startswith(_BOM):
        buffer.drop(len(_BOM))
    position = _skip(buffer, 0)
    if position is None:
        return  # empty or white space only
    in_array = buffer.data[position : position + 1] == b"["
    if in_array:
        position += 1
    line, counted, index = 1, 0, 0
    while True:
        position = _skip(buffer, position)
        if position is None:
            if in_array:
                yield _broken(name, index, "the file ends before the array is closed (cut short?)")
            return
        if in_array and buffer.data[position : position + 1] == b"]":
            rest = _skip(buffer, position + 1)
            if rest is not None:
                yield _broken(name, index, "text after the array's closing ]")
            return
        line += buffer.data.count(b"\n", counted, position)
        location = f"{name}[{index}]" if in_array else f"{name}:{line}"
        extent = _item_end(buffer, position, max_record_bytes)
        if extent.end is None:
            error = ValidationError("(record)", "the file ends inside this item")
            yield JsonItem(location, None, extent.size, error)
            return
        if extent.size > max_record_bytes:
            error = ValidationError("(record)", f"larger than {max_record_bytes} bytes ({extent.size})")
            yield JsonItem(location, None, extent.size, error)
        else:
            yield JsonItem(location, buffer.data[extent.begin : extent.end], extent.size)
        line += extent.lines_dropped + buffer.data.count(b"\n", extent.begin, extent.end)
        position = counted = extent.end
        index += 1
        if position > CHUNK_BYTES:
            buffer.drop(position)
            position = counted = 0


def _broken(name: str, index: int, reason: str) -> JsonItem:
    return JsonItem(f"{name}[{index}]", None, 0, ValidationError("(file)", reason))


def _skip(buffer: _Buffer, position: int) -> int | None:
    """The position of the next thing after separators, or None at the end of the file."""
    while True:
        match = _BETWEEN.match(buffer.data, position)
        position = match.end() if match else position
        if position < len(buffer.data):
            return position
        if not buffer.more():
            return None


@dataclass(frozen=True)
class _Extent:
    """Where an item lies in the buffer: `begin` to `end` (None: the file ended first), its
    whole size, and the lines of the part of it dropped from the buffer (a too-large item)."""

    begin: int
    end: int | None
    size: int
    lines_dropped: int = 0


def _item_end(buffer: _Buffer, start: int, limit: int) -> _Extent:
    """The extent of the item starting at `start`.

    An item beyond `limit` is scanned on with the buffer emptied behind the scanner, so a
    huge item costs no memory; its extent is then in the shortened buffer.
    """
    data = buffer.data
    first = data[start : start + 1]
    if first not in (b"{", b"[", b'"'):
        while True:
            match = _BARE.match(buffer.data, start)
            end = match.end() if match else start + 1
            if end < len(buffer.data) or not buffer.more():
                return _Extent(start, end, end - start)
    depth, scan, dropped, lines = 0, start, 0, 0
    while True:
        data = buffer.data
        match = _NEXT.search(data, scan)
        if match is None:
            scan = len(data)
        else:
            token = match.group()
            if token == b'"':
                rest = _STRING_REST.match(data, match.end())
                if rest is not None:
                    scan = rest.end()
                    if depth == 0:
                        return _Extent(start, scan, dropped + scan - start, lines)
                    continue
                scan = match.start()  # the string goes on past the buffer
            else:
                scan = match.end()
                depth += 1 if token in (b"{", b"[") else -1
                if depth == 0:
                    return _Extent(start, scan, dropped + scan - start, lines)
                continue
        if dropped + scan - start > limit:
            # Too large: forget what was scanned; only the end is looked for.
            dropped += scan - start
            lines += data.count(b"\n", start, scan)
            buffer.drop(scan)
            start = scan = 0
        if not buffer.more():
            return _Extent(start, None, dropped + len(buffer.data) - start, lines)
