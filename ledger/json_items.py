"""The items of a JSON file holding many records, read as a stream.

Exports come as one JSON array (`[{...}, {...}]`, as the CFPB database's JSON download)
or as objects one after another (JSON lines). Each item's extent is found by a scanner that
follows only strings and brackets, and the item is then parsed on its own: a bad item is
rejected alone, and the file is never held in memory whole (a multi-GB array is one line).
Only a break in the structure itself (a file that ends inside an item or before its array
is closed, text after the array) ends the reading: the items before it are kept and the
rest is one rejected record. A comma out of place in an array (`[,{..}]`, `[{..},,{..}]`,
`[{..},]`) is not JSON either: it is one reject where it stands, and the items around it
are read. An item with no comma before it (`[{..} {..}]`) is rejected: whether the file
meant two items or lost text between them, it is not JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ledger.errors import ValidationError
from ledger.inputs import UTF8_BOM, input_damage

#: Read this much at a time.
CHUNK_BYTES = 1 << 20
#: What moves the scanner: a string's opening quote or a bracket.
_NEXT = re.compile(rb'["\[\]{}]')
#: A string's characters up to its closing quote or the buffer's end (escapes skipped whole).
_STRING_PART = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.S)
#: What separates items: white space, and commas in an array.
_BETWEEN = re.compile(rb"[ \t\r\n,]*")
#: The usual gap before an item, in one match: white space with at most one comma (group 1),
#: then the item's first byte.
_USUAL_GAP = re.compile(rb"[ \t\r\n]*(?:(,)[ \t\r\n]*)?(?=[^ \t\r\n,\]])")
#: A bare value at the top (a number, true, false, null, or garbage) up to the next separator.
_BARE = re.compile(rb'[^ \t\r\n,\[\]{}"]*')


@dataclass(frozen=True)
class JsonItem:
    """One item: its location, its text (None when it was too large or the file broke off),
    its size in bytes, and why it cannot be read when it cannot."""

    location: str
    text: bytes | None
    size: int
    error: ValidationError | None = None


class _Buffer:
    """The file's bytes from the current item on, read in chunks as the scanner needs them,
    with the line number of any position in them (counted once, as the scanner goes)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.data = b""
        self.at_end = False
        self._line = 1  # the line of position `_counted`
        self._counted = 0

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
        """Forget the first `count` bytes (positions shift down by as much)."""
        self.line_of(count)
        self.data = self.data[count:]
        self._counted = 0

    def line_of(self, position: int) -> int:
        """The line `position` is on; positions asked for must not go back."""
        self._line += self.data.count(b"\n", self._counted, position)
        self._counted = position
        return self._line


def json_items(name: str, handle: IO[bytes], max_record_bytes: int) -> Iterator[JsonItem]:
    """Every top-level item of a JSON array, or every value of a file of JSON values.

    Locations are `name[i]` (the 0-based index, as `jq '.[i]'`) in an array and `name:line`
    (the line the value starts on) otherwise. An item larger than `max_record_bytes` comes
    with no text and an error, and the reading goes on after it.
    """
    buffer = _Buffer(handle)
    while len(buffer.data) < len(UTF8_BOM) and buffer.more():
        pass
    if buffer.data.startswith(UTF8_BOM):
        buffer.drop(len(UTF8_BOM))
    position = _skip(buffer, 0)[0]
    if position is None:
        return  # empty or white space only
    in_array = buffer.data[position : position + 1] == b"["
    if in_array:
        position += 1
    index = 0
    while True:
        position, commas = _skip(buffer, position)
        if position is None:
            # A damaged stream ends early: its own reject says so, once.
            if in_array and input_damage(handle) is None:
                yield _broken(name, index, "the file ends before the array is closed (cut short?)")
            return
        if in_array and buffer.data[position : position + 1] == b"]":
            if commas:
                yield _broken(name, index, "a comma before the array's closing ] (not JSON)")
            rest = _skip(buffer, position + 1)[0]
            if rest is not None:
                yield _broken(name, index, "text after the array's closing ]")
            return
        holes = commas - (1 if index else 0)
        if in_array and holes > 0:
            # Each comma beyond the one between items holds an empty item, as a lenient reader
            # counts them, so the items after keep the index that reader gives them.
            yield _empty_items(name, index, holes)
            index += holes
        location = f"{name}[{index}]" if in_array else f"{name}:{buffer.line_of(position)}"
        extent = _item_end(buffer, position, max_record_bytes)
        if extent.end is None:
            if input_damage(handle) is None:
                error = ValidationError("(record)", "the file ends inside this item")
                yield JsonItem(location, None, extent.size, error)
            return
        if extent.size > max_record_bytes:
            error = ValidationError("(record)", f"larger than {max_record_bytes} bytes ({extent.size})")
            yield JsonItem(location, None, extent.size, error)
        elif in_array and index and not commas:
            error = ValidationError("(record)", "no comma between this item and the one before it (not JSON)")
            yield JsonItem(location, None, extent.size, error)
        else:
            yield JsonItem(location, buffer.data[extent.begin : extent.end], extent.size)
        position = extent.end
        index += 1
        if position > CHUNK_BYTES:
            buffer.drop(position)
            position = 0


