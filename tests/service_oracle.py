"""An independent computation of the service read models: SLA per case, field KPIs, retention.

Plain Python over the raw JSONL records (all valid), in the ledger's order (occurred_at,
ties in file order). No SQL and no shared code with the projections beyond the timestamp
parser; it follows the definitions in docs/read-models.md.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.records import parse_timestamp

HOUR_MS = 3_600_000
SEVERITIES = ("critical", "high", "medium", "low")


def month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m")


@dataclass
class Term:
    """One `ends_on` of a contract (set by its start or a renewal) and how it was decided."""

    contract_id: str
    customer_id: str
    due_on: int
    value: float
    outcome: str | None = None
    renewed_value: float | None = None
    replaced_by: str | None = None


@dataclass
class Run:
    """A contract from one start to its end."""

    contract_id: str
    customer_id: str
    starts_on: int
    sla: dict[str, int | None]
    terms: list[Term] = field(default_factory=list)
    ended_at: int | None = None

    @property
    def covered_until(self) -> int:
        final = self.terms[-1].due_on
        return final if self.ended_at is None else min(self.ended_at, final)


class ServiceOracle:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        ordered = sorted(enumerate(records), key=lambda p: (parse_timestamp(p[1]["occurred_at"]), p[0]))
        self.teams: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.runs: dict[str, list[Run]] = defaultdict(list)
        self.attributes: dict[str, dict[str, str]] = defaultdict(dict)
        self.opened: dict[str, tuple[int, str, str | None]] = {}
        self.accepted: dict[str, int] = {}
        self.resolved: dict[str, tuple[int, str]] = {}
        self.scheduled: dict[str, dict[str, Any]] = {}
        self.completed: dict[str, tuple[int, int, bool]] = {}
        self.log_end = 0
        for _, r in ordered:
            t = r["type"]
            at = parse_timestamp(r["occurred_at"])
            self.log_end = max(self.log_end, at)
            if t in ("EmployeeJoined", "EmployeeMovedTeam"):
                self.teams[r["employee_id"]].append((at, r["team_id"]))
            elif t in ("CustomerRegistered", "CustomerDetailsChanged"):
                for name in ("segment", "region"):
                    if r.get(name) is not None:
                        self.attributes[r["customer_id"]][name] = r[name]
            elif t == "CaseOpened" and r["case_id"] not in self.opened:
                self.opened[r["case_id"]] = (at, r["customer_id"], r.get("severity"))
            elif t == "CaseAccepted":
                self.accepted.setdefault(r["case_id"], at)
            elif t == "CaseResolved":
                self.resolved.setdefault(r["case_id"], (at, r["employee_id"]))
            elif t == "ContractStarted":
                run = Run(
                    r["contract_id"],
                    r["customer_id"],
                    parse_timestamp(r["starts_on"]),
                    {s: r.get(f"sla_hours_{s}") for s in SEVERITIES},
                )
                run.terms.append(
                    Term(r["contract_id"], r["customer_id"], parse_timestamp(r["ends_on"]), r["annual_value"])
                )
                self.runs[r["contract_id"]].append(run)
            elif t == "ContractRenewed":
                run = self.runs[r["contract_id"]][-1]
                run.terms[-1].outcome = "renewed"
                run.terms[-1].renewed_value = r["annual_value"]
                run.terms.append(
                    Term(r["contract_id"], run.customer_id, parse_timestamp(r["ends_on"]), r["annual_value"])
                )
            elif t == "ContractEnded":
                run = self.runs[r["contract_id"]][-1]
                run.terms[-1].outcome = r["reason"]
                run.terms[-1].replaced_by = r.get("replaced_by")
                run.ended_at = at
            elif t == "FieldVisitScheduled":
                self.scheduled[r["visit_id"]] = {
                    "case_id": r["case_id"],
                    "employee_id": r["employee_id"],
                    "window_end": parse_timestamp(r["window_end"]),
                }
            elif t == "FieldVisitCompleted":
                self.completed[r["visit_id"]] = (at, parse_timestamp(r["arrived_at"]), bool(r["fixed"]))

    def team_at(self, employee: str, at: int) -> str:
        history = sorted(self.teams.get(employee, []))
        index = bisect.bisect_right([h[0] for h in history], at) - 1
        return history[index][1] if index >= 0 else "(none)"

    # -- sla_case ---------------------------------------------------------------------------
    def sla_case(self) -> dict[str, dict[str, Any]]:
        """case id -> contract, sla_hours, accepted_at, resolved_at, breached."""
        out = {}
        for case_id, (opened_at, customer, severity) in self.opened.items():
            best: tuple[Any, ...] | None = None
            for contract_id, runs in self.runs.items():
                for number, run in enumerate(runs):
                    if run.customer_id != customer or not run.starts_on <= opened_at < run.covered_until:
                        continue
                    hours = run.sla.get(severity) if severity in SEVERITIES else None
                    hours = hours if hours is not None else run.sla["medium"]
                    key = (hours is None, hours or 0, contract_id, number)
                    if best is None or key < best[0]:
                        best = (key, contract_id, hours)
            contract, hours = (best[1], best[2]) if best else (None, None)
            resolved = self.resolved.get(case_id)
            breached: bool | None = None
            if hours is not None:
                due = opened_at + hours * HOUR_MS
                if resolved is not None:
                    breached = resolved[0] > due
                elif self.log_end > due:
                    breached = True
            out[case_id] = {
                "contract_id": contract,
                "sla_hours": hours,
                "accepted_at": self.accepted.get(case_id),
                "resolved_at": resolved[0] if resolved else None,
                "breached": breached,
            }
        return out

    # -- KPI columns ----------------------------------------------------------------------
    def kpi_employee_month(self) -> dict[tuple[str, str, str], dict[str, int]]:
        """(employee, team, period) -> sla_n, sla_met, visits, visits_on_time, ftf_n, ftf_fixed."""
        counts: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))

        def add(employee: str, at: int, name: str) -> None:
            counts[(employee, self.team_at(employee, at), month(at))][name] += 1

        for case_id, row in self.sla_case().items():
            if row["breached"] is not None and case_id in self.resolved:
                at, resolver = self.resolved[case_id]
                add(resolver, at, "sla_n")
                if not row["breached"]:
                    add(resolver, at, "sla_met")
        first: dict[str, tuple[int, str]] = {}
        for visit_id, (done_at, _, _) in self.completed.items():
            case_id = self.scheduled[visit_id]["case_id"]
            if case_id not in first or (done_at, visit_id) < first[case_id]:
                first[case_id] = (done_at, visit_id)
        firsts = {visit_id for _, visit_id in first.values()}
        for visit_id, (done_at, arrived, fixed) in self.completed.items():
            visit = self.scheduled[visit_id]
            add(visit["employee_id"], done_at, "visits")
            if arrived <= visit["window_end"]:
                add(visit["employee_id"], done_at, "visits_on_time")
            if visit_id in firsts:
                add(visit["employee_id"], done_at, "ftf_n")
                if fixed:
                    add(visit["employee_id"], done_at, "ftf_fixed")
        return {key: dict(value) for key, value in counts.items()}

    # -- retention ------------------------------------------------------------------------
    def retention(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """(segment, region, period) -> counts and values, plus ('(all)', '(all)', period) rollups."""
        start_value = {cid: runs[0].terms[0].value for cid, runs in self.runs.items()}
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        for runs in self.runs.values():
            for run in runs:
                attrs = self.attributes.get(run.customer_id, {})
                for term in run.terms:
                    period = month(term.due_on)
                    retained = {
                        "renewed": term.renewed_value,
                        "replaced": start_value.get(term.replaced_by or "", 0.0),
                        "churned": 0.0,
                    }.get(term.outcome or "")
                    for key in (
                        (attrs.get("segment", "(unknown)"), attrs.get("region", "(unknown)"), period),
                        ("(all)", "(all)", period),
                    ):
                        row = out.setdefault(
                            key,
                            {
                                "up_for_renewal": 0,
                                "renewed": 0,
                                "churned": 0,
                                "replaced": 0,
                                "merged": 0,
                                "open": 0,
                                "value_up": 0.0,
                                "value_decided": 0.0,
                                "value_retained": 0.0,
                            },
                        )
                        row["up_for_renewal"] += 1
                        row[term.outcome or "open"] += 1
                        row["value_up"] += term.value
                        if retained is not None:
                            row["value_decided"] += term.value
                            row["value_retained"] += retained
        for row in out.values():
            decided = row["renewed"] + row["churned"] + row["replaced"]
            row["renewal_rate"] = row["renewed"] / decided if decided else None
            row["nrr_pct"] = (
                100.0 * row["value_retained"] / row["value_decided"] if row["value_decided"] else None
            )
        return out
