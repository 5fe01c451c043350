"""The main job end to end on the embedded default: generate, ingest, project, show.

Runs in its own folder so it never touches a user's ledger, and starts afresh each time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from crm_ledger.errors import CrmLedgerError
from crm_ledger.outputs import replaced_whole
from crm_ledger.progress import progress_bar
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.connect import open_ledger
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.readonly import reader
from projections.service import project_promoted
from rewards.goals import GoalChange, close_goal, revise_goal, set_goal, spec_components

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
        "customer_profile",
        (
            "customer_id",
            "active_contracts AS contracts",
            "round(contract_value) AS value",
            "next_renewal_at::DATE AS renewal",
            "sla_covered AS sla",
            "installed_products AS installed",
            "installed_product_list AS products",
        ),
        "active_contracts DESC, installed_products DESC, contract_value DESC, customer_id",
    ),
    (
        "sla_case",
        (
            "case_id",
            "severity",
            "contract_id",
            "sla_hours",
            "round(hours_to_accept, 1) AS hours_to_accept",
            "round(hours_to_resolve, 1) AS hours_to_resolve",
            "breached",
        ),
        "contract_id IS NULL, opened_at DESC, case_id",
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
        "kpi_team_month",
        (
            "team_id",
            "period",
            "sla_n",
            "round(sla_met_rate, 3) AS sla_met_rate",
            "visits",
            "round(on_time_rate, 3) AS on_time_rate",
            "ftf_n",
            "round(ftf_rate, 3) AS ftf_rate",
        ),
        "period DESC, visits DESC, team_id",
    ),
    (
        "retention_month",
        (
            "segment",
            "region",
            "period",
            "up_for_renewal",
            "renewed",
            "churned",
            "replaced",
            "round(renewal_rate, 3) AS renewal_rate",
            "round(nrr_pct, 1) AS nrr_pct",
        ),
        "(segment = '(all)' AND region = '(all)') DESC, (renewed + churned + replaced) = 0, period DESC",
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
        "team_goal_progress",
        ("team_id", "goal_id", "period", "kpi", "target", "round(actual, 3) AS actual", "met"),
        "team_id, goal_id, period",
    ),
    (
        "ledger_events",
        ("notification_id", "event_type", "event_id", "occurred_at", "left(chain, 16) AS chain"),
        "notification_id DESC",
    ),
)


#: The file that marks a folder as a demo's, written first into every folder a demo makes.
DEMO_MARK = ".crm-ledger-demo"
#: What a demo folder holds: a folder holding anything else is not recreated.
_DEMO_NAMES = (DEMO_MARK, "history.jsonl", "rejects.jsonl", "projections.log")
_DEMO_PREFIXES = ("ledger.sqlite", "projections.duckdb")


def _recreate(folder: Path) -> None:
    """Empty `folder` for a new demo, refusing a folder that is not one: the folder being
    worked in (or one above it), one holding anything a demo does not write, or one without
    the demo's mark (nor, from demos before the mark, its history)."""
    if not folder.exists():
        _made(folder)
        return
    resolved = folder.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise CrmLedgerError(f"{folder}: the demo recreates its folder; give one below this one")
    if not folder.is_dir():
        raise CrmLedgerError(f"{folder}: not a folder")
    foreign = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in _DEMO_NAMES and not p.name.startswith(_DEMO_PREFIXES)
    )
    if foreign:
        raise CrmLedgerError(
            f"{folder}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which a demo "
            "did not write: the demo recreates its folder, so give a new or empty one"
        )
    marked = (folder / DEMO_MARK).exists() or (folder / "history.jsonl").exists()
    if not marked and any(folder.iterdir()):
        # A ledger's own folder (.crm-ledger) holds only names a demo writes too: it was
        # emptied, its ledger lost, by `demo --dir .crm-ledger`.
        raise CrmLedgerError(
            f"{folder}: holds a ledger or projection database no demo made: the demo recreates its "
            "folder, so give a new or empty one"
        )
    shutil.rmtree(folder)
    _made(folder)


def _made(folder: Path) -> None:
    """Make the demo's folder and mark it as the demo's: only a marked one is recreated."""
    folder.mkdir(parents=True)
    # Whole or absent, and a write that fails (a full disk) names the file.
    with replaced_whole(folder / DEMO_MARK) as partial:
        partial.write_text("made by crm-ledger demo: recreated by the next one\n", encoding="utf-8")


def demo_settings(folder: Path) -> Settings:
    """The demo's own store and projection database, in `folder`."""
    return Settings(store=str(folder / "ledger.sqlite"), projections_db=folder / "projections.duckdb")


