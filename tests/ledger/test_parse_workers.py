"""Parsing in worker processes yields exactly the records of parsing in the main process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from importers.generator import GeneratorConfig, write_history
from ledger import parse_workers
from ledger.ingest import AnyRecord, read_jsonl
from ledger.records import RecordParser
from schemas.registry import SchemaRegistry
from tests.factory import rec


def _view(given: AnyRecord) -> tuple[object, ...]:
    record = given.as_source()
    error = None if record.error is None else (type(record.error), str(record.error))
    return (record.location, record.fact, error, record.bytes_read, record.shown(), record.sort_time)


# Blocks smaller than the size limit (the over-long line is skipped by the reader) and larger
# (the worker refuses it); many blocks, several in flight.
@pytest.mark.parametrize("block_bytes", [300, 1000, 1 << 16])
def test_worker_parsing_gives_the_same_records(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    monkeypatch.setattr(parse_workers, "BLOCK_BYTES", block_bytes)
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=60, employees=6, months=2, seed=3, invalid_rate=0.05), handle)
    lines = history.read_bytes().splitlines()
    personal = rec(
        "CustomerRegistered", customer_id="c9", segment="smb", region="n", name="Ada", email="a@x.example"
    )
    extra = [
        b"",
        b"   ",
        b'{"a": ' * 50 + b"1" + b"}" * 50,
        b"\x00\x01\x02",
        b"[1, 2]",
        json.dumps(personal).encode(),
        json.dumps({**personal, "segment": 5}).encode(),
        b'{"type": "CustomerRegistered", "name": "Bo Hidden", ',
        b"x" * 5000,  # over the size limit below
        json.dumps(
            rec("InteractionRecorded", customer_id="c1", channel="chat", direction="inbound")
        ).encode(),
    ]
    for index, line in enumerate(extra):
        lines.insert(index * 41, line)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    parser = RecordParser(registry, now_ms=1_900_000_000_000)
    serial = [_view(r) for r in read_jsonl(path, parser, 4096, workers=0)]
    parallel = [_view(r) for r in read_jsonl(path, parser, 4096, workers=2)]
    assert len(serial) == len(lines) and any(v[2] for v in serial)
    assert parallel == serial


@pytest.mark.parametrize("block_bytes", [300, 1 << 16])
@pytest.mark.parametrize(
    "tail",
    [b"", b"\r\n", b"x" * 5000, b"x" * 5000 + b"\n", b"y" * 4097, b"z" * 4096 + b"\n", b"\n\n"],
)
def test_worker_parsing_reads_line_ends_and_the_last_line_alike(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch, block_bytes: int, tail: bytes
) -> None:
    """CRLF line ends, a last line without a line end, over-long lines at the end of the file."""
    monkeypatch.setattr(parse_workers, "BLOCK_BYTES", block_bytes)
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=10, employees=3, months=1, seed=5), handle)
    lines = history.read_bytes().splitlines()
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n" + b"x" * 4200 + b"\r\n" + lines[0] + tail)
    parser = RecordParser(registry, now_ms=1_900_000_000_000)
    serial = [_view(r) for r in read_jsonl(path, parser, 4096, workers=0)]
    parallel = [_view(r) for r in read_jsonl(path, parser, 4096, workers=2)]
    assert parallel == serial
