"""The read models, each listed once: what it reads, what rebuilds it, how it is kept current.

The SQL of each model is in projections.models and its incremental maintenance in
projections.maintain; this list is what the rest of the code derives its table lists
from (which tables a version holds, which a version built from another shares, which are
exposed as stable views, which are published downstream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: What a model depends on: the log only ("log": shared by versions built from another),
#: the KPI thresholds of the spec ("kpis"), or the spec's components ("scores").
Layer = Literal["log", "kpis", "scores"]


@dataclass(frozen=True)
class ReadModel:
    """One table of a version."""

    name: str
    #: "events" (the decoded log) or earlier read models
    reads: tuple[str, ...]
    layer: Layer
    #: exposed under its own name in `main` (intermediate tables are not)
    stable: bool
    #: what an incremental update deletes and recomputes it by
    incremental_key: str
    #: the compacted topic `project --publish` sends its changes to (projections.publish)
    feed: str | None = None
    #: rebuilt whole after each incremental update, in the same transaction (small tables
    #: read from the source's index, projections.logindex); otherwise kept by `incremental_key`
    whole: bool = False


_WHOLE = "none: rebuilt whole after each update"


def _whole(name: str, reads: tuple[str, ...], layer: Layer, stable: bool = True) -> ReadModel:
    return ReadModel(name, reads, layer, stable, _WHOLE, whole=True)


def _kpi(who: str, grain: str) -> ReadModel:
    key = "(team, period)" if who == "team" else "(employee, team, period)"
    return ReadModel(
        f"kpi_{who}_{grain}", ("measures",), "kpis", True, f"{key} of the measures deleted or inserted"
    )


READ_MODELS: tuple[ReadModel, ...] = (
    ReadModel("team_history", ("events",), "log", False, "employee with a new join or team move"),
    # The service side (projections.service_models, kept by projections.service_maintain):
    # contract coverage, breaches, first visits and renewal outcomes depend on later events
    # of other aggregates, and on "now" (the log's last event).
    ReadModel("contract_terms", ("events",), "log", False, "contract named by a new contract event"),
    ReadModel(
        "sla_case",
        ("events", "contract_terms"),
        "log",
        True,
        "case with a new opening, acceptance or resolution; every case of a customer whose terms "
        "changed; unresolved case whose SLA ran out before the new last event",
    ),
    ReadModel(
        "field_visit",
        ("events", "team_history"),
        "log",
        True,
        "case (of the scheduling) of a visit named by a new visit event",
    ),
    ReadModel(
        "retention_month",
        ("events", "contract_terms"),
        "log",
        True,
        "month a changed contract's terms (or the terms it replaced) come up for renewal in; months "
        "of the terms of a customer whose details changed",
    ),
    ReadModel(
        "measures",
        ("events", "team_history", "sla_case", "field_visit"),
        "log",
        False,
        "new event; every event of a case a new opening, acceptance, resolution, reopening or "
        "link changes (first resolution, citations); employee with a team move; the SLA rows of "
        "the cases whose SLA was recomputed and the visit rows of those whose visits were",
    ),
    *(_kpi(who, grain) for grain in ("month", "week", "day") for who in ("employee", "team")),
    ReadModel(
        "reward_components",
        ("kpi_employee_month", "kpi_team_month"),
        "scores",
        True,
        "month of touched measures",
    ),
    ReadModel(
        "reward_score",
        ("reward_components",),
        "scores",
        True,
        "month of touched measures",
        feed="crm.projection.reward-score",
    ),
    ReadModel(
        "customer_profile",
        ("events", "contract_terms", "field_visit"),
        "log",
        True,
        "customer named by a new event; service columns also of customers whose terms or visits "
        "changed, or with a term starting, ending or due before the new last event",
        feed="crm.projection.customer-profile",
    ),
    ReadModel(
        "complaint_kpi_month", ("events",), "log", True, "(team, month) of every opening of a touched case"
    ),
    ReadModel(
        "reward_statement",
        ("events",),
        "log",
        True,
        "(employee, period) of a new statement or adjustment",
        feed="crm.projection.reward-statement",
    ),
    # Team goals and the evidence (projections.goals): from the goal events of the log, the
    # team KPIs and the scores, so every version (weights-only ones too) has its own.
    _whole("team_goal", ("events",), "scores"),
    _whole(
        "team_goal_progress",
        ("events", "team_goal", "kpi_team_month", "reward_score", "reward_components"),
        "scores",
    ),
    _whole("team_evidence_month", ("kpi_team_month", "team_goal"), "scores"),
    _whole("team_evidence_correlation", ("team_evidence_month",), "scores"),
    _whole("team_goal_effect", ("team_evidence_month", "team_goal"), "scores"),
)


def _check_order() -> None:
    """Every model reads only the log or models listed before it (the build order)."""
    seen = {"events"}
    for model in READ_MODELS:
        missing = set(model.reads) - seen
        if missing:
            raise AssertionError(f"{model.name} reads {sorted(missing)} before they are built")
        seen.add(model.name)


_check_order()

MODEL_TABLES = tuple(m.name for m in READ_MODELS)
#: What a weights-only version rebuilds; it shares everything else with its base.
SCORE_TABLES = tuple(m.name for m in READ_MODELS if m.layer == "scores")
#: What a KPI-definition version shares with its base.
SPEC_INDEPENDENT_TABLES = tuple(m.name for m in READ_MODELS if m.layer == "log")
KPI_TABLES = tuple(m.name for m in READ_MODELS if m.layer == "kpis")
INTERMEDIATE_TABLES = tuple(m.name for m in READ_MODELS if not m.stable)
#: The spec-independent tables rebuilt whole after an incremental update (in this order).
WHOLE_LOG_TABLES = tuple(m.name for m in READ_MODELS if m.layer == "log" and m.whole)
#: The names `promote` points at the promoted version: the read models, the audit mirror
#: and the dead letters (both views of the decoded log).
STABLE_VIEWS = (*(m.name for m in READ_MODELS if m.stable), "ledger_events", "dead_letters")
FEEDS = {m.name: m.feed for m in READ_MODELS if m.feed}
