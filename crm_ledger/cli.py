"""The `crm-ledger` command line: one entry point, a subcommand per job.

Exit codes: 0 ok, 1 user error (a one-line message, no traceback), 2 usage, 3 internal.
Settings come from flags and CRM_LEDGER_* variables, read here and passed down.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from crm_ledger import broker
from crm_ledger.errors import CrmLedgerError
from crm_ledger.progress import progress_bar
from crm_ledger.runtime import graceful_stop, open_ledger
from crm_ledger.settings import Settings

err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
# Tables stay readable when piped: no wrapping at 80 columns outside a terminal.
out = Console(width=None if sys.stdout.isatty() else 200)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--store", help="Event store: a SQLite file path or a postgresql:// URL. [env CRM_LEDGER_STORE]"
)
@click.option(
    "--db",
    "db",
    type=click.Path(path_type=Path),
    help="Projection DuckDB file. [env CRM_LEDGER_DB]",
)
@click.option("--bootstrap", help="Kafka bootstrap servers. [env CRM_LEDGER_BOOTSTRAP]")
@click.pass_context
def cli(ctx: click.Context, store: str | None, db: Path | None, bootstrap: str | None) -> None:
    """crm-ledger: an event-sourced ledger for customer-relationship work."""
    ctx.obj = Settings.from_env(os.environ, store=store, projections_db=db, bootstrap=bootstrap)


# -- kafka ---------------------------------------------------------------------------------
@cli.group()
def kafka() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) for development."""


def _broker_config(data: Path, port: int) -> broker.BrokerConfig:
    return broker.BrokerConfig(data_dir=data.resolve(), port=port, controller_port=port + 1)


_data_option = click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=Path(".kafka/data"),
    show_default=True,
    help="Folder for the broker's logs and settings.",
)
_port_option = click.option(
    "--port",
    type=int,
    default=9092,
    show_default=True,
    help="Client port on 127.0.0.1 (controller: port+1).",
)


@kafka.command("up")
@_data_option
@_port_option
def kafka_up(data: Path, port: int) -> None:
    """Start the broker in the background and wait until it answers."""
    config = _broker_config(data, port)
    broker.start(config)
    out.print(f"Kafka is up at {config.bootstrap} (data in {config.data_dir})")


@kafka.command("down")
@_data_option
@_port_option
def kafka_down(data: Path, port: int) -> None:
    """Stop the broker started with `kafka up`."""
    config = _broker_config(data, port)
    out.print("Kafka stopped" if broker.stop(config) else "Kafka was not running")


@kafka.command("status")
@_data_option
@_port_option
def kafka_status(data: Path, port: int) -> None:
    """Say whether the broker is running (exit 1 when it is not)."""
    config = _broker_config(data, port)
    if broker.is_running(config):
        out.print(f"Kafka is running at {config.bootstrap}")
    else:
        out.print("Kafka is not running")
        raise SystemExit(1)


# -- schemas -------------------------------------------------------------------------------
@cli.group()
def schemas() -> None:
    """The Avro schema registry in schemas/."""


_schema_dir_option = click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Schema folder (default: the package's schemas/).",
)


@schemas.command("check")
@_schema_dir_option
def schemas_check(folder: Path | None) -> None:
    """Prove every version reads all older data and the lock file matches (exit 1 if not)."""
    from schemas.compat import check_folder
    from schemas.registry import SCHEMA_DIR

    problems = check_folder(folder or SCHEMA_DIR)
    for problem in problems:
        err.print(f"[red]incompatible[/red] {problem}", highlight=False)
    if problems:
        raise SystemExit(1)
    out.print("schemas check: all versions compatible, lock file matches")


@schemas.command("lock")
@_schema_dir_option
def schemas_lock(folder: Path | None) -> None:
    """Give new schema versions the next free id in schemas.lock.json (ids never change)."""
    from schemas.registry import SCHEMA_DIR, assign_ids

    lock = assign_ids(folder or SCHEMA_DIR)
    out.print(f"{sum(len(v) for v in lock.values())} schema versions locked")


