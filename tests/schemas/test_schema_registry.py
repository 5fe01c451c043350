"""`schemas push` / `schemas check --registry` and the producers' start-up check, on a real registry."""

from __future__ import annotations

import json
import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from crm_ledger.settings import Settings
from schemas.errors import RegistryMismatchError
from schemas.registry import SCHEMA_DIR, SchemaRegistry, assign_ids
from schemas.remote import RemoteRegistry
from schemas.sync import COMPATIBILITY_LEVEL, compare, push
from tests.helpers import run_cli

pytestmark = pytest.mark.registry


def test_push_registers_every_version_under_its_locked_id(pushed_registry_url: str) -> None:
    folder = SchemaRegistry.load()
    client = SchemaRegistryClient({"url": pushed_registry_url})
    for version in folder.all_versions():
        # The id the messages carry resolves, with Confluent's own client, to the folder's schema.
        assert json.loads(client.get_schema(version.schema_id).schema_str) == dict(version.raw)
        registered = client.get_version(version.subject, version.version)
        assert registered.schema_id == version.schema_id
    for event_type in folder.all_types:
        latest = folder.latest(event_type)
        assert client.get_latest_version(latest.subject).schema_id == latest.schema_id
    for event_type in folder.all_types:
        assert client.get_compatibility(f"crm.ledger.{event_type}") == COMPATIBILITY_LEVEL
    again = run_cli("schemas", "push", "--registry", pushed_registry_url)
    assert again.returncode == 0, again.stderr
    present = f"{len(folder.all_versions())} already present"
    assert "0 registered" in again.stdout and present in again.stdout
    check = run_cli("schemas", "check", env={"CRM_LEDGER_REGISTRY_URL": pushed_registry_url})
    assert check.returncode == 0, check.stderr
    assert "matches" in check.stdout


def _folder_with_new_version(tmp_path: Path, new_field: dict[str, object]) -> Path:
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path)
    shutil.copy(SCHEMA_DIR / "schemas.lock.json", tmp_path)
    raw = json.loads((SCHEMA_DIR / "CaseClosed.v1.avsc").read_text())
    raw["fields"].append(new_field)
    (tmp_path / "CaseClosed.v2.avsc").write_text(json.dumps(raw, indent=2))
    assign_ids(tmp_path)
    return tmp_path


def test_incompatible_edit_is_refused_by_check_push_and_the_registry(
    pushed_registry_url: str, tmp_path: Path
) -> None:
    folder = _folder_with_new_version(tmp_path, {"name": "note", "type": "string"})
    remote = RemoteRegistry(pushed_registry_url)
    differences = [str(d) for d in compare(SchemaRegistry.load(folder), remote)]
    assert (
        "crm.ledger.CaseClosed v2: the registry refuses it as incompatible with its registered versions"
        in (differences)
    )
    check = run_cli("schemas", "check", "--dir", str(folder), "--registry", pushed_registry_url)
    assert check.returncode == 1 and "'note'" in check.stderr
    with pytest.raises(RegistryMismatchError, match="CaseClosed v2"):
        push(SchemaRegistry.load(folder), remote)
    assert remote.versions("crm.ledger.CaseClosed") == [1]
    # The registry's own rule refuses it too, for any client.
    client = SchemaRegistryClient({"url": pushed_registry_url})
    text = (folder / "CaseClosed.v2.avsc").read_text()
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema("crm.ledger.CaseClosed", Schema(text, "AVRO"))
    assert refused.value.http_status_code == 409


def test_compatible_new_version_is_pushed_then_checked(schema_registry_url: str, tmp_path: Path) -> None:
    folder = _folder_with_new_version(tmp_path, {"name": "note", "type": ["null", "string"], "default": None})
    remote = RemoteRegistry(schema_registry_url)
    push(SchemaRegistry.load(), remote)
    assert [str(d) for d in compare(SchemaRegistry.load(folder), remote)] == [
        "crm.ledger.CaseClosed v2: not registered"
    ]
    assert (
        run_cli("schemas", "check", "--dir", str(folder), "--registry", schema_registry_url).returncode == 1
    )
    pushed = run_cli("schemas", "push", "--dir", str(folder), "--registry", schema_registry_url)
    assert pushed.returncode == 0, pushed.stderr
    assert compare(SchemaRegistry.load(folder), remote) == []
    next_id = max(v.schema_id for v in SchemaRegistry.load().all_versions()) + 1
    assert remote.version("crm.ledger.CaseClosed", 2).schema_id == next_id  # type: ignore[union-attr]
    # The shipped folder now lacks a version the registry has: reported, not ignored.
    assert [str(d) for d in compare(SchemaRegistry.load(), remote)] == [
        f"crm.ledger.CaseClosed v2: registered (id {next_id}) but not in schemas/"
    ]
    _delete_subject(schema_registry_url, "crm.ledger.CaseClosed")
    push(SchemaRegistry.load(), remote)
    assert compare(SchemaRegistry.load(), remote) == []


