"""An independent, obviously-correct computation of the KPI and reward definitions.

Plain Python over the raw JSONL records (all valid, in file order): no SQL, no shared code
with the projection engine beyond the timestamp parser. Follows "Metric definitions v1".
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.records import parse_timestamp

HOUR_MS = 3_600_000


def month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m")


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Bucket:
    csat: list[int] = field(default_factory=list)
    nps: list[int] = field(default_factory=list)
    solved: list[tuple[float, bool, bool, bool]] = field(
        default_factory=list
    )  # ttr, fcr, reopened, knowledge
    escalations: int = 0
    relationship_attempts: int = 0
    compliments: int = 0
    articles_created: int = 0
    citations: int = 0
    links_made: int = 0
    shares: int = 0
    last_at: int = 0

    def add(self, other: Bucket) -> None:
        self.csat += other.csat
        self.nps += other.nps
        self.solved += other.solved
        for name in (
            "escalations",
            "relationship_attempts",
            "compliments",
            "articles_created",
            "citations",
            "links_made",
            "shares",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_at = max(self.last_at, other.last_at)

    def kpis(self) -> dict[str, Any]:
        n = len(self.csat)
        satisfied = sum(1 for c in self.csat if c >= 4)
        nps_n = len(self.nps)
        solved = len(self.solved)
        ttr = [s[0] for s in self.solved]
        return {
            "csat_n": n,
            "csat_satisfied": satisfied,
            "csat_pct": 100.0 * satisfied / n if n else None,
            "nps_n": nps_n,
            "nps": 100.0 * (sum(1 for x in self.nps if x >= 9) - sum(1 for x in self.nps if x <= 6)) / nps_n
            if nps_n
            else None,
            "problems_solved": solved,
            "fcr_n": sum(1 for s in self.solved if s[1]),
            "fcr_rate": sum(1 for s in self.solved if s[1]) / solved if solved else None,
            "ttr_median_h": quantile(ttr, 0.5),
            "ttr_p90_h": quantile(ttr, 0.9),
            "escalations": self.escalations,
            "reopen_rate": sum(1 for s in self.solved if s[2]) / solved if solved else None,
            "relationship_attempts": self.relationship_attempts,
            "compliments": self.compliments,
            "articles_created": self.articles_created,
            "citations": self.citations,
            "links_made": self.links_made,
            "shares": self.shares,
            "participation_rate": sum(1 for s in self.solved if s[3]) / solved if solved else None,
        }


class Oracle:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.teams: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.buckets: dict[tuple[str, str, str], Bucket] = defaultdict(Bucket)
        case_opened: dict[str, int] = {}
        case_owner: dict[str, str | None] = {}
        case_resolver: dict[str, str | None] = {}
        first_resolution: dict[str, tuple[int, str, bool, list[str]]] = {}
        reopen_times: dict[str, list[int]] = defaultdict(list)
        knowledge_cases: set[str] = set()
        interaction_employee: dict[str, str | None] = {}
        authors: dict[str, str] = {}
        cited_pairs: set[tuple[str, str]] = set()
        acts: list[tuple[str, str, int, str]] = []  # (measure, employee, at, event id)
        for r in records:
            t = r["type"]
            at = parse_timestamp(r["occurred_at"])
            employee = r.get("employee_id")
            if t in ("EmployeeJoined", "EmployeeMovedTeam"):
                self.teams[employee].append((at, r["team_id"]))
            elif t == "CaseOpened":
                case_opened[r["case_id"]] = at
                case_owner[r["case_id"]] = employee
            elif t == "CaseAccepted":
                case_owner[r["case_id"]] = employee
            elif t == "CaseEscalated":
                if r.get("to_employee_id"):
                    case_owner[r["case_id"]] = r["to_employee_id"]
                acts.append(("escalation", employee, at, ""))
            elif t == "CaseResolved":
                case_resolver[r["case_id"]] = employee
                current = first_resolution.get(r["case_id"])
                if current is None or at < current[0]:
                    first_resolution[r["case_id"]] = (
                        at,
                        employee,
                        bool(r.get("first_contact")),
                        list(r.get("article_ids") or []),
                    )
            elif t == "CaseReopened":
                reopen_times[r["case_id"]].append(at)
            elif t == "InteractionRecorded":
                interaction_employee[r["event_id"]] = employee
            elif t == "SurveyAnswered":
                who = employee
                if who is None and r.get("case_id"):
                    who = case_resolver.get(r["case_id"]) or case_owner.get(r["case_id"])
                if who is None and r.get("interaction_id"):
                    who = interaction_employee.get(r["interaction_id"])
                if who is not None:
                    if r.get("csat") is not None:
                        acts.append(("csat:" + str(r["csat"]), who, at, ""))
                    if r.get("nps") is not None:
                        acts.append(("nps:" + str(r["nps"]), who, at, ""))
            elif t == "RelationshipAttemptMade":
                acts.append(("relationship", employee, at, ""))
            elif t == "ComplimentReceived":
                acts.append(("compliment", employee, at, ""))
            elif t == "ArticleCreated":
                authors[r["article_id"]] = employee
                acts.append(("article", employee, at, ""))
                if r.get("source_case_id"):
                    knowledge_cases.add(r["source_case_id"])
            elif t == "ArticleLinked":
                acts.append(("link", employee, at, ""))
                knowledge_cases.add(r["case_id"])
                author = authors[r["article_id"]]
                pair = (r["article_id"], r["case_id"])
                if author != employee and pair not in cited_pairs:
                    cited_pairs.add(pair)
                    acts.append(("citation", author, at, ""))
            elif t == "KnowledgeShared":
                acts.append(("share", employee, at, ""))
        for case_id, (at, employee, fcr, articles) in first_resolution.items():
            ttr = (at - case_opened[case_id]) / HOUR_MS
            reopened = any(x > at for x in reopen_times[case_id])
            knowledge = case_id in knowledge_cases or bool(articles)
            bucket = self._bucket(employee, at)
            bucket.solved.append((ttr, fcr, reopened, knowledge))
        for measure, employee, at, _ in acts:
            bucket = self._bucket(employee, at)
            if measure.startswith("csat:"):
                bucket.csat.append(int(measure[5:]))
            elif measure.startswith("nps:"):
                bucket.nps.append(int(measure[4:]))
            else:
                name = {
                    "escalation": "escalations",
                    "relationship": "relationship_attempts",
                    "compliment": "compliments",
                    "article": "articles_created",
                    "citation": "citations",
                    "link": "links_made",
                    "share": "shares",
                }[measure]
                setattr(bucket, name, getattr(bucket, name) + 1)

    def team_at(self, employee: str, at: int) -> str:
        history = sorted(self.teams[employee])
        index = bisect.bisect_right([h[0] for h in history], at) - 1
        return history[index][1] if index >= 0 else "(none)"

    def _bucket(self, employee: str, at: int) -> Bucket:
        bucket = self.buckets[(employee, self.team_at(employee, at), month(at))]
        bucket.last_at = max(bucket.last_at, at)
        return bucket

    def employee_month(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {key: bucket.kpis() for key, bucket in self.buckets.items()}

    def team_month(self) -> dict[tuple[str, str], dict[str, Any]]:
        merged: dict[tuple[str, str], Bucket] = defaultdict(Bucket)
        for (_, team, period), bucket in self.buckets.items():
            merged[(team, period)].add(bucket)
        return {key: bucket.kpis() for key, bucket in merged.items()}

    def reward_scores(
        self, caps: dict[str, float], weights: dict[str, float]
    ) -> dict[tuple[str, str], float]:
        teams = self.team_month()
        per_employee: dict[tuple[str, str], Bucket] = defaultdict(Bucket)
        team_of: dict[tuple[str, str], tuple[int, str]] = {}
        for (employee, team, period), bucket in self.buckets.items():
            per_employee[(employee, period)].add(bucket)
            if (employee, period) not in team_of or bucket.last_at > team_of[(employee, period)][0]:
                team_of[(employee, period)] = (bucket.last_at, team)
        org: dict[str, list[int]] = defaultdict(list)
        for (_, _, period), bucket in self.buckets.items():
            org[period] += bucket.csat
        scores = {}
        for (employee, period), bucket in per_employee.items():
            k = bucket.kpis()
            team = teams[(team_of[(employee, period)][1], period)]
            org_csat = org[period]
            m = (
                (team["csat_satisfied"] / team["csat_n"])
                if team["csat_n"]
                else (sum(1 for c in org_csat if c >= 4) / len(org_csat) if org_csat else 0.0)
            )
            csat = (20 * m + k["csat_satisfied"]) / (20 + k["csat_n"])
            fcr = (
                k["fcr_rate"]
                if k["problems_solved"] >= 5
                else (team["fcr_n"] / team["problems_solved"] if team["problems_solved"] else 0.0)
            )
            components = {
                "csat": csat,
                "fcr": fcr,
                **{name: min(k[name] / caps[name], 1.0) for name in caps},
            }
            scores[(employee, period)] = 100 * sum(weights[n] * v for n, v in components.items())
        return scores