# -- ledger --------------------------------------------------------------------------------
@cli.command()
@click.option("--customers", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--employees", type=click.IntRange(1), default=40, show_default=True)
@click.option("--months", type=click.IntRange(1), default=6, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--start", default="2025-01", show_default=True, help="First month, YYYY-MM.")
@click.option(
    "--invalid-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of deliberately invalid records.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="JSONL file to write ('-' for stdout).",
)
def generate(
    *,
    customers: int,
    employees: int,
    months: int,
    seed: int,
    start: str,
    invalid_rate: float,
    out_path: Path,
) -> None:
    """Write a realistic, deterministic history (same seed = same bytes) as JSONL."""
    from ledger.generator import GeneratorConfig, write_history

    if not _valid_month(start):
        raise click.BadParameter("must be YYYY-MM", param_hint="--start")
    config = GeneratorConfig(customers, employees, months, seed, start, invalid_rate)
    if str(out_path) == "-":
        count = write_history(config, sys.stdout)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("w", encoding="utf-8") as handle:
            count = write_history(config, handle)
    err.print(f"generated {count} records into {out_path}")


def _valid_month(text: str) -> bool:
    parts = text.split("-")
    return len(parts) == 2 and all(p.isdigit() for p in parts) and 1 <= int(parts[1]) <= 12


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--rejects",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Rejects file (JSONL). Default: .crm-ledger/rejects.jsonl",
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True)
@click.pass_context
def ingest(ctx: click.Context, files: tuple[Path, ...], rejects: Path | None, batch_size: int) -> None:
    """Record JSONL or CSV files in the ledger, idempotently (exit 1 if any record was rejected)."""
    from ledger.ingest import read_file

    _ingest_files(_settings(ctx), files, rejects, batch_size, read_file)


def _ingest_files(settings: Settings, files: Any, rejects: Path | None, batch_size: int, read: Any) -> None:
    """Stream each file through `read(path, parser)` into the ledger; summary and exit code."""
    from ledger.ingest import IngestSummary, RejectSink, ingest_records
    from ledger.records import RecordParser

    for path in files:
        if not Path(path).is_file():
            raise CrmLedgerError(f"{path}: no such file")
    app = open_ledger(settings)
    parser = RecordParser(app.registry)
    sink = RejectSink(rejects or settings.rejects_file)
    total = IngestSummary()
    try:
        for path in files:
            records = read(Path(path), parser)
            with progress_bar(f"ingest {Path(path).name}", Path(path).stat().st_size) as reporter:
                total.add(ingest_records(app, records, sink, batch_size=batch_size, reporter=reporter))
    finally:
        sink.close()
    click.echo(total.line())
    if total.rejected:
        click.echo(f"rejects written to {rejects or settings.rejects_file}", err=True)
        raise SystemExit(1)


@cli.group("import")
def import_group() -> None:
    """Import other systems' history: the public CFPB complaint export, or any CSV with a mapping."""


_rejects_option = click.option(
    "--rejects",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Rejects file (JSONL). Default: .crm-ledger/rejects.jsonl",
)


@import_group.command("cfpb")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@_rejects_option
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True)
@click.pass_context
def import_cfpb(ctx: click.Context, files: tuple[Path, ...], rejects: Path | None, batch_size: int) -> None:
    """Import CFPB Consumer Complaint Database CSV exports (columns matched by name)."""
    from ledger.cfpb import read_cfpb

    _ingest_files(_settings(ctx), files, rejects, batch_size, read_cfpb)


