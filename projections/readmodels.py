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


def _kpi(who: str, grain: str) -> ReadModel:
    key = "(team, period)" if who == "team" else "(employee, team, period)"
    return ReadModel(
        f"kpi_{who}_{grain}", ("measures",), "kpis", True, f"{key} of the measures deleted or inserted"
    )


READ_MODELS: tuple[ReadModel, ...] = (
    ReadModel("team_history", ("events",), "log", False, "employee with a new join or team move"),
    ReadModel(
        "measures",
        ("events", "team_history"),
        "log",
        False,
        "new event; every event of a touched case (first resolution, citations); employee with a team move",
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
        ("events",),
        "log",
        True,
        "customer named by a new event",
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
#: The names `promote` points at the promoted version: the read models, the audit mirror
#: and the dead letters (both views of the decoded log).
STABLE_VIEWS = (*(m.name for m in READ_MODELS if m.stable), "ledger_events", "dead_letters")
FEEDS = {m.name: m.feed for m in READ_MODELS if m.feed}
