"""The main job end to end on the embedded default: generate, ingest, project, show.

Runs in its own folder so it never touches a user's ledger, and starts afresh each time.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from crm_ledger.progress import progress_bar
from crm_ledger.runtime import open_ledger
from crm_ledger.settings import Settings
from ledger.generator import GeneratorConfig, write_history
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.readonly import reader
from projections.service import project_promoted

#: (read model, columns, order) of the rows the demo shows.
SHOWCASE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "customer_profile",
        (
            "customer_id",
            "segment",
            "interactions_total",
            "open_cases",
            "complaints",
            "csat_latest",
            "last_contact_at",
        ),
        "interactions_total DESC, customer_id",
    ),
    (
        "kpi_employee_month",
        (
            "employee_id",
            "team_id",
            "period",
            "csat_n",
            "round(csat_pct, 1) AS csat_pct",
            "problems_solved",
            "round(fcr_rate, 2) AS fcr_rate",
            "round(ttr_median_h, 1) AS ttr_median_h",
            "citations",
        ),
        "period DESC, problems_solved DESC, employee_id",
    ),
    (
        "kpi_team_month",
        (
            "team_id",
            "period",
            "csat_n",
            "round(csat_pct, 1) AS csat_pct",
            "round(nps, 1) AS nps",
            "problems_solved",
            "round(reopen_rate, 3) AS reopen_rate",
            "citations",
            "shares",
        ),
        "period DESC, team_id",
    ),
    (
        "reward_score",
        (
            "employee_id",
            "period",
            "round(score, 2) AS score",
            "round(csat, 3) AS csat",
            "round(problems_solved, 3) AS problems_solved",
            "round(citations, 3) AS citations",
            "spec_name",
        ),
        "period DESC, score DESC, employee_id",
    ),
    (
        "ledger_events",
        ("notification_id", "event_type", "event_id", "occurred_at", "left(chain, 16) AS chain"),
        "notification_id DESC",
    ),
)


def run_demo(folder: Path, config: GeneratorConfig, echo: Callable[[str], None]) -> Settings:
    """Generate a history, ingest it, project it, and print a few rows of each read model."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    settings = Settings(store=str(folder / "ledger.sqlite"), projections_db=folder / "projections.duckdb")
    history = folder / "history.jsonl"
    with history.open("w", encoding="utf-8") as handle:
        count = write_history(config, handle)
    shape = f"{config.customers} customers, {config.employees} employees, {config.months} months"
    echo(f"1/3 generated {count} records ({shape}) -> {history}")

    app = open_ledger(settings)
    sink = RejectSink(folder / "rejects.jsonl", echo=None)
    with progress_bar("ingest", history.stat().st_size) as reporter:
        summary = ingest_records(app, read_file(history, RecordParser(app.registry)), sink, reporter=reporter)
    sink.close()
    echo(f"2/3 ingested into {settings.store}: {summary.line()}")

    with progress_bar("project", None) as reporter:
        result = project_promoted(settings, "ledger", None, follow=False, reporter=reporter)
    echo(f"3/3 projected into {settings.projections_db}: {result}")

    with reader(settings.projections_db) as con:
        for table, columns, order in SHOWCASE:
            echo(f"\n== {table}")
            echo(str(con.sql(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order} LIMIT 5")))
    return settings