@import_group.command("csv")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--mapping",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="Mapping file (TOML), see examples/helpdesk-mapping.toml.",
)
@_rejects_option
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True)
@click.pass_context
def import_csv(
    ctx: click.Context, files: tuple[Path, ...], mapping: Path, rejects: Path | None, batch_size: int
) -> None:
    """Import a CSV export of another system through a column mapping."""
    from ledger.mapped_csv import load_mapping, read_mapped_csv
    from ledger.records import RecordParser
    from schemas.registry import SchemaRegistry

    load_mapping(mapping, RecordParser(SchemaRegistry.load()))  # a bad mapping fails before any work
    _ingest_files(
        _settings(ctx),
        files,
        rejects,
        batch_size,
        lambda path, parser: read_mapped_csv(path, mapping, parser),
    )


@cli.command()
@click.option("--follow", is_flag=True, help="Keep publishing new events until Ctrl-C.")
@click.option(
    "--partitions",
    type=click.IntRange(1, 1000),
    default=None,
    help="Partitions when creating the topic (default 6).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1_000_000),
    default=5000,
    show_default=True,
    help="Events per Kafka transaction.",
)
@click.pass_context
def relay(ctx: click.Context, follow: bool, partitions: int | None, batch_size: int) -> None:
    """Publish the ledger to Kafka exactly once, in order (position recovered from Kafka)."""
    from ledger.relay import Relay, RelayConfig

    settings = _settings(ctx)
    app = open_ledger(settings)
    config = RelayConfig(
        bootstrap=settings.bootstrap,
        topic=settings.events_topic,
        partitions=partitions or settings.partitions,
        transactional_id=settings.transactional_id,
        batch_size=batch_size,
    )
    with graceful_stop() as stop, progress_bar("relay", None) as reporter:
        sent = Relay(app, config).run(follow=follow, reporter=reporter, should_stop=stop)
    click.echo(f"relayed {sent} events to {config.topic}")


# -- projections ---------------------------------------------------------------------------
_source_option = click.option(
    "--source",
    type=click.Choice(["ledger", "kafka"]),
    default="ledger",
    show_default=True,
    help="Read the embedded notification log or the Kafka topic.",
)


@cli.command()
@_source_option
@click.option("--follow", is_flag=True, help="Keep following the log until Ctrl-C.")
@click.option(
    "--metrics",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Metric spec for a first build (default: projections/metrics/default.toml).",
)
@click.option(
    "--refresh-interval",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="Seconds between read-model refreshes when following.",
)
@click.option(
    "--publish",
    is_flag=True,
    help="After each refresh, send changed profiles, scores and statements to the compacted "
    "crm.projection.* topics.",
)
@click.pass_context
def project(
    ctx: click.Context,
    source: str,
    follow: bool,
    metrics: Path | None,
    refresh_interval: float,
    publish: bool,
) -> None:
    """Build (and follow) the promoted version of the read models in DuckDB."""
    from projections.service import project_promoted

    settings = _settings(ctx)
    with graceful_stop() as stop, progress_bar(f"project from {source}", None) as reporter:
        result = project_promoted(
            settings,
            source,
            metrics,
            follow=follow,
            reporter=reporter,
            should_stop=stop,
            refresh_interval_s=refresh_interval,
            on_refresh=_publisher(settings) if publish else None,
        )
    click.echo(result)


def _publisher(settings: Settings) -> Any:
    from projections.publish import publish_changes
    from schemas.codec import AvroCodec
    from schemas.registry import SchemaRegistry

    codec = AvroCodec(SchemaRegistry.load())

    def publish(db: Any) -> None:
        schema = db.promoted_version()
        if schema is not None:
            sent = publish_changes(db.connection, schema, settings.bootstrap, codec)
            click.echo("published " + ", ".join(f"{n} to {t}" for t, n in sent.items()), err=True)

    return publish


@cli.command()
@click.pass_context
def publish(ctx: click.Context) -> None:
    """Send the promoted version's changed profiles, scores and statements to the compacted topics once."""
    from projections.store import ProjectionDB

    settings = _settings(ctx)
    with ProjectionDB(settings.projections_db) as db:
        if db.promoted_version() is None:
            raise CrmLedgerError("no version is promoted yet (run `crm-ledger project`)")
        _publisher(settings)(db)


_version_arg = click.argument("version")


