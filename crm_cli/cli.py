"""The `crm-ledger` command line: one entry point, a subcommand per job.

Exit codes: 0 ok, 1 user error (a one-line message, no traceback), 2 usage, 3 internal,
75 temporary failure (run the same command again later), 130 interrupted.
Settings come from flags and CRM_LEDGER_* variables, read here and passed down.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from crm_cli import take_over_interrupts
from crm_cli.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_TRANSIENT
from crm_cli.runtime import graceful_stop, interrupt_after, silence_stdout
from crm_ledger.errors import CrmLedgerError, TransientError
from crm_ledger.outputs import refuse_missing_folder, replaced_whole
from crm_ledger.progress import progress_bar
from crm_ledger.settings import (
    MAX_WAIT_S,
    RECORD_BYTES_RANGE,
    Settings,
    delta_unsafe_advice,
    delta_unsafe_part,
)
from crm_ledger.visible import visible
from importers.sizes import MAX_CUSTOMERS, MAX_EMPLOYEES
from ledger.records import is_unicode_text

if TYPE_CHECKING:
    from crm_cli.broker import BrokerConfig
    from crm_cli.registry_server import RegistryServerConfig
    from ledger.application import LedgerApplication

# Without markup: messages hold data (ids, names, paths), and "[/x]" in one was read as a
# closing tag (an error); the few styled lines ask for markup themselves.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)
# Tables stay readable when piped: no wrapping at 80 columns outside a terminal.
out = Console(width=None if sys.stdout.isatty() else 200, markup=False)


#: Where `crm-ledger demo` (and `make demo`) writes its projection database.
DEMO_DB = Path(".crm-ledger/demo/projections.duckdb")


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _finite(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """A number option's value; nan passes click's ranges (every comparison with it is false)."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number")
    return value


