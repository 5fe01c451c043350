"""`schemas check`: compatible evolution passes, an incompatible edit fails with its name."""

from __future__ import annotations

import errno
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from crm_cli.cli import main
from schemas.compat import check_folder
from schemas.errors import RegistryError
from schemas.registry import SCHEMA_DIR, assign_ids
from schemas.remote import RemoteRegistry


def _folder_with_v2(tmp_path: Path, new_field: dict[str, object]) -> Path:
    shutil.copy(SCHEMA_DIR / "CaseClosed.v1.avsc", tmp_path)
    raw = json.loads((SCHEMA_DIR / "CaseClosed.v1.avsc").read_text())
    raw["fields"].append(new_field)
    (tmp_path / "CaseClosed.v2.avsc").write_text(json.dumps(raw))
    assign_ids(tmp_path)
    return tmp_path


def test_shipped_schemas_are_compatible_and_locked() -> None:
    assert check_folder(SCHEMA_DIR) == []


def test_field_added_with_default_passes(tmp_path: Path) -> None:
    folder = _folder_with_v2(tmp_path, {"name": "note", "type": ["null", "string"], "default": None})
    assert check_folder(folder) == []
    assert main(["schemas", "check", "--dir", str(folder)]) == 0


def test_field_added_without_default_fails_naming_it(tmp_path: Path) -> None:
    folder = _folder_with_v2(tmp_path, {"name": "note", "type": "string"})
    problems = check_folder(folder)
    assert len(problems) == 1
    assert "CaseClosed.v2.avsc" in str(problems[0])
    assert "'note'" in str(problems[0])
    assert main(["schemas", "check", "--dir", str(folder)]) == 1


def test_type_change_fails(tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "CaseClosed.v1.avsc", tmp_path)
    raw = json.loads((SCHEMA_DIR / "CaseClosed.v1.avsc").read_text())
    raw["fields"][3]["type"] = "int"
    (tmp_path / "CaseClosed.v2.avsc").write_text(json.dumps(raw))
    assign_ids(tmp_path)
    assert any("v2 cannot read v1" in str(p) for p in check_folder(tmp_path))


def test_invalid_avro_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "Broken.v1.avsc").write_text(
        '{"type": "record", "name": "Broken", "namespace": "crm.ledger", "doc": "x", "fields": [{"name": "a", "type": "nope"}]}'
    )
    assign_ids(tmp_path)
    problems = check_folder(tmp_path)
    assert [p.where for p in problems] == ["Broken.v1.avsc"]
    (tmp_path / "Broken.v1.avsc").write_text("{not json")
    assert "not valid JSON" in str(check_folder(tmp_path)[0])


def test_lock_file_must_cover_every_version(tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "CaseClosed.v1.avsc", tmp_path)
    assert "schemas lock" in str(check_folder(tmp_path)[0])
    lock = assign_ids(tmp_path)
    assert lock == assign_ids(tmp_path)  # ids are stable


def test_event_metadata_is_checked(tmp_path: Path) -> None:
    raw = json.loads((SCHEMA_DIR / "CaseClosed.v1.avsc").read_text())
    fields = {f["name"]: f for f in raw["fields"]}
    fields["case_id"]["crm.key"] = 9  # customer_id ranks 1 everywhere; case_id never was a key: fine
    fields["customer_id"]["crm.key"] = 3  # ...but customer_id ranks 1 in every other schema
    fields["employee_id"]["crm.personal"] = "yes"
    fields["case_id"]["crm.colour"] = "red"
    raw["crm.internal"] = 1
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path)
    shutil.copy(SCHEMA_DIR / "schemas.lock.json", tmp_path)
    (tmp_path / "CaseClosed.v1.avsc").write_text(json.dumps(raw))
    found = {str(p) for p in check_folder(tmp_path)}
    assert any("CaseClosed.v1.avsc: field 'customer_id': crm.key 3, but" in p for p in found), found
    assert "CaseClosed.v1.avsc: field 'employee_id': crm.personal must be true or false" in found
    assert "CaseClosed.v1.avsc: field 'case_id': unknown attribute 'crm.colour'" in found
    assert "CaseClosed.v1.avsc: crm.internal must be true or false" in found
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1


def test_the_declarations_drive_the_ledger() -> None:
    from ledger.domain import AGGREGATES
    from ledger.records import ENRICHED_FIELDS, INTERNAL_TYPES
    from ledger.relay import KEY_FIELDS
    from ledger.vault import PERSONAL_FIELDS
    from schemas.metadata import shipped

    declared = shipped()
    assert {kind for _, kind in declared.references} <= {a.KIND for a in AGGREGATES}
    assert PERSONAL_FIELDS == {"CustomerRegistered": ("name", "email"), "CustomerDetailsChanged": ("name", "email")}
    assert KEY_FIELDS == ("customer_id", "employee_id", "article_id", "period", "team_id")
    assert {"RewardPeriodClosed", "RewardStatementIssued", "RewardAdjustmentIssued"} == INTERNAL_TYPES
    assert ("CaseResolved", "customer_id") in ENRICHED_FIELDS