@cli.command()
@click.option(
    "--metrics",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The metric spec (TOML) to build a version for.",
)
@_source_option
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Only events with occurred_at <= this moment (ISO date or timestamp, UTC).",
)
@click.option("--name", default=None, help="Human name of the version (default: the spec's name).")
@click.option(
    "--full",
    is_flag=True,
    help="Build every table of the version from the decoded log instead of sharing another version's.",
)
@click.option(
    "--from-source",
    "from_source",
    is_flag=True,
    help="Decode the whole source again into a fresh log (replacing the shared one) first.",
)
@click.pass_context
def replay(
    ctx: click.Context,
    metrics: Path,
    source: str,
    as_of: str | None,
    name: str | None,
    full: bool,
    from_source: bool,
) -> None:
    """Build a new version of the read models side by side with the live one (resumable)."""
    from projections.engine import parse_as_of
    from replay.build import replay as run_replay

    settings = _settings(ctx)
    moment = parse_as_of(as_of)
    with graceful_stop() as stop, progress_bar("replay", None) as reporter:
        result = run_replay(
            settings,
            metrics,
            source,
            as_of=moment,
            name=name,
            full=full,
            from_source=from_source,
            reporter=reporter,
            should_stop=stop,
        )
    click.echo(result.message())
    if result.mode == "interrupted":
        raise SystemExit(130)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def versions(ctx: click.Context, fmt: str) -> None:
    """List the versions of the read models (name, hash, built, events, position, promoted)."""
    from projections.store import ProjectionDB

    with ProjectionDB(_settings(ctx).projections_db) as db:
        rows = db.versions()
    if fmt == "json":
        click.echo(json.dumps([_version_row(v) for v in rows], indent=2, default=str))
        return
    table = Table(
        "version",
        "name",
        "spec hash",
        "as of",
        "source",
        "state",
        "built at",
        "events",
        "position",
        "promoted",
    )
    for v in rows:
        state = v.state + (f" (shares {v.built_from})" if v.built_from else "")
        table.add_row(
            v.version,
            v.name,
            v.spec_hash[:12],
            str(v.as_of or ""),
            v.source,
            state,
            str(v.built_at or ""),
            str(v.events),
            v.position or "",
            "yes" if v.promoted else "",
        )
    out.print(table)


def _version_row(v: Any) -> dict[str, Any]:
    keys = (
        "version",
        "name",
        "spec_hash",
        "kpi_hash",
        "as_of",
        "source",
        "state",
        "created_at",
        "built_at",
        "events",
        "position",
        "built_from",
        "promoted",
    )
    return {k: getattr(v, k) for k in keys}


@cli.command()
@click.argument("old")
@click.argument("new")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
@click.option(
    "--threshold",
    type=float,
    default=50.0,
    show_default=True,
    help="Reward threshold whose crossings are listed.",
)
@click.option(
    "--limit", type=click.IntRange(1), default=20, show_default=True, help="Rows shown in table format."
)
@click.pass_context
def diff(ctx: click.Context, old: str, new: str, fmt: str, threshold: float, limit: int) -> None:
    """Compare two versions: score and rank changes per employee-period, KPI changes, summary."""
    from projections.store import ProjectionDB
    from replay.diff import diff_versions

    with ProjectionDB(_settings(ctx).projections_db) as db:
        report = diff_versions(db.connection, db.find_version(old), db.find_version(new), threshold)
    if fmt == "json":
        click.echo(report.to_json())
    elif fmt == "csv":
        click.echo(report.to_csv(), nl=False)
    else:
        _print_diff(report, limit)