def _given_path(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """A path option's value; an empty one (an unset shell variable) is not the current folder."""
    if not value.strip():
        raise click.BadParameter("is empty: give a folder or file name")
    path = Path(value)
    _not_stdout(ctx, param, path)
    return path


def _not_stdout(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """An output that cannot be stdout: '-' names stdout wherever an output is named, and is
    refused here rather than made a file or folder named '-' in the current folder."""
    if value is not None and str(value) == "-":
        raise click.BadParameter("'-' is stdout, which this output cannot be: give a folder or file name")
    return value


def _given_text(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An optional text option's value: a blank one (an unset shell variable) is refused, not
    taken as the option left out (every team's goals, the promoted version)."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty: give a value or leave the option out")
    return value


def _given_reason(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A required free-text option's value (why a goal changed): a blank one says nothing,
    and is refused as the option's usage error rather than as the event's field."""
    if not value.strip():
        raise click.BadParameter("is empty: say why in a few words")
    return value


def _given_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A name given to a version: not blank, and without control characters (it is typed again
    to `promote` or `diff` it, and shown in every message about the version)."""
    from projections.spec import has_controls

    if _given_text(ctx, param, value) is not None and has_controls(str(value)):
        raise click.BadParameter(f"{value!r} holds control characters: give a printable name")
    return value


def _given_moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A moment option's value: an ISO-8601 date or timestamp, refused as the option's own
    usage error before any work (not as a record's field)."""
    if value is None:
        return None
    from ledger.errors import ValidationError
    from ledger.records import parse_timestamp

    try:
        parse_timestamp(value, "as_of")
    except ValidationError as error:
        raise click.BadParameter(error.reason) from None
    return value


def _given_month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A month option's or argument's value, as `rewards.periods.parse_period` takes it: one
    that is none is the option's usage error before any work, in every command alike."""
    if value is None:
        return None
    from rewards.errors import PeriodError
    from rewards.periods import parse_period

    try:
        return parse_period(value)
    except PeriodError as error:
        raise click.BadParameter(str(error).removeprefix("period: ")) from None


#: The most customers and employees a generated history makes room for (`importers.generator`).
_GENERATED_LIMITS = {"customers": MAX_CUSTOMERS, "employees": MAX_EMPLOYEES}


def _generated_size(_ctx: click.Context, param: click.Parameter, value: int) -> int:
    """`--customers` or `--employees` of a generated history: no more than it makes room for
    before the history starts (`importers.generator`); more would join after their first events."""
    limit = _GENERATED_LIMITS[str(param.name)]
    if value > limit:
        raise click.BadParameter(f"{value} is more than a generated history takes (at most {limit:,})")
    return value


def _generated_size_option(name: str, default: int) -> Callable[..., Any]:
    """`--customers` or `--employees` of a generated history (`generate`, `demo`), checked by
    `_generated_size` against the most the generator makes room for."""
    limit = _GENERATED_LIMITS[name]
    return click.option(
        f"--{name}",
        type=click.IntRange(1),
        default=default,
        show_default=True,
        callback=_generated_size,
        help=f"At most {limit:,}.",
    )


def _history_fits(start: str, months: int, *, until: str | None = None) -> None:
    """Refuse, as `--months`'s usage error, a generated history from `start` that would end
    after the last month a period can be (its end was no date: a traceback), or after the
    month `until` (YYYY-MM)."""
    from importers.generator import last_month
    from rewards.periods import LAST_YEAR

    last, limit = last_month(start, months), until or f"{LAST_YEAR}-12"
    # Zero-padded months of four-digit years (or more) compare as numbers do by length first.
    if (len(last), last) > (len(limit), limit):
        raise click.BadParameter(
            f"{months} months from {start} end in {last}, after {limit}" + (" (this month)" if until else ""),
            ctx=click.get_current_context(),
            param_hint="'--months'",
        )


def _given_file(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Path | None:
    """An output file option's value: a blank one (an unset shell variable) is refused, not
    written as the current folder ("Is a directory") or as a file named by spaces."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("is empty: give a file name, or - for stdout")
    return Path(value)


def _to_stdout(path: Path | None) -> bool:
    """Whether an output option names stdout: not given, or '-' as generate takes it."""
    return path is None or str(path) == "-"


def _existing_store(ctx: click.Context) -> Settings:
    """The settings of a command that reads an existing ledger: a store path that does not
    exist (a typo) is refused, not created empty and reported on."""
    from ledger.connect import require_existing_store

    settings = _settings(ctx)
    require_existing_store(settings)
    return settings


def _source_settings(ctx: click.Context, source: str) -> Settings:
    """The settings of a command that reads `source` into the projection database (made when
    missing, in a folder that exists): the ledger must exist when it is read."""
    settings = _existing_store(ctx) if source == "ledger" else _settings(ctx)
    settings.refuse_missing_db_folder()
    unsafe = delta_unsafe_part(settings.projections_db)
    if unsafe is not None:  # refused before the database is made: its log could never be read
        raise click.UsageError(delta_unsafe_advice(f"projection database {settings.projections_db}", unsafe))
    return settings


def _refuse_own_file(path: Path | None, option: str) -> None:
    """Refuse an output path that is one of the files the ledger or its read models live in."""
    if path is not None and str(path) != "-" and _settings(click.get_current_context()).holds(path):
        raise CrmLedgerError(f"{path}: {option} would overwrite the ledger's own files; name another")


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
@click.option(
    "--key-store",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Separate SQLite file for customers' personal-data keys (default: the event store). "
    "[env CRM_LEDGER_KEY_STORE]",
)
@click.pass_context
def cli(
    ctx: click.Context, store: str | None, db: Path | None, bootstrap: str | None, key_store: Path | None
) -> None:
    """crm-ledger: an event-sourced ledger for customer-relationship work."""
    ctx.obj = Settings.from_env(
        os.environ, store=store, projections_db=db, bootstrap=bootstrap, key_store=key_store
    )


def _open_ledger(settings: Settings, *args: Any, read_only: bool = False) -> LedgerApplication:
    """The ledger of `settings`; the write model is imported only by the commands that use it."""
    from ledger.connect import open_ledger

    return open_ledger(settings, *args, read_only=read_only)


# -- kafka ---------------------------------------------------------------------------------
@cli.group()
def kafka() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) for development."""


def _broker_config(data: Path, port: int) -> BrokerConfig:
    from crm_cli.broker import BrokerConfig

    return BrokerConfig(data_dir=data.resolve(), port=port, controller_port=port + 1)


_data_option = click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=Path(".kafka/data"),
    show_default=True,
    help="Folder for the broker's logs and settings.",
)
_port_option = click.option(
    "--port",
    # A port the system cannot bind: 0 would be one Kafka picks, which nothing here could find,
    # and the controller's, port+1, must be one too.
    type=click.IntRange(1, 65534),
    default=9092,
    show_default=True,
    help="Client port on 127.0.0.1 (controller: port+1).",
)


@kafka.command("up")
@_data_option
@_port_option
def kafka_up(data: Path, port: int) -> None:
    """Start the broker in the background and wait until it answers."""
    from crm_cli import broker

    config = _broker_config(data, port)
    broker.start(config)
    out.print(f"Kafka is up at {config.bootstrap} (data in {config.data_dir})")


@kafka.command("down")
@_data_option
@_port_option
def kafka_down(data: Path, port: int) -> None:
    """Stop the broker started with `kafka up`."""
    from crm_cli import broker

    config = _broker_config(data, port)
    out.print("Kafka stopped" if broker.stop(config) else "Kafka was not running")


@kafka.command("status")
@_data_option
@_port_option
def kafka_status(data: Path, port: int) -> None:
    """Say whether the broker is running (exit 1 when it is not)."""
    from crm_cli import broker

    config = _broker_config(data, port)
    if broker.is_running(config):
        out.print(f"Kafka is running at {config.bootstrap}")
    else:
        out.print("Kafka is not running")
        raise SystemExit(1)


# -- registry ------------------------------------------------------------------------------
@cli.group("registry")
def registry_group() -> None:
    """Run a local Confluent-compatible schema registry (Apicurio Registry) for development."""


_registry_data_option = click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=Path(".registry/data"),
    show_default=True,
    help="Folder for the registry's database, pid and log.",
)
_registry_port_option = click.option(
    # Not 0: the registry would pick a port, and `up` wait 120 s for an answer on port 0.
    "--port", type=click.IntRange(1, 65535), default=8081, show_default=True, help="HTTP port on 127.0.0.1."
)


def _registry_config(data: Path, port: int) -> RegistryServerConfig:
    from crm_cli.registry_server import RegistryServerConfig

    return RegistryServerConfig(data_dir=data.resolve(), port=port)


@registry_group.command("up")
@_registry_data_option
@_registry_port_option
def registry_up(data: Path, port: int) -> None:
    """Start the registry in the background (fetching it on first use) and wait until it answers."""
    from crm_cli import registry_server

    config = _registry_config(data, port)
    registry_server.start(config)
    out.print(f"Schema registry is up at {config.url} (data in {config.data_dir})", highlight=False)


@registry_group.command("down")
@_registry_data_option
@_registry_port_option
def registry_down(data: Path, port: int) -> None:
    """Stop the registry started with `registry up` (its schemas stay in the data folder)."""
    from crm_cli import registry_server

    config = _registry_config(data, port)
    out.print(
        "Schema registry stopped" if registry_server.stop(config) else "Schema registry was not running"
    )


@registry_group.command("status")
@_registry_data_option
@_registry_port_option
def registry_status(data: Path, port: int) -> None:
    """Say whether the registry is running (exit 1 when it is not)."""
    from crm_cli import registry_server

    config = _registry_config(data, port)
    if registry_server.is_running(config):
        out.print(f"Schema registry is running at {config.url}", highlight=False)
    else:
        out.print("Schema registry is not running")
        raise SystemExit(1)


def _engine_options(command: Any) -> Any:
    """`--engine` and `--spark-master`, shared by `project` and `replay`."""
    command = click.option(
        "--spark-master",
        "spark_master",
        default="local[2]",
        show_default=True,
        help="With --engine spark: the Spark master (local[N], or a cluster's URL such as "
        "spark://host:7077).",
    )(command)
    return click.option(
        "--engine",
        type=click.Choice(["duckdb", "spark"]),
        default="duckdb",
        show_default=True,
        help="Where the read models are computed: DuckDB here, or Apache Spark over the Delta log "
        "(every table of the version, loaded into the projection database).",
    )(command)


_registry_url_option = click.option(
    "--registry",
    "registry_url",
    default=None,
    help="Schema registry URL (the Confluent-compatible API, e.g. "
    "http://127.0.0.1:8081/apis/ccompat/v7). [env CRM_LEDGER_REGISTRY_URL]",
)


def _registry_url(ctx: click.Context, flag: str | None) -> str | None:
    return flag or _settings(ctx).schema_registry_url


# -- schemas -------------------------------------------------------------------------------
@cli.group()
def schemas() -> None:
    """The Avro schema registry in schemas/."""


_schema_dir_option = click.option(
    "--dir",
    "folder",
    # A mistyped folder is refused, not checked as an empty one.
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Schema folder (default: the package's schemas/).",
)


@schemas.command("check")
@_schema_dir_option
@_registry_url_option
@click.pass_context
def schemas_check(ctx: click.Context, folder: Path | None, registry_url: str | None) -> None:
    """Prove every version reads all older data and the lock file matches (exit 1 if not).

    With a registry, also report every difference between the folder and the registry.
    """
    from schemas.compat import check_folder
    from schemas.registry import SCHEMA_DIR, SchemaRegistry
    from schemas.remote import RemoteRegistry
    from schemas.sync import compare

    url = _registry_url(ctx, registry_url)
    problems = check_folder(folder or SCHEMA_DIR)
    for problem in problems:
        # Control characters shown, not obeyed: a file's name or a registry's answer holds them.
        err.print(f"[red]incompatible[/red] {escape(visible(str(problem)))}", highlight=False, markup=True)
    if problems:
        raise SystemExit(1)
    out.print("schemas check: all versions compatible, lock file matches")
    if url is None:
        return
    differences = compare(SchemaRegistry.load(folder or SCHEMA_DIR), RemoteRegistry(url))
    for difference in differences:
        err.print(
            f"[red]registry differs[/red] {escape(visible(str(difference)))}", highlight=False, markup=True
        )
    if differences:
        raise SystemExit(1)
    out.print(f"schemas check: the registry at {url} matches", highlight=False)


@schemas.command("push")
@_schema_dir_option
@_registry_url_option
@click.pass_context
def schemas_push(ctx: click.Context, folder: Path | None, registry_url: str | None) -> None:
    """Register every schema version in a registry under its locked id; set compatibility (idempotent)."""
    from schemas.compat import check_folder
    from schemas.registry import SCHEMA_DIR, SchemaRegistry
    from schemas.remote import RemoteRegistry
    from schemas.sync import COMPATIBILITY_LEVEL, push

    url = _registry_url(ctx, registry_url)
    if url is None:
        raise CrmLedgerError("schemas push needs --registry URL (or CRM_LEDGER_REGISTRY_URL)")
    problems = check_folder(folder or SCHEMA_DIR)
    if problems:
        raise CrmLedgerError(
            f"schemas/ is not consistent, nothing pushed: {problems[0]} (see `schemas check`)"
        )
    result = push(SchemaRegistry.load(folder or SCHEMA_DIR), RemoteRegistry(url))
    out.print(
        f"schemas push: {result.registered} registered ({result.method}), {result.already_present} already "
        f"present, compatibility {COMPATIBILITY_LEVEL} set on {result.compatibility_set} subjects",
        highlight=False,
    )


@schemas.command("lock")
@_schema_dir_option
def schemas_lock(folder: Path | None) -> None:
    """Give new schema versions the next free id in schemas.lock.json (ids never change)."""
    from schemas.registry import SCHEMA_DIR, assign_ids

    lock = assign_ids(folder or SCHEMA_DIR)
    out.print(f"{sum(len(v) for v in lock.values())} schema versions locked")


# -- ledger --------------------------------------------------------------------------------
@cli.command()
@_generated_size_option("customers", 1000)
@_generated_size_option("employees", 40)
@click.option("--months", type=click.IntRange(1), default=6, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--start", default="2025-01", show_default=True, callback=_given_month, help="First month, YYYY-MM."
)
@click.option(
    "--invalid-rate",
    type=click.FloatRange(0, 1),
    callback=_finite,
    default=0.0,
    show_default=True,
    help="Share of deliberately invalid records.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    required=True,
    callback=_given_file,
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
    from importers.generator import GeneratorConfig, write_history

    _history_fits(start, months)
    config = GeneratorConfig(customers, employees, months, seed, start, invalid_rate)
    _refuse_own_file(out_path, "--out")
    with graceful_stop() as stop:
        if str(out_path) == "-":
            count = write_history(config, sys.stdout, should_stop=stop)
        else:
            with replaced_whole(out_path) as partial, partial.open("w", encoding="utf-8") as handle:
                count = write_history(config, handle, should_stop=stop)
    err.print(f"generated {count} records into {out_path}")


def _load_options(command: Any) -> Any:
    """The options every command that loads records shares (ingest, import cfpb, import csv)."""
    options = [
        click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False)),
        click.option(
            "--rejects",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            callback=_not_stdout,
            help="Rejects file (JSONL). Default: .crm-ledger/rejects.jsonl",
        ),
        click.option("--batch-size", type=click.IntRange(1, 100_000), default=25_000, show_default=True),
        click.option(
            "--max-record-bytes",
            type=click.IntRange(*RECORD_BYTES_RANGE),
            default=None,
            help="Largest record accepted, as input and encoded (default 524288; at most 900000, so "
            "that every accepted event fits in one Kafka message). [env CRM_LEDGER_MAX_RECORD_BYTES]",
        ),
        click.option(
            "--future-tolerance-hours",
            type=click.FloatRange(0),
            callback=_finite,
            default=24.0,
            show_default=True,
            help="How far after now an occurred_at may lie (clock skew between systems).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@_load_options
@click.pass_context
def ingest(ctx: click.Context, /, files: tuple[Path, ...], **options: Any) -> None:
    """Record JSONL or CSV files in the ledger, idempotently (exit 1 if any record was refused).

    The files of one command line are one run: their facts are applied in time order.
    """
    with interrupt_after():  # see there: Ctrl-C in an extension's import
        from ledger.ingest import read_file

    _ingest_files(_settings(ctx), files, read_file, **options)


def _total_input(paths: list[Path]) -> int | None:
    """The bytes the readers will see in all `paths` (decompressed), or None when one does not say."""
    from ledger.inputs import input_size

    sizes = [input_size(path) for path in paths]
    return None if None in sizes else sum(size for size in sizes if size is not None)


_NO_RECORD = object()


def _noting_an_empty_input(path: Path, records: Iterable[Any], empty: list[Path]) -> Iterator[Any]:
    """The records of `path`, as they come; `path` is added to `empty` when it held none.

    Blank lines are no records: a file of only blank lines (or a CSV header followed by
    them) is as empty as an empty file, and is named too.
    """
    from ledger.ingest import is_blank_record

    remaining = iter(records)
    first = next(remaining, _NO_RECORD)
    while first is not _NO_RECORD and is_blank_record(first):
        yield first  # its bytes still count on the progress bar
        first = next(remaining, _NO_RECORD)
    if first is _NO_RECORD:
        empty.append(path)
        return
    yield first
    yield from remaining  # delegated: on the bulk path, no Python step here per record


def _ingest_files(
    settings: Settings,
    files: Any,
    read: Any,
    *,
    rejects: Path | None,
    batch_size: int,
    max_record_bytes: int | None,
    future_tolerance_hours: float,
) -> None:
    """Stream the files through `read(path, parser, limit)` into the ledger as one run; summary, exit code.

    The files of one command line are one run: their facts are applied in time order
    together, so the order in which the files are named does not matter.
    """
    import itertools

    # rewards.goals loads pyarrow and the Kafka client (it reads the projection database): a
    # Ctrl-C inside an extension's import was lost (the run went on to its end) or ended the
    # command by the signal (exit -2), not with "interrupted" and 130.
    with interrupt_after():
        from ledger.ingest import RejectSink, ingest_records
        from ledger.load_lock import one_load_at_a_time
        from ledger.records import RecordParser
        from rewards.goals import spec_components

    paths = [Path(p) for p in files]
    for path in paths:
        if not path.exists():
            raise CrmLedgerError(f"{path}: no such file")
        if not path.is_file():
            raise CrmLedgerError(f"{path}: not a regular file (a pipe or device cannot be read twice)")
    rejects_file = rejects or settings.rejects_file
    _refuse_own_file(rejects_file, "--rejects")
    if rejects is not None:
        # Only the default file's folder (.crm-ledger) is made when it is missing.
        refuse_missing_folder(rejects)
    if rejects_file.exists() and any(rejects_file.samefile(path) for path in paths):
        # Its own rejects would be read back as records, and the file would grow without end.
        raise CrmLedgerError(f"{rejects_file}: the rejects file is one of the input files; name another")
    limit = max_record_bytes or settings.max_record_bytes
    # The ledger first: a store that is refused (a mistyped folder) leaves no rejects file.
    app = _open_ledger(settings, spec_components(settings.projections_db))
    app.max_event_bytes = limit

    def waiting() -> None:
        click.echo("another ingest or import is loading into this ledger: waiting for its end", err=True)

    # The turn before the rejects file: a load waiting for its turn must not note the file's
    # size while the one under way writes to it (its Ctrl-C would cut that run's rejects
    # off), and its "now" (the future tolerance) is taken when it starts.
    with one_load_at_a_time(settings.store, app.recorder, waiting):
        sink = RejectSink(rejects_file)
        sink.open()
        try:
            parser = RecordParser(app.registry, future_tolerance_ms=int(future_tolerance_hours * 3_600_000))
            empty: list[Path] = []
            records = itertools.chain.from_iterable(
                _noting_an_empty_input(path, read(path, parser, limit), empty) for path in paths
            )
            name = paths[0].name if len(paths) == 1 else f"{len(paths)} files"
            with progress_bar(f"ingest {name}", _total_input(paths)) as reporter:
                total = ingest_records(app, records, sink, batch_size=batch_size, reporter=reporter)
        except BaseException:
            # The run is to be made again (a full disk, Ctrl-C): it writes its rejects again then.
            sink.discard()
            raise
        finally:
            sink.close()
    click.echo(total.line())
    for path in empty:
        # Not an error (an export can be empty), but a wrong file given by mistake looks so too.
        click.echo(f"{path}: held no records (is it the file you meant?)", err=True)
    if total.refused:
        click.echo(f"rejects written to {rejects_file}", err=True)
        raise SystemExit(1)


@cli.group("import")
def import_group() -> None:
    """Import other systems' history: the public CFPB complaint export, or any CSV with a mapping."""


@import_group.command("cfpb")
@_load_options
@click.pass_context
def import_cfpb(ctx: click.Context, /, files: tuple[Path, ...], **options: Any) -> None:
    """Import CFPB Consumer Complaint Database exports: CSV (columns matched by name) or the JSON download."""
    with interrupt_after():
        from importers.cfpb import read_cfpb

    _ingest_files(_settings(ctx), files, read_cfpb, **options)


@import_group.command("csv")
@_load_options
@click.option(
    "--mapping",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="Mapping file (TOML), see examples/helpdesk-mapping.toml.",
)
@click.pass_context
def import_csv(ctx: click.Context, /, files: tuple[Path, ...], mapping: Path, **options: Any) -> None:
    """Import a CSV export of another system through a column mapping."""
    with interrupt_after():
        from importers.mapped_csv import load_mapping, read_mapped_csv
        from ledger.records import RecordParser
        from schemas.registry import SchemaRegistry

    load_mapping(mapping, RecordParser(SchemaRegistry.load()))  # a bad mapping fails before any work
    _ingest_files(
        _settings(ctx),
        files,
        lambda path, parser, limit: read_mapped_csv(path, mapping, parser, limit),
        **options,
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
@_registry_url_option
@click.pass_context
def relay(
    ctx: click.Context, follow: bool, partitions: int | None, batch_size: int, registry_url: str | None
) -> None:
    """Publish the ledger to Kafka exactly once, in order (position recovered from Kafka)."""
    with interrupt_after():
        from ledger.relay import Relay, RelayConfig

    settings = _existing_store(ctx)
    app = _open_ledger(settings)
    config = RelayConfig(
        bootstrap=settings.bootstrap,
        topic=settings.events_topic,
        partitions=partitions or settings.partitions,
        transactional_id=settings.transactional_id,
        batch_size=batch_size,
        broker_timeout_s=settings.broker_timeout_s,
        registry_url=_registry_url(ctx, registry_url),
        checkpoints_topic=settings.checkpoints,
        checkpoint_every=settings.checkpoint_every,
    )
    with graceful_stop() as stop, progress_bar("relay", None) as reporter:
        relay = Relay(app, config, say=lambda line: err.print(line, highlight=False, soft_wrap=True))
        sent = relay.run(follow=follow, reporter=reporter, should_stop=stop)
    click.echo(f"relayed {sent} events to {config.topic}")
    if stop.stopped and not follow:
        # As `project`: Ctrl-C is how a follower ends; a one-shot run it cuts short ended 0,
        # and a script went on with the topic short of the ledger.
        click.echo("interrupted: the topic may lag the ledger; run `crm-ledger relay` again", err=True)
        raise SystemExit(EXIT_INTERRUPTED)


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
    callback=_finite,
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
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Decode the Kafka topic with N processes in one consumer group (each appending its "
    "partitions to the decoded log) while this process maintains the read models.",
)
@_engine_options
@_registry_url_option
@click.pass_context
def project(
    ctx: click.Context,
    source: str,
    follow: bool,
    metrics: Path | None,
    refresh_interval: float,
    publish: bool,
    workers: int | None,
    engine: str,
    spark_master: str,
    registry_url: str | None,
) -> None:
    """Build (and follow) the promoted version of the read models in DuckDB."""
    with interrupt_after():
        from projections.leftovers import removed_if_nothing_decoded
        from projections.service import project_promoted, source_label

    settings = _source_settings(ctx, source)
    with removed_if_nothing_decoded(settings.projections_db, source_label(settings, source)):
        if engine == "spark":
            if follow or workers is not None or publish:
                raise CrmLedgerError(
                    "--engine spark is a one-shot build of the promoted version: "
                    "use it without --follow, --workers and --publish"
                )
            from engines.replay import project_on_spark

            _run_on_spark(
                f"project on Spark ({spark_master})",
                partial(project_on_spark, settings, source, metrics, master=spark_master),
            )
            return
        on_refresh = _publisher(settings, _registry_url(ctx, registry_url)) if publish else None
        run: Callable[..., str]
        if workers is None:
            run = partial(project_promoted, settings, source, metrics)
            title = f"project from {source}"
        elif source == "kafka":
            from projections.scaleout import project_with_workers

            run = partial(project_with_workers, settings, workers, metrics)
            title = f"project from kafka with {workers} workers"
        else:
            raise CrmLedgerError("--workers decodes a Kafka topic: use it with --source kafka")
        with graceful_stop() as stop, progress_bar(title, None) as reporter:
            result = run(
                follow=follow,
                reporter=reporter,
                should_stop=stop,
                refresh_interval_s=refresh_interval,
                on_refresh=on_refresh,
            )
        click.echo(visible(str(result)))
        if stop.stopped and not follow:
            # Ctrl-C is how a follower ends; a one-shot run it cuts short has not caught up.
            click.echo("interrupted: the version may lag the log; run `crm-ledger project` again", err=True)
            raise SystemExit(EXIT_INTERRUPTED)


def _run_on_spark(title: str, run: Callable[..., Any]) -> None:
    """Run a Spark build with progress and Ctrl-C handling; print its result (exit 130 if stopped)."""
    with graceful_stop() as stop, progress_bar(title, None) as reporter:
        result = run(reporter=reporter, should_stop=stop)
    click.echo(visible(result.message()))
    if result.interrupted:
        raise SystemExit(EXIT_INTERRUPTED)


def _publisher(settings: Settings, registry_url: str | None) -> Any:
    from projections.publish import check_registry, publish_changes
    from schemas.codec import AvroCodec
    from schemas.registry import SchemaRegistry

    codec = AvroCodec(SchemaRegistry.load())
    if registry_url is not None:
        # Once, before anything is projected or sent.
        check_registry(registry_url, codec)

    def publish(db: Any) -> None:
        schema = db.promoted_version()
        if schema is not None:
            sent = publish_changes(
                db.connection, schema, settings.bootstrap, codec, broker_timeout_s=settings.broker_timeout_s
            )
            click.echo("published " + ", ".join(f"{n} to {t}" for t, n in sent.items()), err=True)

    return publish


@cli.command()
@_registry_url_option
@click.pass_context
def publish(ctx: click.Context, registry_url: str | None) -> None:
    """Send the promoted version's changed profiles, scores and statements to the compacted topics once."""
    from projections.store import ProjectionDB

    settings = _settings(ctx)
    # Not created when missing: a mistyped --db left an empty database behind.
    with ProjectionDB(settings.projections_db, create=False) as db:
        if db.promoted_version() is None:
            raise CrmLedgerError("no version is promoted yet (run `crm-ledger project`)")
        _publisher(settings, _registry_url(ctx, registry_url))(db)


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
    callback=_given_moment,
    help="Only events with occurred_at <= this moment (ISO date or timestamp, UTC).",
)
@click.option(
    "--name", default=None, callback=_given_name, help="Human name of the version (default: the spec's name)."
)
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
@_engine_options
@click.pass_context
def replay(
    ctx: click.Context,
    metrics: Path,
    source: str,
    as_of: str | None,
    name: str | None,
    full: bool,
    from_source: bool,
    engine: str,
    spark_master: str,
) -> None:
    """Build a new version of the read models side by side with the live one (resumable)."""
    with interrupt_after():
        from projections.engine import parse_as_of
        from projections.leftovers import removed_if_nothing_decoded
        from projections.service import source_label
        from replay.build import replay as run_replay

    settings = _source_settings(ctx, source)
    moment = parse_as_of(as_of)
    with removed_if_nothing_decoded(settings.projections_db, source_label(settings, source)):
        if engine == "spark":
            if from_source:
                raise CrmLedgerError("--from-source re-decodes the log: run it without --engine spark first")
            from engines.replay import replay_on_spark

            _run_on_spark(
                f"replay on Spark ({spark_master})",
                partial(
                    replay_on_spark, settings, metrics, source, as_of=moment, name=name, master=spark_master
                ),
            )
            return
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
        # Cut short, the message is a note for the operator, not the command's outcome.
        click.echo(visible(result.message()), err=result.mode == "interrupted")
        if result.mode == "interrupted":
            raise SystemExit(EXIT_INTERRUPTED)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def versions(ctx: click.Context, fmt: str) -> None:
    """List the versions of the read models (name, hash, built, events, position, promoted).

    Read-only: it works on a copy an auditor may not write, and never creates a database.
    """
    with interrupt_after():  # see there: Ctrl-C in an extension's import (DuckDB, pyarrow)
        from projections.readonly import list_versions

    rows = list_versions(_settings(ctx).projections_db)
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
        _add_row(
            table,
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
    type=click.FloatRange(0, 100),  # the score scale
    callback=_finite,
    default=50.0,
    show_default=True,
    help="Reward threshold whose crossings are listed.",
)
@click.option(
    "--limit", type=click.IntRange(1), default=20, show_default=True, help="Rows shown in table format."
)
@click.pass_context
def diff(ctx: click.Context, old: str, new: str, fmt: str, threshold: float, limit: int) -> None:
    """Compare two versions: score and rank changes per employee-period, KPI changes, summary.

    Read only: it never changes the projection database, nor creates one.
    """
    with interrupt_after():
        from projections.readonly import reader
        from projections.store import find_version, versions_of
        from replay.diff import diff_versions

    with reader(_settings(ctx).projections_db) as connection:
        known = versions_of(connection)
        report = diff_versions(connection, find_version(known, old), find_version(known, new), threshold)
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
        _add_row(
            table,
            r.employee_id,
            r.period,
            num(r.old_score),
            num(r.new_score),
            num(r.change),
            str(r.old_rank or ""),
            str(r.new_rank or ""),
        )
    out.print(table)
    _print_line(
        f"rows compared {report.rows_compared}, changed {report.rows_changed}, "
        f"Spearman rank correlation {num(report.spearman, 4) or 'undefined (the ranks do not vary)'}"
    )
    for label, rows in (("largest gains", report.largest_gains), ("largest losses", report.largest_losses)):
        _print_line(
            f"{label}: " + (", ".join(f"{r.employee_id} {r.period} {r.change:+.2f}" for r in rows) or "none")
        )
    threshold = f"{report.threshold:g}"
    _print_line(
        f"crossed {threshold} upwards: "
        + (", ".join(f"{r.employee_id} {r.period}" for r in report.crossed_up) or "none")
    )
    _print_line(
        f"crossed {threshold} downwards: "
        + (", ".join(f"{r.employee_id} {r.period}" for r in report.crossed_down) or "none")
    )
    _print_line(
        "KPI values changed: " + (", ".join(f"{k} {v}" for k, v in report.kpi_changes.items()) or "none")
    )
    _print_line(
        "team goal outcomes changed: "
        + (
            ", ".join(
                f"{g['goal_id']} {g['period']} {g['old_met']}->{g['new_met']}" for g in report.goal_changes
            )
            or "none"
        )
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
    """Delete a version (never the promoted one, nor one a closed period's statements name)."""
    from rewards.periods import drop_version

    target = drop_version(_existing_store(ctx), version)
    click.echo(visible(f"dropped {target.version} ({target.name})"))


def _on_version(ctx: click.Context, version: str, action: str, done: str) -> None:
    """Find a version by id, prefix or name and apply a ProjectionDB action to it."""
    with interrupt_after():
        from projections.store import ProjectionDB

    with ProjectionDB(_settings(ctx).projections_db, create=False) as db:
        target = db.find_version(version)
        getattr(db, action)(target)
    click.echo(visible(f"{done} {target.version} ({target.name})"))


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

    app = _open_ledger(_existing_store(ctx), read_only=True)
    events = list(app.events.get(aggregate_id(Customer.KIND, customer_id)))
    if not events:
        raise CrmLedgerError(f"unknown customer {customer_id!r}")
    for event in events:
        data = dict(event.data)  # type: ignore[attr-defined]
        for name in PERSONAL_FIELDS.get(event.event_type, ()):  # type: ignore[attr-defined]
            data[name] = app.vault.reveal(customer_id, data.get(name))
        shown = ", ".join(f"{k}={v}" for k, v in data.items() if v is not None)
        click.echo(visible(f"{event.event_type}: {shown}"))  # type: ignore[attr-defined]


# -- reward periods ------------------------------------------------------------------------
@cli.group()
def period() -> None:
    """Close reward months, follow late events and rule changes, issue adjustments."""


@period.command("close")
@click.argument("month", callback=_given_month)
@click.pass_context
def period_close(ctx: click.Context, month: str) -> None:
    """Close MONTH (YYYY-MM): record the ledger position and issue one statement per employee."""
    from rewards.periods import close_period

    result = close_period(_existing_store(ctx), month)
    click.echo(
        f"closed {result.period} at ledger position {result.position} with version {result.version}: "
        f"{result.statements} statements issued"
    )
    click.echo(
        f"chain head at the close: {result.position}:{result.chain_head} "
        "(keep a copy outside the ledger; `audit verify --checkpoint` checks it)"
    )


@period.command("status")
@click.argument("month", callback=_given_month)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def period_status_command(ctx: click.Context, month: str, fmt: str) -> None:
    """Late events since the close and how far live scores drift from the statements.

    Read only: it answers from what the promoted version holds, and says how many events it
    is behind the ledger (`crm-ledger project` catches it up).
    """
    from rewards.periods import period_status

    status = period_status(_existing_store(ctx), month)
    _say_behind(status)
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
            f"  {visible(drift.employee_id)}: told {drift.told:.4f}, live {drift.live:.4f} "
            f"({drift.delta:+.4f})"
        )


@period.command("adjust")
@click.argument("month", callback=_given_month)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the adjustments without issuing them (read only: from what the projection holds).",
)
@click.pass_context
def period_adjust(ctx: click.Context, month: str, dry_run: bool) -> None:
    """Issue adjustments where live scores differ from what was told (idempotent).

    The promoted version is caught up with the ledger first, except with --dry-run.
    """
    from rewards.periods import adjust_period, period_status, planned_adjustments

    settings = _existing_store(ctx)
    if dry_run:
        status = period_status(settings, month)
        _say_behind(status)
        adjustments = planned_adjustments(status)
    else:
        adjustments = adjust_period(settings, month)
    verb = "would issue" if dry_run else "issued"
    click.echo(f"{verb} {len(adjustments)} adjustment(s) for {month}")
    for a in adjustments:
        click.echo(
            f"  {visible(a.employee_id)}: {a.old_score:.4f} -> {a.new_score:.4f} ({a.delta:+.4f}) {a.reason}"
        )


def _say_behind(status: Any) -> None:
    """The one line of a period's read command whose projection lags the ledger (on stderr)."""
    if status.behind_line is not None:
        err.print(status.behind_line, highlight=False, soft_wrap=True)


# -- team goals ------------------------------------------------------------------------------
@cli.group()
def goal() -> None:
    """Team goals: set together, gauged monthly (team_goal_progress), revised, closed."""


_goal_at = click.option(
    "--at",
    "at",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="When it was agreed (UTC; default now).",
)
_agreed_by = click.option(
    "--agreed-by",
    required=True,
    help="Comma-separated employee ids who agreed (each in the team at that moment).",
)


def _goal_change(goal_id: str, at: Any, fields: tuple[tuple[str, Any], ...] = ()) -> Any:
    from rewards.goals import GoalChange

    return GoalChange(goal_id, at.replace(tzinfo=UTC) if at else None, fields)


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@goal.command("set")
@click.argument("goal_id")
@click.option("--team", required=True, help="Team id.")
@click.option("--kpi", required=True, help="A team KPI (e.g. csat_pct), 'score', or 'component:<name>'.")
@click.option("--target", type=float, required=True)
@click.option(
    "--comparison", type=click.Choice(["at_least", "at_most"]), default="at_least", show_default=True
)
@click.option("--from", "from_period", required=True, callback=_given_month, help="First month, YYYY-MM.")
@click.option("--to", "to_period", required=True, callback=_given_month, help="Last month, YYYY-MM.")
@_agreed_by
@click.option("--note", default=None, callback=_given_text, help="A note kept with the event (not blank).")
@_goal_at
@click.pass_context
def goal_set(
    ctx: click.Context,
    goal_id: str,
    team: str,
    kpi: str,
    target: float,
    comparison: str,
    from_period: str,
    to_period: str,
    agreed_by: str,
    note: str | None,
    at: Any,
) -> None:
    """Record a goal the team agreed on (TeamGoalSet); setting the same goal again adds nothing."""
    from rewards.goals import set_goal

    status = set_goal(
        # The members who agreed must be in the ledger: one made anew at a typo never has them.
        _existing_store(ctx),
        _goal_change(goal_id, at),
        team_id=team,
        kpi=kpi,
        target=target,
        comparison=comparison,
        from_period=from_period,
        to_period=to_period,
        agreed_by=_ids(agreed_by),
        note=note,
    )
    done = "set" if status == "accepted" else "already set"
    out.print(f"goal {visible(goal_id)}: {done} (run `crm-ledger project`)")


@goal.command("revise")
@click.argument("goal_id")
@click.option("--target", type=float, default=None)
@click.option("--comparison", type=click.Choice(["at_least", "at_most"]), default=None)
@click.option("--to", "to_period", default=None, callback=_given_month, help="New last month, YYYY-MM.")
@_agreed_by
@click.option("--reason", required=True, callback=_given_reason, help="Why the terms change.")
@_goal_at
@click.pass_context
def goal_revise(
    ctx: click.Context,
    goal_id: str,
    target: float | None,
    comparison: str | None,
    to_period: str | None,
    agreed_by: str,
    reason: str,
    at: Any,
) -> None:
    """Change a running goal's terms by agreement (TeamGoalRevised), from the month of the revision on."""
    from rewards.goals import revise_goal

    if target is None and comparison is None and to_period is None:
        raise click.UsageError("give at least one of --target, --comparison, --to")
    fields = (("target", target), ("comparison", comparison), ("to_period", to_period))
    change = _goal_change(goal_id, at, fields)
    status = revise_goal(_existing_store(ctx), change, agreed_by=_ids(agreed_by), reason=reason)
    out.print(f"goal {visible(goal_id)}: {'revised' if status == 'accepted' else 'already revised so'}")


@goal.command("close")
@click.argument("goal_id")
@click.option("--outcome", type=click.Choice(["achieved", "missed", "withdrawn"]), required=True)
@click.option("--note", default=None, callback=_given_text, help="A note kept with the event (not blank).")
@_goal_at
@click.pass_context
def goal_close(ctx: click.Context, goal_id: str, outcome: str, note: str | None, at: Any) -> None:
    """Close a goal with its outcome (TeamGoalClosed); it is gauged no further."""
    from rewards.goals import close_goal

    status = close_goal(_existing_store(ctx), _goal_change(goal_id, at), outcome=outcome, note=note)
    done = "closed" if status == "accepted" else "already closed"
    out.print(f"goal {visible(goal_id)}: {done} ({outcome})")


@goal.command("list")
@click.option("--team", default=None, callback=_given_text, help="Only this team's goals.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def goal_list(ctx: click.Context, team: str | None, fmt: str) -> None:
    """The goals of the promoted version with the months met so far."""
    from rewards.goals import list_goals

    rows = list_goals(_settings(ctx).projections_db, team)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(*(rows[0].keys() if rows else ["goal_id"]))
    for row in rows:
        _add_row(table, *(f"{v:g}" if isinstance(v, float) else v for v in row.values()))
    _print_table(table)


# -- web ---------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--users",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="TOML file of users (argon2 password hashes, role, teams); without it, no sign-in.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, users: Path | None) -> None:
    """Serve the read-only web pages (teams, employees, versions, complaints) until Ctrl-C.

    Without --db or CRM_LEDGER_DB, and no projection database yet, the demo's is served.
    """
    from web.server import run_server

    db = _settings(ctx).projections_db
    chosen = (ctx.parent is not None and ctx.parent.params.get("db")) or os.environ.get("CRM_LEDGER_DB")
    if not chosen and not db.exists() and DEMO_DB.exists():
        db = DEMO_DB
    run_server(db, host, port, users, echo=click.echo)


@cli.command("hash-password")
@click.password_option()
def hash_password(password: str) -> None:
    """Print the argon2 hash of a password, for a `serve --users` file."""
    from web.users import hash_password as make_hash

    click.echo(make_hash(password))


@cli.command()
@click.option("--employee", required=True, help="Employee id.")
@click.option("--period", "month", required=True, callback=_given_month, help="Period, YYYY-MM.")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "json"]), default="md", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_given_file,
    help="Write to this file ('-' for stdout).",
)
@click.pass_context
def statement(ctx: click.Context, employee: str, month: str, fmt: str, out: Path | None) -> None:
    """What an employee was told for a closed period and why, with adjustments since."""
    from rewards.statement import build_statement

    _refuse_own_file(out, "--out")
    result = build_statement(_open_ledger(_existing_store(ctx), read_only=True), employee, month)
    text = {"md": result.to_markdown, "html": result.to_html, "json": result.to_json}[fmt]()
    if out is None or _to_stdout(out):  # (None narrowed for the writer below)
        # Ids come from whoever fed the ledger: on a terminal an escape sequence in one was a
        # command, and click.echo dropped it from a pipe. JSON holds none; a file, as it is.
        click.echo(visible(text), nl=False)
    else:
        with replaced_whole(out) as partial:
            partial.write_text(text, encoding="utf-8")
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
@click.option(
    "--checkpoints",
    is_flag=True,
    help="Also confirm the ledger reaches every published checkpoint (crm.ledger.checkpoints, "
    "period closes) and that none is missing from the topic.",
)
@click.option(
    "--checkpoint",
    "given",
    multiple=True,
    metavar="POSITION:CHAIN",
    help="A chain head kept outside the ledger (as `audit head` prints it); repeatable.",
)
@click.option(
    "--statement",
    "statements",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    help="A statement file (`statement --format json`) to check against the ledger; repeatable.",
)
@click.pass_context
def audit_verify(
    ctx: click.Context,
    sources: tuple[str, ...],
    checkpoints: bool,
    given: tuple[str, ...],
    statements: tuple[Path, ...],
) -> None:
    """Recompute the hash chain from each copy and report the first gap, duplicate or alteration."""
    with interrupt_after():
        from audit.run import VerifyRequest, run_verify
        from ledger.checkpoints import parse_checkpoint

    settings = _existing_store(ctx)
    request = VerifyRequest(sources, checkpoints, tuple(parse_checkpoint(g) for g in given), statements)
    with progress_bar("audit", None) as reporter:
        outcome = run_verify(settings, request, reporter)
    report = outcome.report
    for name, count in report.events.items():
        click.echo(f"{name}: {count} events")
    click.echo(f"chain head: {report.head}")
    if report.checkpoints:
        click.echo(f"checkpoints checked: {report.checkpoints}")
    for note in outcome.notes:
        click.echo(f"note: {note}")
    if report.ok:
        click.echo("audit verify: all copies agree, chain intact")
        return
    for finding in report.findings:
        click.echo(f"PROBLEM {finding}")
    raise SystemExit(1)


@audit.command("head")
@click.option(
    "--publish", is_flag=True, help="Also send it to the checkpoints topic (crm.ledger.checkpoints)."
)
@click.pass_context
def audit_head(ctx: click.Context, publish: bool) -> None:
    """Print the chain head recomputed from the store: keep it outside the ledger (print, mail)."""
    with interrupt_after():
        from audit.run import head

    settings = _existing_store(ctx)
    checkpoint, topic = head(settings, publish=publish)
    click.echo(checkpoint.line())
    if topic:
        click.echo(f"published to {topic}", err=True)


@audit.command("reproduce")
@click.argument("version", required=False)
@click.pass_context
def audit_reproduce(ctx: click.Context, version: str | None) -> None:
    """Rebuild VERSION's read models (default: the promoted one) from its log in a scratch file
    and compare every table row by row with the live ones (exit 1 on any difference)."""
    from audit.reproduce import REL_TOLERANCE, reproduce
    from schemas.codec import AvroCodec
    from schemas.registry import SchemaRegistry

    settings = _settings(ctx)
    codec = AvroCodec(SchemaRegistry.load(), epoch_millis=True)
    with progress_bar("reproduce", None) as reporter:
        report = reproduce(settings.projections_db, version, codec, reporter)
    click.echo(visible(f"{report.version} ({report.name}): rebuilt from {report.events} mirrored events"))
    for table in report.tables:
        if table.ok:
            note = f" (floats within {REL_TOLERANCE:g} relative)" if table.within_tolerance else ""
            click.echo(f"  {table.table}: {table.live_rows} rows, identical{note}")
        else:
            click.echo(
                f"PROBLEM {table.table}: live {table.live_rows} rows, rebuilt {table.rebuilt_rows}; "
                f"{table.difference}"
            )
    if not report.ok:
        raise SystemExit(1)
    click.echo("audit reproduce: every read model follows from the log under the version's spec")


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
    type=click.Path(dir_okay=False),
    default=None,
    callback=_given_file,
    help="Write to this file ('-' for stdout; a file is required for parquet, refused for table).",
)
@click.option(
    "--timeout",
    # At most a day, as the store and broker timeouts: 1e300 s overflowed the wait's clock.
    type=click.FloatRange(0.1, MAX_WAIT_S),
    callback=_finite,
    default=300.0,
    show_default=True,
    help="Seconds before the query is interrupted (Ctrl-C interrupts it too).",
)
@click.pass_context
def query(ctx: click.Context, sql: str, fmt: str, out: Path | None, timeout: float) -> None:
    """Run read-only SQL against the projection database (writes are refused by DuckDB)."""
    from projections.readonly import reader, render, run_query, within

    if not sql.strip():
        raise click.BadParameter("is empty: give a SELECT", param_hint="SQL")
    if fmt == "table" and not _to_stdout(out):
        # The table is for a terminal: --out was dropped and nothing written, with exit 0.
        raise click.BadParameter(
            "the table format is shown, not written: add --format csv, json or parquet", param_hint="--out"
        )
    if fmt == "parquet" and _to_stdout(out):
        raise click.BadParameter("--format parquet needs a file to write", param_hint="--out")
    if _to_stdout(out):
        out = None

    _refuse_own_file(out, "--out")
    with reader(_settings(ctx).projections_db) as connection:

        def run() -> tuple[Any, str | None]:
            relation = run_query(connection, sql)
            if relation is None:
                return None, None
            if fmt == "table":
                return _relation_table(relation), None
            return relation, render(relation, fmt, out)

        shown, text = within(connection, run, timeout)
    if shown is None:
        click.echo("(no result)")
    elif isinstance(shown, _Shown):
        _print_table(shown.table)
        if shown.cut:
            err.print(f"(the first {TABLE_ROWS:,} rows: --format csv or json gives every row)")
    elif text:
        # As it is for a pipe (click.echo strips escape sequences from data when not on a
        # terminal); on a terminal an escape sequence in a value would be obeyed, so it is
        # shown, and CSV's line ends (\r\n) stay line ends rather than showing as "\r".
        sys.stdout.write(visible(text.replace("\r\n", "\n")) if sys.stdout.isatty() else text)
    elif out is not None:
        click.echo(f"wrote {out}", err=True)


def _cell(value: object) -> Text:
    """A table cell showing `value` as it is: no rich markup ("[/x]" in data broke the
    table), control characters as visible escapes."""
    return Text(visible("" if value is None else str(value)))


def _add_row(table: Table, *values: object) -> None:
    table.add_row(*(_cell(v) for v in values))


def _print_table(table: Table) -> None:
    out.print(table)


def _print_line(text: str) -> None:
    """A line of text that holds data (ids): its control characters shown, not obeyed."""
    out.print(visible(text))


#: Rows a table on the terminal shows; the other formats write every row.
TABLE_ROWS = 1_000


@dataclass(frozen=True)
class _Shown:
    """A query's rows as a table, and whether more rows were left out."""

    table: Table
    cut: bool


def _relation_table(relation: Any) -> _Shown:
    """The first TABLE_ROWS rows as a table (drawing 300,000 rows took 20 s and 400 MB)."""
    rows = relation.limit(TABLE_ROWS + 1).fetchall()
    table = Table()
    for column in relation.columns:  # a column's name is data too (`AS "..."`)
        table.add_column(_cell(column))
    for row in rows[:TABLE_ROWS]:
        _add_row(table, *row)
    return _Shown(table, len(rows) > TABLE_ROWS)


@cli.command()
@click.option("--employee", required=True, help="Employee id.")
@click.option("--period", required=True, callback=_given_month, help="Period, YYYY-MM.")
@click.option("--version", default=None, callback=_given_text, help="Version (default: the promoted one).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def explain(ctx: click.Context, employee: str, period: str, version: str | None, fmt: str) -> None:
    """Explain a reward score: components, weights, caps, KPI values and the events behind them."""
    with interrupt_after():
        from projections.explain import explain as build_explanation
        from projections.readonly import reader
        from projections.store import find_version, versions_of

    with reader(_settings(ctx).projections_db) as connection:
        # An id, a unique id prefix or a name, as promote, drop and diff take.
        schema = find_version(versions_of(connection), version).version if version else _promoted(connection)
        result = build_explanation(connection, schema, employee, period)
    click.echo(result.to_json() if fmt == "json" else visible(result.to_text()))


def _promoted(connection: Any) -> str:
    from projections.errors import ProjectionError
    from projections.store import promoted_of

    promoted = promoted_of(connection)
    if promoted is None:
        raise ProjectionError("no version is promoted yet (run `crm-ledger project`)")
    return promoted


@cli.command()
@click.option(
    "--parquet",
    "folder",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for one Parquet file per read model.",
    callback=_given_path,
)
@click.pass_context
def export(ctx: click.Context, folder: Path) -> None:
    """Write every read model of the promoted version as Parquet."""
    from projections.readonly import export_parquet

    _refuse_own_file(folder, "--parquet")
    # The folder itself may be new, but not the folders it would be in.
    refuse_missing_folder(folder)
    for path in export_parquet(_settings(ctx).projections_db, folder):
        click.echo(f"wrote {path}")


@cli.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".crm-ledger/demo"),
    show_default=True,
    help="Demo folder (recreated: a new or empty folder, or an earlier demo's).",
)
@_generated_size_option("customers", 800)
@_generated_size_option("employees", 30)
@click.option(
    "--months",
    # The demo's team goals span its months, and a goal spans at most MAX_GOAL_MONTHS (24):
    # more failed half way, with the history already ingested.
    type=click.IntRange(1, 24),
    default=3,
    show_default=True,
    help="Months of history (the demo's team goals span them: at most 24).",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--serve", "serve_after", is_flag=True, help="Then serve the web pages on 127.0.0.1.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
def demo(
    folder: Path, customers: int, employees: int, months: int, seed: int, serve_after: bool, port: int
) -> None:
    """The main job on the embedded default: generate, ingest, set goals, project, show read models."""
    from crm_cli.demo import demo_settings, run_demo
    from importers.generator import GeneratorConfig

    # Its history starts in a fixed month and its goals are agreed in its months: one running
    # into the future had its events refused, then its goal changes, half way through.
    config = GeneratorConfig(customers, employees, months, seed)
    _history_fits(config.start, months, until=datetime.now(UTC).strftime("%Y-%m"))
    # A fault names the demo's own store and database, not the ones --store and --db name.
    click.get_current_context().find_root().obj = demo_settings(folder)
    listening = None
    if serve_after:
        from web.server import listening_socket, run_server

        # Bound first: a port in use is told before the demo is built, not after.
        listening = listening_socket("127.0.0.1", port)
    try:
        settings = run_demo(folder, config, click.echo)
    except BaseException:
        if listening is not None:
            listening.close()
        raise
    click.echo(
        f"\nDone. Explore it: crm-ledger --store {settings.store} --db {settings.projections_db} "
        'query "SELECT * FROM reward_score ORDER BY score DESC LIMIT 10"'
    )
    click.echo(f"Web pages: crm-ledger --db {settings.projections_db} serve (or `make serve-demo`)")
    if listening is not None:
        run_server(settings.projections_db, "127.0.0.1", port, None, echo=click.echo, listening=listening)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map outcomes to exit codes."""
    take_over_interrupts()  # from here a Ctrl-C is a KeyboardInterrupt, handled below
    with interrupt_after():  # it imports DuckDB, whose initialisation a Ctrl-C aborted (SIGABRT)
        from crm_cli.faults import describe

    context: list[click.Context] = []
    arguments = list(sys.argv[1:] if argv is None else argv)
    for number, argument in enumerate(arguments, start=1):
        if not is_unicode_text(argument):
            # Bytes that are not UTF-8 reach Python as lone surrogates, which no store,
            # encoder or terminal takes.
            message = f"error: argument {number} is not valid UTF-8: {argument!r}"
            err.print(message, highlight=False, markup=False)
            return 2
    try:
        with cli.make_context("crm-ledger", arguments) as ctx:
            context.append(ctx)
            cli.invoke(ctx)
    except click.exceptions.Exit as done:
        return int(done.exit_code or 0)
    except click.UsageError as error:
        error.show()
        return 2
    except click.ClickException as error:
        error.show()
        return 1
    except click.Abort as error:
        if isinstance(error.__context__, EOFError):
            # A prompt (hash-password's) met the end of its input, no Ctrl-C: a script that
            # piped nothing, or one line where the confirmation needs a second.
            # On a line of its own: the prompt ("Password: ") was left unanswered on stderr.
            err.print("\nerror: the input ended before the prompt was answered (pipe every line it asks for)")
            return 1
        err.print("aborted")
        return EXIT_INTERRUPTED
    except TransientError as error:
        err.print(f"error: {visible(str(error))}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_TRANSIENT
    except CrmLedgerError as error:
        err.print(f"error: {visible(str(error))}", highlight=False, markup=False, soft_wrap=True)
        return 1
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as error:  # noqa: BLE001 - the last line of defence
        if _interrupted_query(error):
            err.print("interrupted")
            return EXIT_INTERRUPTED
        settings = context[0].obj if context and isinstance(context[0].obj, Settings) else None
        fault = describe(error, settings)
        if fault is not None:
            err.print(f"error: {fault.line}", highlight=False, markup=False, soft_wrap=True)
            return EXIT_TRANSIENT if fault.temporary else 1
        traceback.print_exc()
        return 3
    return 0


def _interrupted_query(error: Exception) -> bool:
    """A DuckDB query that Ctrl-C stopped: DuckDB turns the signal into an error of its own."""
    text = str(error).lower()
    return type(error).__name__ == "InterruptException" or (
        isinstance(error, RuntimeError) and "interrupted" in text and "query" in text
    )


__all__: list[Any] = ["cli", "main"]
