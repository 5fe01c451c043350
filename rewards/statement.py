"""`statement`: what an employee was told for a period, and why (Markdown, HTML, JSON).

Read from the ledger itself (the statement and adjustment events), never from a
recomputed projection: a statement shows what was issued, whatever the rules are today.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from ledger.application import LedgerApplication
from ledger.records import format_timestamp
from rewards.errors import PeriodError
from rewards.periods import parse_period


@dataclass
class Statement:
    employee_id: str
    period: str
    score: float
    issued_at: str
    version: str
    spec_name: str
    team_id: str | None
    components: list[dict[str, Any]]
    kpis: list[dict[str, Any]]
    team: dict[str, Any]
    adjustments: list[dict[str, Any]] = field(default_factory=list)
    #: the statement event's id, and the ledger position and chain head the period was
    #: closed at: what binds this statement to the log (`audit verify --statement`)
    event_id: str = ""
    ledger_position: int | None = None
    chain_head: str | None = None

    @property
    def current_score(self) -> float:
        return float(self.adjustments[-1]["new_score"]) if self.adjustments else self.score

    def to_json(self) -> str:
        payload = dict(self.__dict__)
        payload["current_score"] = self.current_score
        return json.dumps(payload, indent=2, default=str)

    def to_markdown(self) -> str:
        lines = [
            f"# Reward statement: {self.employee_id}, {self.period}",
            "",
            f"**Score: {self.score:.2f}** (issued {self.issued_at}, rules {self.spec_name!r}, version {self.version})",
            "",
            "| component | KPI | KPI value | sample | weight | cap | component value | points |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in self.components:
            lines.append(
                f"| {c['component']} | {c['kpi']} | {_num(c['kpi_value'])} | {c['sample_n']} | {c['weight']:.2f} "
                f"| {_num(c['cap'])} | {c['value']:.3f} | {c['points']:.2f} |"
            )
        lines += ["", f"Team {self.team_id}: {_team_line(self.team)}", ""]
        if self.kpis:
            lines.append(
                "KPI values: "
                + ", ".join(
                    f"{k} {_num(v)}"
                    for k, v in self.kpis[0].items()
                    if k not in {"employee_id", "period", "team_id"} and v not in (None, 0)
                )
            )
        lines.append("")
        if self.adjustments:
            lines.append("## Adjustments since")
            lines.append("")
            lines.append("| issued | old | new | change | reason |")
            lines.append("|---|---:|---:|---:|---|")
            for a in self.adjustments:
                lines.append(
                    f"| {a['issued_at']} | {a['old_score']:.2f} | {a['new_score']:.2f} | {a['delta']:+.2f} | {a['reason']} |"
                )
            lines.append("")
            lines.append(f"**Current score: {self.current_score:.2f}**")
        else:
            lines.append("No adjustments since the statement was issued.")
        lines += ["", self.binding_line()]
        return "\n".join(lines) + "\n"

    def binding_line(self) -> str:
        """Where in the ledger this statement stands: checkable later against the log."""
        head = self.chain_head or "(not recorded: closed before chain heads were kept)"
        return (
            f"Ledger position at the close: {self.ledger_position}, chain head {head}; "
            f"statement event {self.event_id}."
        )

    def to_html(self) -> str:
        """A self-contained page (inline CSS and SVG, no network) with a chart of the components."""
        width, bar_height, gap, label_width = 640, 22, 8, 190
        biggest = max([c["weight"] * 100 for c in self.components] + [1.0])
        bars = []
        for i, c in enumerate(self.components):
            y = i * (bar_height + gap)
            possible = (width - label_width - 60) * c["weight"] * 100 / biggest
            earned = possible * (c["value"] if c["value"] is not None else 0)
            bars.append(
                f'<text x="0" y="{y + 16}" class="label">{html.escape(c["component"])}</text>'
                f'<rect x="{label_width}" y="{y}" width="{possible:.1f}" height="{bar_height}" class="possible"/>'
                f'<rect x="{label_width}" y="{y}" width="{earned:.1f}" height="{bar_height}" class="earned"/>'
                f'<text x="{label_width + possible + 6:.1f}" y="{y + 16}" class="value">{c["points"]:.1f} / {c["weight"] * 100:.0f}</text>'
            )
        svg_height = len(self.components) * (bar_height + gap)
        rows = "".join(
            f"<tr><td>{html.escape(c['component'])}</td><td>{html.escape(c['kpi'])}</td><td>{_num(c['kpi_value'])}</td>"
            f"<td>{c['sample_n']}</td><td>{c['weight']:.2f}</td><td>{_num(c['cap'])}</td><td>{c['value']:.3f}</td>"
            f"<td>{c['points']:.2f}</td></tr>"
            for c in self.components
        )
        adjustments = (
            "".join(
                f"<tr><td>{html.escape(a['issued_at'])}</td><td>{a['old_score']:.2f}</td><td>{a['new_score']:.2f}</td>"
                f"<td>{a['delta']:+.2f}</td><td>{html.escape(a['reason'])}</td></tr>"
                for a in self.adjustments
            )
            or '<tr><td colspan="5">No adjustments since the statement was issued.</td></tr>'
        )
        title = f"Reward statement {self.employee_id} {self.period}"
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; color: #1d2330; }}
h1 {{ font-size: 1.4rem; }} .score {{ font-size: 2.6rem; font-weight: 700; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0; }}
td, th {{ border-bottom: 1px solid #dde2ea; padding: .35rem .5rem; text-align: right; }}
td:first-child, th:first-child, td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
.label {{ font-size: 13px; fill: #1d2330; }} .value {{ font-size: 12px; fill: #4a5568; }}
.possible {{ fill: #e6ebf2; }} .earned {{ fill: #2f7d5a; }} .muted {{ color: #5b6475; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="score">{self.score:.2f}</p>
<p class="muted">Issued {html.escape(self.issued_at)} under the rules “{html.escape(self.spec_name)}” (version {html.escape(self.version)}).
Team {html.escape(str(self.team_id))}: {html.escape(_team_line(self.team))}.</p>
<svg role="img" aria-label="components" width="{width}" height="{svg_height}" viewBox="0 0 {width} {svg_height}">{"".join(bars)}</svg>
<table><thead><tr><th>component</th><th>KPI</th><th>KPI value</th><th>sample</th><th>weight</th><th>cap</th><th>value</th><th>points</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Adjustments since</h2>
<table><thead><tr><th>issued</th><th>old</th><th>new</th><th>change</th><th>reason</th></tr></thead><tbody>{adjustments}</tbody></table>
<p><strong>Current score: {self.current_score:.2f}</strong></p>
<p class="muted" id="ledger-binding">{html.escape(self.binding_line())}</p>
</body></html>
"""


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _team_line(team: dict[str, Any]) -> str:
    if not team.get("members"):
        return "no team comparison"
    return (
        f"{team['members']} people with statements, team average {team['average']:.2f}, "
        f"rank {team['rank']} of {team['members']}"
    )