def _print_diff(report: Any, limit: int) -> None:
    def num(value: float | None, digits: int = 2) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    table = Table(
        "employee",
        "period",
        "old score",
        "new score",
        "change",
        "old rank",
        "new rank",
        title=f"{report.old} -> {report.new}",
    )
    for r in report.rows[:limit]:
        table.add_row(
            r.employee_id,
            r.period,
            num(r.old_score),
            num(r.new_score),
            num(r.change),
            str(r.old_rank or ""),
            str(r.new_rank or ""),
        )
    out.print(table)
    out.print(
        f"rows compared {report.rows_compared}, changed {report.rows_changed}, "
        f"Spearman rank correlation {num(report.spearman, 4)}"
    )
    for label, rows in (("largest gains", report.largest_gains), ("largest losses", report.largest_losses)):
        out.print(
            f"{label}: " + (", ".join(f"{r.employee_id} {r.period} {r.change:+.2f}" for r in rows) or "none")
        )
    threshold = f"{report.threshold:g}"
    out.print(
        f"crossed {threshold} upwards: "
        + (", ".join(f"{r.employee_id} {r.period}" for r in report.crossed_up) or "none")
    )
    out.print(
        f"crossed {threshold} downwards: "
        + (", ".join(f"{r.employee_id} {r.period}" for r in report.crossed_down) or "none")
    )
    out.print(
        "KPI values changed: " + (", ".join(f"{k} {v}" for k, v in report.kpi_changes.items()) or "none")
    )


@cli.command()
@_version_arg
@click.pass_context
def promote(ctx: click.Context, version: str) -> None:
    """Point the stable views at VERSION in one transaction (promoting an older one is the rollback)."""
    _on_version(ctx, version, "promote", "promoted")


@cli.command()
@_version_arg
@click.pass_context
def drop(ctx: click.Context, version: str) -> None:
    """Delete a version (never the promoted one)."""
    _on_version(ctx, version, "drop", "dropped")


def _on_version(ctx: click.Context, version: str, action: str, done: str) -> None:
    """Find a version by id, prefix or name and apply a ProjectionDB action to it."""
    from projections.store import ProjectionDB

    with ProjectionDB(_settings(ctx).projections_db) as db:
        target = db.find_version(version)
        getattr(db, action)(target)
    click.echo(f"{done} {target.version} ({target.name})")


@cli.group()
def customer() -> None:
    """Look up a customer's personal data (decrypted while the customer is not forgotten)."""


@customer.command("show")
@click.argument("customer_id")
@click.pass_context
def customer_show(ctx: click.Context, customer_id: str) -> None:
    """Print a customer's facts with personal fields decrypted ([forgotten] after erasure)."""
    from ledger.domain import Customer, aggregate_id
    from ledger.vault import PERSONAL_FIELDS

    app = open_ledger(_settings(ctx))
    events = list(app.events.get(aggregate_id(Customer.KIND, customer_id)))
    if not events:
        raise CrmLedgerError(f"unknown customer {customer_id!r}")
    for event in events:
        data = dict(event.data)  # type: ignore[attr-defined]
        for name in PERSONAL_FIELDS.get(event.event_type, ()):  # type: ignore[attr-defined]
            data[name] = app.vault.reveal(customer_id, data.get(name))
        shown = ", ".join(f"{k}={v}" for k, v in data.items() if v is not None)
        click.echo(f"{event.event_type}: {shown}")  # type: ignore[attr-defined]


# -- reward periods ------------------------------------------------------------------------
@cli.group()
def period() -> None:
    """Close reward months, follow late events and rule changes, issue adjustments."""


@period.command("close")
@click.argument("month")
@click.pass_context
def period_close(ctx: click.Context, month: str) -> None:
    """Close MONTH (YYYY-MM): record the ledger position and issue one statement per employee."""
    from replay.periods import close_period

    result = close_period(_settings(ctx), month)
    click.echo(
        f"closed {result.period} at ledger position {result.position} with version {result.version}: "
        f"{result.statements} statements issued"
    )


