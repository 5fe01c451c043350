"""Faults are one line: full disks, file-size limits, read-only and truncated files, bad SQL, time limits."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from tests.helpers import CLI, ledger_content, run_cli


def _env(tmp_path: Path) -> dict[str, str]:
    return {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}


def _one_line_error(result: subprocess.CompletedProcess[str], *phrases: str, code: int = 1) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _history(tmp_path: Path) -> Path:
    path = tmp_path / "h.jsonl"
    with path.open("w") as handle:
        write_history(GeneratorConfig(customers=300, employees=8, months=2, seed=4), handle)
    return path


def _run_limited(args: list[str], env: dict[str, str], file_limit: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**os.environ, **env}, preexec_fn=limit, check=False
    )


def test_a_file_size_limit_mid_ingest_is_one_line_and_nothing_is_half_written(tmp_path: Path) -> None:
    history = _history(tmp_path)
    env = _env(tmp_path)
    result = _run_limited(["ingest", str(history), "--batch-size", "200"], env, 300_000)
    _one_line_error(result, "event store", "run the same command again")
    run_cli("ingest", str(history), env=env, check=True)
    clean_env = {"CRM_LEDGER_STORE": str(tmp_path / "clean.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "c.duckdb")}
    run_cli("ingest", str(history), env=clean_env, check=True)
    apps = [LedgerApplication(Settings(store=e["CRM_LEDGER_STORE"]).eventsourcing_env()) for e in (env, clean_env)]
    assert ledger_content(apps[0]) == ledger_content(apps[1])
    for app in apps:
        app.close()


def test_a_truncated_projection_database_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "p.duckdb").write_bytes(b"DUCK" + b"\x00" * 100)
    _one_line_error(run_cli("query", "SELECT 1", env=env), "projection database", "rebuild")


def test_failing_sql_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = _history(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    _one_line_error(run_cli("query", "SELECT 'x'::INTEGER", env=env), "query")
    _one_line_error(run_cli("query", "SELECT * FROM no_such_table", env=env), "query")
    slow = "SELECT count(*) FROM range(100000000000) a"
    _one_line_error(run_cli("query", slow, "--timeout", "0.5", env=env), "stopped after 0.5 s")


def test_a_read_only_store_is_one_line(tmp_path: Path) -> None:
    history = _history(tmp_path)
    env = _env(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    store = tmp_path / "l.sqlite"
    # Root ignores file modes; the immutable attribute stops even root from writing.
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        more = tmp_path / "more.jsonl"
        more.write_text(history.read_text().replace('-4', '-5'))
        _one_line_error(run_cli("ingest", str(more), env=env), "event store", "read-only")
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://u:secret@h:99999/x", "(port out of range 0-65535)"),
        ("postgresql://[::1/x", "(invalid IPv6 URL)"),
        ("postgres://u:secret@h:abc/x", "(port could not be cast to integer value as 'abc')"),
    ],
)
def test_a_malformed_store_url_is_one_line_without_its_password(tmp_path: Path, url: str, why: str) -> None:
    history = _history(tmp_path)
    for args in (["--store", url, "audit", "head"], ["ingest", str(history)]):
        result = run_cli(*args, env={**_env(tmp_path), "CRM_LEDGER_STORE": url})
        _one_line_error(result, "the store URL", "is malformed " + why, "fix --store or CRM_LEDGER_STORE")
        assert "secret" not in result.stderr


@pytest.mark.slow
def test_an_unreachable_postgresql_store_is_a_temporary_failure(tmp_path: Path) -> None:
    # Nothing listens on port 1; the connection pool gives up after its own 30 s.
    url = "postgresql://u:secret@127.0.0.1:1/x"
    result = run_cli("--store", url, "audit", "head", env=_env(tmp_path))
    _one_line_error(result, "event store postgresql://u:***@127.0.0.1:1/x is unreachable", code=75)
    assert "secret" not in result.stderr