def build_statement(app: LedgerApplication, employee_id: str, period: str) -> Statement:
    """The issued statement of one employee, the team comparison, and adjustments since."""
    period = parse_period(period)
    if app.reward_period(period) is None:
        raise PeriodError(f"period {period} is not closed: there are no statements for it")
    facts = app.period_facts(period)
    statements = {f.data["employee_id"]: f for f in facts if f.event_type == "RewardStatementIssued"}
    mine = statements.get(employee_id)
    if mine is None:
        known = ", ".join(sorted(statements)[:10]) or "none"
        raise PeriodError(
            f"no statement for employee {employee_id!r} in {period} (statements exist for: {known}...)"
        )
    details = json.loads(mine.data["components"])
    team_id = details.get("team_id")
    team_scores = sorted(
        (
            f.data["score"]
            for f in statements.values()
            if json.loads(f.data["components"]).get("team_id") == team_id
        ),
        reverse=True,
    )
    team = {
        "members": len(team_scores),
        "average": sum(team_scores) / len(team_scores) if team_scores else None,
        "rank": team_scores.index(mine.data["score"]) + 1 if team_scores else None,
    }
    adjustments = [
        {
            "issued_at": format_timestamp(f.occurred_at),
            "old_score": f.data["old_score"],
            "new_score": f.data["new_score"],
            "delta": f.data["delta"],
            "old_version": f.data["old_version"],
            "new_version": f.data["new_version"],
            "reason": f.data["reason"],
        }
        for f in facts
        if f.event_type == "RewardAdjustmentIssued" and f.data["employee_id"] == employee_id
    ]
    closed = next(f for f in facts if f.event_type == "RewardPeriodClosed")
    return Statement(
        employee_id,
        period,
        float(mine.data["score"]),
        format_timestamp(mine.occurred_at),
        mine.data["version"],
        mine.data["spec_name"],
        team_id,
        details.get("components", []),
        details.get("kpis", []),
        team,
        adjustments,
        mine.event_id,
        int(closed.data["ledger_position"]),
        closed.data.get("chain_head"),
    )
