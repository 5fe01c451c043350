"""The decoder workers keep `notification_id` and `chain` from any header layout."""

from __future__ import annotations

from projections.decoders import _kept_headers


def _relayed(nid: int) -> list[tuple[str, bytes]]:
    return [
        ("event_id", b"e"),
        ("event_type", b"T"),
        ("notification_id", str(nid).encode()),
        ("schema_version", b"1"),
        ("chain", f"{nid:064x}".encode()),
    ]


def test_the_relays_layout_is_read_by_position() -> None:
    assert _kept_headers([_relayed(7), _relayed(8)]) == ([7, 8], [f"{7:064x}", f"{8:064x}"])


def test_other_layouts_are_searched() -> None:
    shuffled = list(reversed(_relayed(9)))
    assert _kept_headers([_relayed(7), shuffled, [], [("chain", b"ab")]]) == (
        [7, 9, None, None],
        [f"{7:064x}", f"{9:064x}", None, "ab"],
    )


def test_messages_without_headers_keep_none() -> None:
    assert _kept_headers([_relayed(3), None]) == ([3, None], [f"{3:064x}", None])
