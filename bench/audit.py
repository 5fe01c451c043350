"""Audit cost: `audit verify` with the decoded-column check vs. the chain-only verify it extends.

The baseline is verify as it was before decoded columns were checked: the store's chain
plus the mirror's bytes and chain values read row by row (`fetchmany`). The figure is
today's `audit verify --source ledger --source mirror`, which also decodes every mirrored
value again and compares every decoded column. Goal: at most 2x the baseline. The time of
`audit reproduce` (a scratch rebuild of every read model, then a comparison) is reported
beside it.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
from common import BENCH_DIR, arguments, prepared_ledger, report, timed

from audit.reproduce import reproduce
from audit.run import VerifyRequest, run_verify
from audit.verify import ChainEntry, store_entries, verify
from crm_ledger.settings import Settings
from projections.readonly import reader
from projections.service import project_promoted

GOAL_RATIO = 2.0


def rows_before(connection: duckdb.DuckDBPyConnection) -> Iterator[ChainEntry]:
    """The mirror as verify read it before: tuples through fetchmany."""
    cursor = connection.execute(
        'SELECT notification_id, event_id, value, chain, source, "partition", "offset" FROM ledger_events '
        "ORDER BY notification_id"
    )
    while True:
        rows = cursor.fetchmany(10_000)
        if not rows:
            return
        for nid, event_id, value, chain, source, partition, offset in rows:
            at = f"[{partition}]@{offset})" if partition is not None else ")"
            where = f"ledger_events ({source}" + at
            yield ChainEntry(nid, event_id, bytes(value), chain, where)


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    app = prepared_ledger(args.events, args.seed)
    store = BENCH_DIR / f"ledger-{args.events}-{args.seed}.sqlite"
    db = BENCH_DIR / f"audit-{args.events}-{args.seed}.duckdb"
    done = db.with_suffix(".complete")
    settings = Settings(store=str(store), projections_db=db)
    if not done.exists():
        for leftover in BENCH_DIR.glob(f"{db.name}*"):
            leftover.unlink()
        project_promoted(settings, "ledger", None, follow=False)
        done.touch()

    def before() -> int:
        with reader(db) as connection:
            result = verify(store_entries(app), {"mirror": rows_before(connection)})
        assert result.ok, result.findings
        return result.events["mirror"]

    def now() -> int:
        outcome = run_verify(settings, VerifyRequest(sources=("ledger", "mirror")))
        assert outcome.report.ok, outcome.report.findings
        return outcome.report.events["mirror"]

    mirrored, before_s = timed(before)
    _, now_s = timed(now)
    reproduced, reproduce_s = timed(lambda: reproduce(db, None, app.codec))
    assert reproduced.ok, [t for t in reproduced.tables if not t.ok]
    ratio = now_s / before_s
    report(
        "audit",
        {
            "mirrored_events": mirrored,
            "verify_with_decoded_columns_s": round(now_s, 2),
            "baseline_chain_only_verify_s": round(before_s, 2),
            "ratio": round(ratio, 2),
            "goal_ratio": GOAL_RATIO,
            "within_goal": ratio <= GOAL_RATIO,
            "verify_events_per_s": round(mirrored / now_s),
            "reproduce_s": round(reproduce_s, 2),
            "reproduce_events_per_s": round(reproduced.events / reproduce_s),
        },
    )


if __name__ == "__main__":
    main()
