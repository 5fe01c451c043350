"""What the service side costs: generator with and without it, and its share of a model rebuild."""

from __future__ import annotations

import io

from common import BENCH_DIR, arguments, prepared_ledger, report, timed

from importers.generator import GeneratorConfig, write_history
from projections.engine import Projector
from projections.models import all_model_sql, customer_profile_select
from projections.service_models import profile_service_sql, service_model_sql
from projections.sources import LedgerSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB

SERVICE_TYPES = ("Contract", "Product", "FieldVisit")


def main() -> None:
    args = arguments(__doc__ or "", 200_000)
    customers = max(10, args.events // 18)
    config = GeneratorConfig(
        customers=customers, employees=max(20, customers // 150), months=6, seed=args.seed
    )
    with_service, with_seconds = timed(lambda: write_history(config, io.StringIO()))
    without, without_seconds = timed(
        lambda: write_history(GeneratorConfig(**{**config.__dict__, "service": False}), io.StringIO())
    )

    app = prepared_ledger(args.events, args.seed)
    path = BENCH_DIR / "service-models.duckdb"
    for leftover in BENCH_DIR.glob("service-models.duckdb*"):
        leftover.unlink()
    db = ProjectionDB(path)
    spec = load_spec(DEFAULT_SPEC)
    version = db.ensure_version(spec, DEFAULT_SPEC.read_text(), "ledger")
    projector = Projector(db, version, LedgerSource(app), app.codec)
    projector.run()
    schema = db.find_version(version.version).schema
    db.refresh_logs()  # the version's `events` view reads the log's latest snapshot
    con = db.connection
    events = f"{schema}.events"
    profile = f"CREATE OR REPLACE TABLE {schema}.customer_profile AS {customer_profile_select(events)}"
    service_events = con.execute(
        f"SELECT count(*) FROM {schema}.events WHERE "
        + " OR ".join(f"starts_with(event_type, '{prefix}')" for prefix in SERVICE_TYPES)
    ).fetchone()
    total_events = con.execute(f"SELECT count(*) FROM {schema}.events").fetchone()

    def run(statements: list[str]) -> None:
        for statement in statements:
            con.execute(statement)

    everything = all_model_sql(schema, spec, version.version, events, events)
    _, all_seconds = timed(lambda: run(everything))
    _, tables_seconds = timed(lambda: run(service_model_sql(schema)))
    _, profile_seconds = timed(lambda: run([profile]))
    _, widened_seconds = timed(lambda: run([profile, profile_service_sql(schema)]))
    service_seconds = tables_seconds + max(0.0, widened_seconds - profile_seconds)
    db.close()
    report(
        "service_models",
        {
            "events": total_events[0] if total_events else 0,
            "service_events": service_events[0] if service_events else 0,
            "generator": {
                "records_with_service": with_service,
                "records_without": without,
                "seconds_with_service": round(with_seconds, 2),
                "seconds_without": round(without_seconds, 2),
                "ratio": round(with_seconds / without_seconds, 3),
            },
            "rebuild": {
                "all_models_s": round(all_seconds, 3),
                "service_tables_s": round(tables_seconds, 3),
                "profile_widening_s": round(max(0.0, widened_seconds - profile_seconds), 3),
                "service_share": round(service_seconds / all_seconds, 3),
            },
        },
    )


if __name__ == "__main__":
    main()