@period.command("status")
@click.argument("month")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def period_status_command(ctx: click.Context, month: str, fmt: str) -> None:
    """Late events since the close and how far live scores drift from the statements."""
    from replay.periods import period_status

    status = period_status(_settings(ctx), month)
    if fmt == "json":
        click.echo(status.to_json())
        return
    click.echo(
        f"{status.period}: closed at position {status.position} with {status.closed_version}; "
        f"{status.statements} statements, {status.adjustments} adjustments; promoted now {status.promoted}"
    )
    click.echo(f"late events since the close: {status.late_events}")
    if not status.drifts:
        click.echo("live scores equal what was told")
    for drift in status.drifts:
        click.echo(
            f"  {drift.employee_id}: told {drift.told:.4f}, live {drift.live:.4f} ({drift.delta:+.4f})"
        )


@period.command("adjust")
@click.argument("month")
@click.option("--dry-run", is_flag=True, help="Show the adjustments without issuing them.")
@click.pass_context
def period_adjust(ctx: click.Context, month: str, dry_run: bool) -> None:
    """Issue adjustments where live scores differ from what was told (idempotent)."""
    from replay.periods import adjust_period

    adjustments = adjust_period(_settings(ctx), month, dry_run=dry_run)
    verb = "would issue" if dry_run else "issued"
    click.echo(f"{verb} {len(adjustments)} adjustment(s) for {month}")
    for a in adjustments:
        click.echo(f"  {a.employee_id}: {a.old_score:.4f} -> {a.new_score:.4f} ({a.delta:+.4f}) {a.reason}")


@cli.command()
@click.option("--employee", required=True, help="Employee id.")
@click.option("--period", "month", required=True, help="Period, YYYY-MM.")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "json"]), default="md", show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write to this file."
)
@click.pass_context
def statement(ctx: click.Context, employee: str, month: str, fmt: str, out: Path | None) -> None:
    """What an employee was told for a closed period and why, with adjustments since."""
    from replay.statement import build_statement

    result = build_statement(open_ledger(_settings(ctx)), employee, month)
    text = {"md": result.to_markdown, "html": result.to_html, "json": result.to_json}[fmt]()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")


# -- auditors ------------------------------------------------------------------------------
@cli.group()
def audit() -> None:
    """Verify that the ledger is complete and untampered."""


@audit.command("verify")
@click.option(
    "--source",
    "sources",
    type=click.Choice(["ledger", "kafka", "mirror"]),
    multiple=True,
    help="Copies to check (repeatable). Default: ledger and mirror, plus kafka when reachable.",
)
@click.pass_context
def audit_verify(ctx: click.Context, sources: tuple[str, ...]) -> None:
    """Recompute the hash chain from each copy and report the first gap, duplicate or alteration."""
    from ledger.audit import kafka_entries, mirror_entries, store_entries, verify
    from projections.readonly import reader

    settings = _settings(ctx)
    app = open_ledger(settings)
    wanted = set(sources) or {"ledger", "mirror", "kafka?"}
    copies: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if wanted & {"mirror"} and (settings.projections_db.exists() or "mirror" in sources):
            connection = stack.enter_context(reader(settings.projections_db))
            copies["mirror"] = mirror_entries(connection)
        if "kafka" in wanted or ("kafka?" in wanted and _kafka_reachable(settings)):
            copies["kafka"] = kafka_entries(settings.bootstrap, settings.events_topic)
        with progress_bar("audit", app.max_position()) as reporter:
            report = verify(_counting(store_entries(app), reporter), copies)
    for name, count in report.events.items():
        click.echo(f"{name}: {count} events")
    click.echo(f"chain head: {report.head}")
    if report.ok:
        click.echo("audit verify: all copies agree, chain intact")
        return
    for finding in report.findings:
        click.echo(f"PROBLEM {finding}")
    raise SystemExit(1)


def _counting(entries: Any, reporter: Any) -> Any:
    for count, entry in enumerate(entries, start=1):
        if count % 10_000 == 0:
            reporter.advance(10_000, events=10_000)
        yield entry


def _kafka_reachable(settings: Settings) -> bool:
    from crm_ledger.kafka import topic_exists

    return topic_exists(settings.bootstrap, settings.events_topic)


