"""`audit reproduce`: every kind of version rebuilds to identical tables; a one-cell change is named."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from crm_ledger.settings import Settings, log_root
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import Relay, RelayConfig
from projections.engine import parse_as_of
from projections.log import register_logs
from projections.service import project_promoted
from projections.spec import DEFAULT_SPEC
from projections.store import events_view_sql
from replay.build import replay
from rewards.periods import close_period
from tests.helpers import run_cli

DEFAULT_TEXT = DEFAULT_SPEC.read_text(encoding="utf-8")


@pytest.fixture
def projected(settings: Settings, tmp_path: Path) -> LedgerApplication:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=150, employees=8, months=2, seed=23), handle)
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    project_promoted(settings, "ledger", None, follow=False)
    close_period(settings, "2025-01")  # statements too: reward_statement is not empty
    project_promoted(settings, "ledger", None, follow=False)
    return app


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db), **extra}


def _spec(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _reproduce(settings: Settings, *version: str) -> str:
    result = run_cli("audit", "reproduce", *version, env=env_of(settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every read model follows from the log" in result.stdout
    return result.stdout


def test_every_ledger_version_kind_reproduces(
    projected: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    out = _reproduce(settings)  # the promoted (full) version
    assert "reward_statement: " in out and "reward_statement: 0 rows" not in out
    weights = DEFAULT_TEXT.replace("weight = 0.25", "weight = 0.05", 1).replace(
        'kpi = "problems_solved"\nweight = 0.20', 'kpi = "problems_solved"\nweight = 0.40'
    )
    derived = replay(settings, _spec(tmp_path, "weights", weights), "ledger", name="weights")
    assert derived.mode == "scores-only"
    _reproduce(settings, "weights")
    as_of = replay(
        settings,
        _spec(tmp_path, "strict", DEFAULT_TEXT.replace("csat_satisfied_min = 4", "csat_satisfied_min = 5")),
        "ledger",
        as_of=parse_as_of("2025-01-20T00:00:00Z"),
        name="strict-jan",
    )
    assert as_of.mode == "full"
    _reproduce(settings, "strict-jan")


def test_a_one_cell_change_names_the_table_and_the_row(projected: LedgerApplication, settings: Settings) -> None:
    with duckdb.connect(str(settings.projections_db)) as con:
        schema = con.execute("SELECT version FROM crm_promoted").fetchone()[0]
        employee, period = con.execute(
            f"SELECT employee_id, period FROM {schema}.reward_score ORDER BY employee_id, period LIMIT 1 OFFSET 3"
        ).fetchone()
        con.execute(
            f"UPDATE {schema}.reward_score SET score = score + 0.5 WHERE employee_id = ? AND period = ?",
            [employee, period],
        )
    result = run_cli("audit", "reproduce", env=env_of(settings))
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and problems[0].startswith("PROBLEM reward_score:")
    assert "differs in score" in problems[0] and f"employee_id='{employee}'" in problems[0]
    assert "kpi_employee_month: " in result.stdout and "identical" in result.stdout
    # The live database was only read: the altered cell is still there.
    with duckdb.connect(str(settings.projections_db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM crm_versions").fetchone() == (1,)


def test_a_version_still_building_is_refused(projected: LedgerApplication, settings: Settings) -> None:
    with duckdb.connect(str(settings.projections_db)) as con:
        con.execute("UPDATE crm_versions SET state = 'building'")
    result = run_cli("audit", "reproduce", env=env_of(settings))
    assert result.returncode == 1 and "not yet in its read models" in result.stderr
    unknown = run_cli("audit", "reproduce", "nope", env=env_of(settings))
    assert unknown.returncode == 1 and "unknown version 'nope'" in unknown.stderr
    for blank in ("", " "):
        refused = run_cli("audit", "reproduce", blank, env=env_of(settings))
        assert refused.returncode == 1 and "no version named" in refused.stderr, refused.stderr


@pytest.mark.kafka
def test_a_kafka_fed_version_reproduces(
    projected: LedgerApplication, settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    Relay(projected, RelayConfig(kafka_bootstrap, topic, partitions=3, transactional_id=f"r-{topic}")).run()
    env = env_of(settings, CRM_LEDGER_BOOTSTRAP=kafka_bootstrap, CRM_LEDGER_TOPIC=topic)
    built = run_cli("replay", "--metrics", str(DEFAULT_SPEC), "--source", "kafka", "--name", "from-kafka", env=env)
    assert built.returncode == 0, built.stderr
    result = run_cli("audit", "reproduce", "from-kafka", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every read model follows from the log" in result.stdout


def test_the_rebuild_reads_the_log_through_the_views_definition_not_the_stored_view(
    projected: LedgerApplication, settings: Settings
) -> None:
    """The version's `events` view is stored in the live file: narrowed there (survey answers
    left out), the rebuild followed it, so tables rebuilt to match it would have passed."""
    with duckdb.connect(str(settings.projections_db)) as con:
        register_logs(con, log_root(settings.projections_db), ["ledger"])
        schema = con.execute("SELECT version FROM crm_promoted").fetchone()[0]
        everything = con.execute(f"SELECT count(*) FROM {schema}.events").fetchone()[0]
        con.execute(f"{events_view_sql(schema, 'ledger', None)} AND event_type <> 'SurveyAnswered'")
        assert con.execute(f"SELECT count(*) FROM {schema}.events").fetchone()[0] < everything
    out = _reproduce(settings)
    assert f"rebuilt from {everything} mirrored events" in out