def _broken(name: str, index: int, reason: str) -> JsonItem:
    return JsonItem(f"{name}[{index}]", None, 0, ValidationError("(file)", reason))


def _empty_items(name: str, index: int, count: int) -> JsonItem:
    """The reject for `count` empty items from `index` on (`[,{..}]`, `[{..},,{..}]`)."""
    what = "an empty item" if count == 1 else f"{count} empty items"
    reason = f"{what}: a comma with no value before it (not JSON)"
    return JsonItem(f"{name}[{index}]", None, 0, ValidationError("(record)", reason))


def _skip(buffer: _Buffer, position: int) -> tuple[int | None, int]:
    """The position of the next thing after separators (None at the end of the file), and
    the commas passed on the way (an array wants one between items, none after `[` or
    before `]`). A plain tuple: one is made per item on the bulk path, and it is the cheapest."""
    usual = _USUAL_GAP.match(buffer.data, position)
    if usual:
        # The usual gap in one C call: counting commas costs well-formed input next to nothing.
        return usual.end(), 1 if usual.lastindex else 0
    commas = 0
    while True:
        end = _matched_end(_BETWEEN, buffer.data, position)
        commas += buffer.data.count(b",", position, end)
        if end < len(buffer.data):
            return end, commas
        buffer.drop(end)  # only separators so far: a file of white space costs no memory
        position = 0
        if not buffer.more():
            return None, commas


@dataclass(frozen=True)
class _Extent:
    """Where an item lies in the buffer, `begin` to `end` (None: the file ended first), and
    its whole size (more than `end - begin` when a too-large item was dropped on the way)."""

    begin: int
    end: int | None
    size: int


def _matched_end(pattern: re.Pattern[bytes], data: bytes, position: int) -> int:
    """Where a match of `pattern` (which matches the empty string too) at `position` ends."""
    match = pattern.match(data, position)
    return match.end() if match else position


def _item_end(buffer: _Buffer, start: int, limit: int) -> _Extent:
    """The extent of the item starting at `start`.

    The scan resumes where it stopped when more of the file is read (a long string or bare
    value is not scanned again), and an item beyond `limit` is scanned on with the buffer
    emptied behind the scanner, so a huge item costs neither time nor memory; its extent is
    then in the shortened buffer.
    """
    bare = buffer.data[start : start + 1] not in (b"{", b"[", b'"')
    depth, scan, dropped, in_string = 0, start, 0, False
    while True:
        data = buffer.data
        if bare:
            scan = _matched_end(_BARE, data, scan)
            if scan < len(data):
                end = max(scan, start + 1) if dropped == 0 else scan
                return _Extent(start, end, dropped + end - start)
        elif in_string:
            scan = _matched_end(_STRING_PART, data, scan)
            if scan < len(data) and data[scan : scan + 1] == b'"':
                scan += 1
                in_string = False
                if depth == 0:
                    return _Extent(start, scan, dropped + scan - start)
                continue
        else:
            match = _NEXT.search(data, scan)
            if match is not None:
                token = match.group()
                scan = match.end()
                if token == b'"':
                    in_string = True
                    continue
                depth += 1 if token in (b"{", b"[") else -1
                if depth == 0:
                    return _Extent(start, scan, dropped + scan - start)
                continue
            scan = len(data)
        # The buffer is scanned to `scan` (a string's dangling backslash is left for the next read).
        if dropped + scan - start > limit:
            # Too large: forget what was scanned; only the end is looked for.
            dropped += scan - start
            buffer.drop(scan)
            start = scan = 0
        if not buffer.more():
            if bare:
                return _Extent(start, scan, dropped + scan - start)
            return _Extent(start, None, dropped + len(buffer.data) - start)