def _probe_folder(tmp_path: Path, schema_id: int) -> Path:
    name = f"Probe{uuid.uuid4().hex[:8]}"
    raw = {"type": "record", "namespace": "crm.ledger", "name": name, "doc": "probe", "fields": []}
    (tmp_path / f"{name}.v1.avsc").write_text(json.dumps(raw))
    (tmp_path / "schemas.lock.json").write_text(
        json.dumps({"subjects": {f"crm.ledger.{name}": {"1": schema_id}}})
    )
    return tmp_path


def test_registry_that_assigns_its_own_ids_is_refused(schema_registry_url: str, tmp_path: Path) -> None:
    # Registering through the Confluent API (no id-preserving import): Apicurio ignores the
    # requested id, so the push must stop and say so rather than leave ids that differ.
    folder = _probe_folder(tmp_path, 5000)
    with pytest.raises(RegistryMismatchError, match="but messages carry id 5000"):
        push(SchemaRegistry.load(folder), RemoteRegistry(schema_registry_url), use_import=False)


def test_id_taken_by_another_schema_is_a_conflict(pushed_registry_url: str, tmp_path: Path) -> None:
    folder = _probe_folder(tmp_path, 7)  # id 7 is CaseAccepted v1
    remote = RemoteRegistry(pushed_registry_url)
    assert next(d.message for d in compare(SchemaRegistry.load(folder), remote)) == (
        "not registered, and id 7 already holds a different schema"
    )
    with pytest.raises(RegistryMismatchError, match="nothing was changed"):
        push(SchemaRegistry.load(folder), remote)


def test_unreachable_registry_is_a_one_line_error() -> None:
    result = run_cli("schemas", "check", "--registry", "http://127.0.0.1:9/apis/ccompat/v7")
    assert result.returncode == 75  # transient, as an unreachable broker
    assert (
        result.stderr.startswith("error: schema registry at http://127.0.0.1:9")
        and "Traceback" not in result.stderr
    )


def _delete_subject(url: str, subject: str) -> None:
    for suffix in ("", "?permanent=true"):
        request = urllib.request.Request(f"{url}/subjects/{subject}{suffix}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()


@pytest.mark.kafka
def test_producers_refuse_before_writing_when_a_schema_is_missing(
    pushed_registry_url: str, kafka_bootstrap: str, settings: Settings, topic: str, tmp_path: Path
) -> None:
    history = tmp_path / "h.jsonl"
    history.write_text(
        '{"type":"EmployeeJoined","event_id":"8d6c0e0e-0b1a-4c53-9a52-000000000001",'
        '"occurred_at":"2026-01-01T08:00:00Z","employee_id":"e1","team_id":"t1","role":"agent","name":"Ada"}\n'
    )
    env = {
        "CRM_LEDGER_STORE": settings.store,
        "CRM_LEDGER_DB": str(settings.projections_db),
        "CRM_LEDGER_BOOTSTRAP": kafka_bootstrap,
        "CRM_LEDGER_TOPIC": topic,
        "CRM_LEDGER_REGISTRY_URL": pushed_registry_url,
    }
    assert run_cli("ingest", str(history), env=env).returncode == 0
    _delete_subject(pushed_registry_url, "crm.ledger.CaseClosed")
    _delete_subject(pushed_registry_url, "crm.ledger.RewardScore")
    try:
        relay = run_cli("relay", env=env)
        assert relay.returncode == 1
        assert (
            "relay: the schema registry" in relay.stderr
            and "crm.ledger.CaseClosed v1: not registered" in relay.stderr
        )
        assert topic not in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
        project = run_cli("project", "--publish", env=env)
        assert project.returncode == 1 and "crm.ledger.RewardScore v1: not registered" in project.stderr
        assert not settings.projections_db.exists()
    finally:
        push(SchemaRegistry.load(), RemoteRegistry(pushed_registry_url))
    relay = run_cli("relay", env=env)
    assert relay.returncode == 0, relay.stderr
    assert "relayed 1 events" in relay.stdout


def test_edited_schema_under_a_registered_id_is_reported(pushed_registry_url: str, tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path)
    shutil.copy(SCHEMA_DIR / "schemas.lock.json", tmp_path)
    raw = json.loads((tmp_path / "CaseClosed.v1.avsc").read_text())
    raw["fields"][3]["doc"] = "edited in place instead of adding a version"
    (tmp_path / "CaseClosed.v1.avsc").write_text(json.dumps(raw))
    result = run_cli("schemas", "check", "--dir", str(tmp_path), "--registry", pushed_registry_url)
    assert result.returncode == 1
    assert (
        "crm.ledger.CaseClosed v1: the registry holds a different schema than CaseClosed.v1.avsc"
        in result.stderr
    )
    with pytest.raises(RegistryMismatchError, match="nothing was changed"):
        push(SchemaRegistry.load(tmp_path), RemoteRegistry(pushed_registry_url))