@cli.command()
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to this file (required for parquet).",
)
@click.pass_context
def query(ctx: click.Context, sql: str, fmt: str, out: Path | None) -> None:
    """Run read-only SQL against the projection database (writes are refused by DuckDB)."""
    from projections.readonly import reader, render, run_query

    with reader(_settings(ctx).projections_db) as connection:
        relation = run_query(connection, sql)
        if relation is None:
            click.echo("(no result)")
            return
        text = render(relation, fmt, out)
        if text is None and fmt == "table":
            _print_relation(relation)
        elif text:
            click.echo(text, nl=False)
        elif out is not None:
            click.echo(f"wrote {out}", err=True)


def _print_relation(relation: Any) -> None:
    table = Table(*relation.columns)
    for row in relation.fetchall():
        table.add_row(*["" if v is None else str(v) for v in row])
    out.print(table)


@cli.command()
@click.option("--employee", required=True, help="Employee id.")
@click.option("--period", required=True, help="Period, YYYY-MM.")
@click.option("--version", default=None, help="Version (default: the promoted one).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def explain(ctx: click.Context, employee: str, period: str, version: str | None, fmt: str) -> None:
    """Explain a reward score: components, weights, caps, KPI values and the events behind them."""
    from projections.errors import ProjectionError
    from projections.explain import explain as build_explanation
    from projections.readonly import reader

    if not _valid_month(period):
        raise click.BadParameter("must be YYYY-MM", param_hint="--period")
    with reader(_settings(ctx).projections_db) as connection:
        schema = version or _promoted(connection)
        known = {r[0] for r in connection.execute("SELECT version FROM crm_versions").fetchall()}
        if schema not in known:
            raise ProjectionError(f"unknown version {schema!r}; known versions: {', '.join(sorted(known))}")
        result = build_explanation(connection, schema, employee, period)
    click.echo(result.to_json() if fmt == "json" else result.to_text())


def _promoted(connection: Any) -> str:
    from projections.errors import ProjectionError

    row = connection.execute("SELECT version FROM crm_promoted WHERE id = 1").fetchone()
    if row is None:
        raise ProjectionError("no version is promoted yet (run `crm-ledger project`)")
    return str(row[0])


@cli.command()
@click.option(
    "--parquet",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for one Parquet file per read model.",
)
@click.pass_context
def export(ctx: click.Context, folder: Path) -> None:
    """Write every read model of the promoted version as Parquet."""
    from projections.readonly import export_parquet

    for path in export_parquet(_settings(ctx).projections_db, folder):
        click.echo(f"wrote {path}")


@cli.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".crm-ledger/demo"),
    show_default=True,
    help="Demo folder (recreated).",
)
@click.option("--customers", type=click.IntRange(1), default=800, show_default=True)
@click.option("--employees", type=click.IntRange(1), default=30, show_default=True)
@click.option("--months", type=click.IntRange(1), default=3, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
def demo(folder: Path, customers: int, employees: int, months: int, seed: int) -> None:
    """The main job on the embedded default: generate, ingest, project, show the read models."""
    from crm_ledger.demo import run_demo
    from ledger.generator import GeneratorConfig

    settings = run_demo(folder, GeneratorConfig(customers, employees, months, seed), click.echo)
    click.echo(
        f"\nDone. Explore it: crm-ledger --store {settings.store} --db {settings.projections_db} "
        'query "SELECT * FROM reward_score ORDER BY score DESC LIMIT 10"'
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map outcomes to exit codes."""
    try:
        cli.main(args=argv, prog_name="crm-ledger", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code or 0)
    except click.UsageError as error:
        error.show()
        return 2
    except click.ClickException as error:
        error.show()
        return 1
    except click.Abort:
        err.print("aborted")
        return 130
    except CrmLedgerError as error:
        err.print(f"error: {error}", highlight=False, markup=False)
        return 1
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception:  # noqa: BLE001 - the last line of defence prints the traceback
        traceback.print_exc()
        return 3
    return 0


def _run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _run()

__all__: list[Any] = ["cli", "main"]
