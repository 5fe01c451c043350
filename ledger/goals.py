"""Rules of team goals that do not depend on ledger state: metrics, comparisons, month ranges.

A team goal names what it gauges as a `kpi_team_month` column (`csat_pct`, `fcr_rate`...),
`score` (the team's mean reward score), or `component:<name>` (the team's mean value of one
reward component of the metric spec). Which components exist depends on the spec, so the
ledger is given the names it accepts (see `goal_metrics`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from crm_ledger.kpis import BY_NAME, COMPONENT_RANGE, GOAL_KPIS, SCORE_RANGE, Range
from ledger.errors import ValidationError

SCORE = "score"
COMPONENT_PREFIX = "component:"
COMPARISONS = frozenset({"at_least", "at_most"})
OUTCOMES = frozenset({"achieved", "missed", "withdrawn"})
#: The longest goal: a goal is gauged monthly and revised; beyond two years it is a strategy.
MAX_GOAL_MONTHS = 24
#: ASCII digits only (`\d` also matches other scripts' digits, which int() accepts).
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def goal_metrics(components: Iterable[str]) -> frozenset[str]:
    """Every name a goal may gauge, given the reward components of the metric spec(s)."""
    return GOAL_KPIS | {SCORE} | {COMPONENT_PREFIX + c for c in components}


def month_index(period: str, field: str) -> int:
    """`YYYY-MM` as a month count (year * 12 + month - 1); a `ValidationError` otherwise."""
    match = _MONTH.fullmatch(period)
    if match is None:
        raise ValidationError(field, f"must be a month YYYY-MM, got {period!r}")
    return int(match.group(1)) * 12 + int(match.group(2)) - 1


def month_of(epoch_ms: int) -> int:
    """The month count (as `month_index`) of a UTC moment."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.year * 12 + moment.month - 1


def check_range(from_period: str, to_period: str, occurred_month: int) -> None:
    """A sane month range: ordered, at most two years, not over before it was agreed."""
    first = month_index(from_period, "from_period")
    last = month_index(to_period, "to_period")
    if last < first:
        raise ValidationError("to_period", f"{to_period} is before from_period {from_period}")
    if last - first + 1 > MAX_GOAL_MONTHS:
        raise ValidationError(
            "to_period", f"a goal spans at most {MAX_GOAL_MONTHS} months, got {last - first + 1}"
        )
    if last < occurred_month:
        raise ValidationError("to_period", f"{to_period} ended before the goal was agreed")


def check_metric(kpi: str, known: frozenset[str]) -> None:
    """The goal's KPI exists: a team KPI, `score`, or a component of the spec."""
    if kpi not in known:
        components = sorted(k for k in known if k.startswith(COMPONENT_PREFIX))
        raise ValidationError(
            "kpi",
            f"unknown KPI {kpi!r}: use a team KPI ({', '.join(sorted(GOAL_KPIS))}), "
            f"'{SCORE}', or one of {', '.join(components) or 'no components'}",
        )


def check_choice(value: str | None, allowed: frozenset[str], field: str) -> None:
    if value is not None and value not in allowed:
        raise ValidationError(field, f"must be one of {', '.join(sorted(allowed))}, got {value!r}")


def target_range(kpi: str) -> Range:
    """The values a goal on `kpi` can be measured at: the KPI descriptor's, or the score's
    (0 to 100), or a reward component's (0 to 1)."""
    if kpi == SCORE:
        return SCORE_RANGE
    if kpi.startswith(COMPONENT_PREFIX):
        return COMPONENT_RANGE
    known = BY_NAME.get(kpi)
    return known.values if known is not None else Range()


def check_target(kpi: str, target: float) -> None:
    """A target the goal's KPI can reach: a CSAT of 101 % or a negative count is never met."""
    allowed = target_range(kpi)
    if not allowed.holds(target):
        raise ValidationError("target", f"{_exactly(target)} is outside the range of {kpi} ({allowed})")


def _exactly(number: float) -> str:
    """A number as short as it reads, but never rounded (100.0000001 is not shown as 100)."""
    short = f"{number:.15g}"
    return short if float(short) == number else repr(number)