def test_a_schema_folder_that_is_missing_or_holds_no_schema_is_refused(tmp_path: Path) -> None:
    # A mistyped --dir used to pass `check` ("all versions compatible") and be `lock`ed empty.
    assert main(["schemas", "check", "--dir", str(tmp_path / "typo")]) == 2
    assert main(["schemas", "lock", "--dir", str(tmp_path / "typo")]) == 2
    assert [p.message for p in check_folder(tmp_path)] == ["no schema files (<Type>.v<N>.avsc) in it"]
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1
    assert main(["schemas", "lock", "--dir", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_schema_file_that_is_not_utf8_and_a_broken_lock_are_one_problem_each(tmp_path: Path) -> None:
    # Bytes that are not UTF-8 were a traceback; a malformed lock added "not in
    # schemas.lock.json" for every schema file besides its own line.
    for name in ("CaseClosed.v1.avsc", "CaseOpened.v1.avsc"):
        shutil.copy(SCHEMA_DIR / name, tmp_path)
    assign_ids(tmp_path)
    (tmp_path / "CaseOpened.v1.avsc").write_bytes(b"\xff\xfe{}")
    assert [(p.where, p.message) for p in check_folder(tmp_path)] == [
        ("CaseOpened.v1.avsc", "not UTF-8 text (invalid start byte at byte 0)")
    ]
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1
    shutil.copy(SCHEMA_DIR / "CaseOpened.v1.avsc", tmp_path)
    (tmp_path / "schemas.lock.json").write_text("{")
    problems = check_folder(tmp_path)
    assert [p.where for p in problems] == ["schemas.lock.json"]
    assert problems[0].message.startswith("malformed: Expecting property name")
    (tmp_path / "schemas.lock.json").unlink()
    (tmp_path / "schemas.lock.json").mkdir()
    assert [p.where for p in check_folder(tmp_path)] == ["schemas.lock.json"]
    assert main(["schemas", "lock", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:8081", "is not an http:// or https:// address with a host"),
        ("ftp://h/x", "is not an http:// or https:// address with a host"),
        ("http://", "is not an http:// or https:// address with a host"),
        ("http://h:abc/x", "is not usable: Port could not be cast to integer value as 'abc'"),
        ("http://[::1/x", "is not usable: Invalid IPv6 URL"),
    ],
)
def test_a_registry_url_that_is_no_http_address_is_one_line(
    url: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # urllib's "unknown url type" and a port that is no number were tracebacks (exit 3).
    with pytest.raises(RegistryError, match=re.escape(f"schema registry URL {url!r} {says}")):
        RemoteRegistry(url)
    assert main(["schemas", "push", "--registry", url]) == 1
    assert capsys.readouterr().err.startswith(f"error: schema registry URL {url!r}")


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"<html>a web page</html>", "the answer to GET /subjects/"),
        (b'{"a": 1}', "its answer (version)"),
        (b"[1, 2]", "its answer (version)"),
        (b'{"id": "x", "version": "y", "schema": null}', "its answer (version)"),
    ],
)
def test_a_url_that_answers_something_other_than_the_registry_api_is_one_line(
    answer: bytes, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A web page (the registry's root, not its Confluent-compatible API) or JSON of another
    # shape was a traceback: JSONDecodeError, KeyError, TypeError, ValueError.
    class Always(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Always)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        assert main(["schemas", "check", "--registry", url]) == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and says in lines[0] and "is not what the Confluent-compatible API" in lines[0]
    finally:
        server.shutdown()
        server.server_close()


def test_a_lock_written_when_the_disk_is_full_keeps_the_ids_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written in place, the lock was truncated first: a failed write left it empty, its ids lost.
    shutil.copy(SCHEMA_DIR / "CaseClosed.v1.avsc", tmp_path)
    assign_ids(tmp_path)
    before = (tmp_path / "schemas.lock.json").read_text()
    shutil.copy(SCHEMA_DIR / "CaseOpened.v1.avsc", tmp_path)

    def full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        with self.open("w") as handle:
            handle.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["schemas", "lock", "--dir", str(tmp_path)]) == 1
    monkeypatch.undo()
    assert (tmp_path / "schemas.lock.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CaseClosed.v1.avsc", "CaseOpened.v1.avsc", "schemas.lock.json"]


def test_what_a_registry_answers_is_shown_not_obeyed_by_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    # A compatibility level with escape sequences reached the terminal raw (colours, its title).
    class Hostile(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if "/config/" in self.path:
                body = json.dumps({"compatibilityLevel": "\x1b]0;owned\x07FULL"}).encode()
            elif self.path.endswith("/versions"):
                body = b"[]"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert main(["schemas", "check", "--registry", f"http://127.0.0.1:{server.server_address[1]}/x"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "compatibility \\x1b]0;owned\\x07FULL" in err
