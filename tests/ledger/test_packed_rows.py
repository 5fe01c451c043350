"""A batch handed to the writing process reads back as the same rows, however it was packed."""

from __future__ import annotations

from decimal import Decimal

from ledger.batch_rows import BatchRows
from ledger.write_process import packed_rows, unpacked_rows


def _rows(value: object) -> BatchRows:
    record = {
        "customer_id": "c1",
        "name": "ENC:abc",
        "flag": True,
        "n": 3,
        "x": 1.5,
        "ids": ["a"],
        "v": value,
    }
    events = [
        ("0" * 32, 1, "crm.ledger.CustomerRegistered", record, "8d6c0e0e-0b1a-4c53-9a52-000000000004"),
        (
            "f" * 32,
            7,
            "crm.ledger.CaseAccepted",
            b"\x00\x00\x00\x00\x01raw",
            "8d6c0e0e-0b1a-4c53-9a52-000000000011",
        ),
    ]
    return BatchRows(events, {"c1": b"k" * 32}, ["c9"])


def test_plain_rows_travel_marshalled_and_read_back_equal() -> None:
    rows = _rows(None)
    message = packed_rows(rows)
    assert message[0] != 0x80  # not a pickle
    back = unpacked_rows(message)
    assert back == rows
    assert [type(row) for row in back.events] == [tuple, tuple]
    assert list(back.events[0][3]) == list(rows.events[0][3])  # the record's field order too


def test_rows_marshal_refuses_travel_pickled() -> None:
    rows = _rows(Decimal("1.25"))
    message = packed_rows(rows)
    assert message[0] == 0x80  # a pickle
    assert unpacked_rows(message) == rows
