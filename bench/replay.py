"""Replay: full rebuild from the log vs. a weights-only recompute from the stored KPI tables."""

from __future__ import annotations

from common import BENCH_DIR, arguments, prepared_ledger, report, timed

from crm_ledger.settings import Settings
from projections.spec import DEFAULT_SPEC
from replay.build import replay

GOAL_RATE = 250_000
GOAL_WEIGHTS_S = 2.0


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    app = prepared_ledger(args.events, args.seed)
    store = BENCH_DIR / f"ledger-{args.events}-{args.seed}.sqlite"
    db = BENCH_DIR / "replay.duckdb"
    for leftover in [*BENCH_DIR.glob("replay.duckdb*"), *BENCH_DIR.glob("replays/*")]:
        leftover.unlink()
    settings = Settings(store=str(store), projections_db=db)
    full, full_seconds = timed(lambda: replay(settings, DEFAULT_SPEC, "ledger", full=True))
    weights = BENCH_DIR / "weights.toml"
    weights.write_text(
        DEFAULT_SPEC.read_text()
        .replace("cap = 10\n", "cap = 6\n")
        .replace("weight = 0.25", "weight = 0.30", 1)
        .replace("weight = 0.05", "weight = 0.00")
    )
    scores_only, weights_seconds = timed(lambda: replay(settings, weights, "ledger"))
    assert scores_only.mode == "scores-only", scores_only.message()
    rate = full.applied / full_seconds
    report(
        "replay",
        {
            "events": full.applied,
            "ledger_events": app.max_position(),
            "full_replay_s": round(full_seconds, 2),
            "full_replay_events_per_s": round(rate),
            "weights_only_recompute_s": round(weights_seconds, 3),
            "full_vs_weights_only": round(full_seconds / weights_seconds, 1),
            "goal_full_events_per_s": GOAL_RATE,
            "goal_full_ratio": round(rate / GOAL_RATE, 2),
            "goal_weights_only_s": GOAL_WEIGHTS_S,
            "weights_only_within_goal": weights_seconds <= GOAL_WEIGHTS_S,
        },
    )


if __name__ == "__main__":
    main()