def run_demo(folder: Path, config: GeneratorConfig, echo: Callable[[str], None]) -> Settings:
    """Generate a history, ingest it, project it, and print a few rows of each read model.

    The folder is recreated: only a new one, an empty one or an earlier demo's is accepted.
    """
    _recreate(folder)
    settings = demo_settings(folder)
    history = folder / "history.jsonl"
    # Whole or absent, and a write that fails (a full disk) names the file.
    with replaced_whole(history) as partial, partial.open("w", encoding="utf-8") as handle:
        count = write_history(config, handle)
    shape = f"{config.customers} customers, {config.employees} employees, {config.months} months"
    echo(f"1/3 generated {count} records ({shape}) -> {history}")

    app = open_ledger(settings, spec_components(settings.projections_db))
    sink = RejectSink(folder / "rejects.jsonl", echo=None)
    with progress_bar("ingest", history.stat().st_size) as reporter:
        summary = ingest_records(app, read_file(history, RecordParser(app.registry)), sink, reporter=reporter)
    sink.close()
    echo(f"2/3 ingested into {settings.store}: {summary.line()}")

    goals = set_demo_goals(settings, history, config)
    echo(f"   set {goals} team goals (crm-ledger goal list)")

    with progress_bar("project", None) as reporter:
        result = project_promoted(settings, "ledger", None, follow=False, reporter=reporter)
    echo(f"3/3 projected into {settings.projections_db}: {result}")

    with reader(settings.projections_db) as con:
        for table, columns, order in SHOWCASE:
            echo(f"\n== {table}")
            echo(str(con.sql(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order} LIMIT 5")))
    return settings


def _month(start: str, offset: int) -> str:
    year, month = int(start[:4]), int(start[5:7]) - 1 + offset
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def _members_at(history: Path, moment: datetime) -> dict[str, list[str]]:
    """Team -> employee ids in it at `moment`, from the generated history."""
    limit = moment.isoformat()
    team_of: dict[str, str | None] = {}
    with history.open(encoding="utf-8") as handle:
        for line in handle:
            if '"Employee' not in line:
                continue
            record: dict[str, Any] = json.loads(line)
            if str(record.get("occurred_at", "")) > limit:
                continue
            if record["type"] in ("EmployeeJoined", "EmployeeMovedTeam"):
                team_of[record["employee_id"]] = record["team_id"]
            elif record["type"] == "EmployeeLeft":
                team_of[record["employee_id"]] = None
    teams: dict[str, list[str]] = {}
    for employee, team in sorted(team_of.items()):
        if team is not None:
            teams.setdefault(team, []).append(employee)
    return teams


def set_demo_goals(settings: Settings, history: Path, config: GeneratorConfig) -> int:
    """Goals two teams agree on in the second month: one revised, one closed, one still running."""
    if config.months < 2:
        return 0
    second, last = _month(config.start, 1), _month(config.start, config.months - 1)
    agreed_at = datetime.fromisoformat(f"{second}-01T09:00:00+00:00")
    teams = _members_at(history, agreed_at.replace(tzinfo=None))
    names = sorted(teams)[:2]
    count = 0
    for index, team in enumerate(names):
        members = teams[team][:4]
        if index == 0:
            set_goal(
                settings,
                GoalChange(f"{team}-csat", agreed_at),
                team_id=team,
                kpi="csat_pct",
                target=80.0,
                comparison="at_least",
                from_period=second,
                to_period=last,
                agreed_by=members,
                note="satisfied customers: four or five out of five",
            )
            set_goal(
                settings,
                GoalChange(f"{team}-knowledge", agreed_at),
                team_id=team,
                kpi="participation_rate",
                target=0.5,
                comparison="at_least",
                from_period=second,
                to_period=_month(config.start, config.months),
                agreed_by=members,
                note="link or write an article for every other case we solve",
            )
            if config.months >= 3:
                revised_at = datetime.fromisoformat(f"{last}-01T09:00:00+00:00")
                still = [
                    m
                    for m in _members_at(history, revised_at.replace(tzinfo=None)).get(team, [])
                    if m in members
                ] or members[:1]
                revise_goal(
                    settings,
                    GoalChange(f"{team}-csat", revised_at, (("target", 78.0),)),
                    agreed_by=still,
                    reason="seasonal peak of complaints: a step at a time",
                )
            count += 2
        else:
            set_goal(
                settings,
                GoalChange(f"{team}-ttr", agreed_at),
                team_id=team,
                kpi="ttr_median_h",
                target=24.0,
                comparison="at_most",
                from_period=second,
                to_period=last,
                agreed_by=members,
                note="median time to resolve within a day",
            )
            set_goal(
                settings,
                GoalChange(f"{team}-citations", agreed_at),
                team_id=team,
                kpi="component:citations",
                target=0.3,
                comparison="at_least",
                from_period=second,
                to_period=last,
                agreed_by=members,
                note="write articles colleagues reuse",
            )
            closed_at = datetime.fromisoformat(f"{last}-01T09:00:00+00:00")
            close_goal(
                settings,
                GoalChange(f"{team}-ttr", closed_at),
                outcome="withdrawn",
                note="replaced by the citations goal",
            )
            count += 2
    return count
