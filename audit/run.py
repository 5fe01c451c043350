"""`audit verify` as a use case: gather the copies, the checkpoints and the statements, check.

The checks themselves live in `audit.verify` (chain, copies, checkpoints) and
`rewards.statement` (a statement file against the ledger); this module only decides what
to read: the store always, the mirror when the projection database exists, Kafka when
asked or reachable, the checkpoints topic with `--checkpoints`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from audit.decoded import DecodedColumnsCheck
from audit.errors import CheckpointsUnreadError
from audit.statements import verify_statement
from audit.verify import (
    STORE,
    AuditReport,
    ChainEntry,
    Finding,
    StoreReader,
    batch_entries,
    checkpoint_coverage,
    kafka_entries,
    verify,
)
from crm_ledger.kafka import await_broker, topic_exists, unreachable_reason
from crm_ledger.progress import Reporter, SilentReporter
from crm_ledger.settings import Settings
from ledger.checkpoints import MANUAL, Checkpoint, chain_at, read_published
from ledger.checkpoints import publish as send
from ledger.connect import open_ledger
from ledger.existence import index_disagreements
from ledger.relay import RelayConfig, recover_position
from projections.mirror import promoted_mirror_batches
from projections.readonly import reader


@dataclass(frozen=True)
class VerifyRequest:
    """What to check: copies (empty: the defaults), checkpoints, statement files."""

    sources: tuple[str, ...] = ()
    checkpoints: bool = False
    given: tuple[Checkpoint, ...] = ()
    statements: tuple[Path, ...] = ()


@dataclass
class VerifyOutcome:
    report: AuditReport
    notes: list[str] = field(default_factory=list)


def run_verify(settings: Settings, request: VerifyRequest, reporter: Reporter | None = None) -> VerifyOutcome:
    """Read every copy once and check it all; see the module docstring."""
    reporter = reporter or SilentReporter()
    app = open_ledger(settings, read_only=True)
    wanted = set(request.sources) or {"ledger", "mirror", "kafka?"}
    notes: list[str] = []
    extra: list[Finding] = []
    pinned: list[Checkpoint] = list(request.given)
    for path in request.statements:
        found, checkpoint = verify_statement(app, path)
        extra.extend(found)
        if checkpoint is not None:
            pinned.append(checkpoint)
        elif not found:
            notes.append(f"{path}: no chain head recorded (closed before chain heads were kept)")
    if "kafka" in wanted:
        # Asked for by name: wait for the broker as the relay does, then give up in one line.
        await_broker(settings.bootstrap, settings.broker_timeout_s, "auditing")
    elif request.checkpoints:
        # Asked for, the topic's checkpoints are part of the verdict: without them "all
        # copies agree" would claim what was never checked.
        reason = unreachable_reason(settings.bootstrap, timeout_s=5.0)
        if reason is not None:
            raise CheckpointsUnreadError(
                f"the checkpoints topic {settings.checkpoints} could not be read: Kafka at "
                f"{settings.bootstrap} is not reachable ({reason}); start it, or leave out --checkpoints"
            )
    maybe_kafka = "kafka?" in wanted or request.checkpoints
    # Asked for checkpoints, a slow broker must not be mistaken for an absent one.
    patience = 15.0 if request.checkpoints else 3.0
    kafka_up = "kafka" in wanted or (
        maybe_kafka and topic_exists(settings.bootstrap, settings.events_topic, timeout_s=patience)
    )
    store = StoreReader(app)
    copies: dict[str, Iterable[ChainEntry]] = {}
    published: list[Checkpoint] = []
    decoded: DecodedColumnsCheck | None = None
    with contextlib.ExitStack() as stack:
        if "mirror" in wanted and (settings.projections_db.exists() or "mirror" in request.sources):
            connection = stack.enter_context(reader(settings.projections_db))
            decoded = DecodedColumnsCheck(app.codec)
            stack.callback(decoded.close)
            copies["mirror"] = batch_entries(decoded.watch(promoted_mirror_batches(connection)))
        if kafka_up and ("kafka" in wanted or "kafka?" in wanted):
            copies["kafka"] = kafka_entries(settings.bootstrap, settings.events_topic)
        if request.checkpoints:
            # The broker listens (checked above): a topic it does not have holds no checkpoints.
            published = read_published(settings.bootstrap, settings.checkpoints, app.codec)
            notes.append(f"{len(published)} checkpoints read from {settings.checkpoints}")
        closes = store.period_closes() if request.checkpoints else iter(())
        reporter.total(app.max_position())
        report = verify(
            _counting(store.entries(), reporter), copies, itertools.chain(pinned, published, closes)
        )
    if request.checkpoints and kafka_up:
        relayed = recover_position(RelayConfig(settings.bootstrap, settings.events_topic)).notification_id
        report.findings.extend(checkpoint_coverage(published, store.closes, relayed, settings.checkpoints))
    if decoded is not None:
        result = decoded.result
        report.findings.extend(result.findings)
        notes.append(
            f"decoded columns: {result.rows} mirrored values decoded again, {len(result.columns)} columns "
            f"compared, {result.differences} difference(s)"
        )
    # The store is always read; its event-id index, outside the chain, is checked with it.
    report.findings.extend(
        Finding("index", STORE, nid, event_id, "crm_event_ids", detail)
        for nid, event_id, detail in index_disagreements(app.recorder)
    )
    report.findings.extend(extra)
    return VerifyOutcome(report, notes)


def _counting(entries: Iterator[ChainEntry], reporter: Reporter) -> Iterator[ChainEntry]:
    for count, entry in enumerate(entries, start=1):
        if count % 10_000 == 0:
            reporter.advance(10_000, events=10_000)
        yield entry


def head(settings: Settings, *, publish: bool) -> tuple[Checkpoint, str | None]:
    """The chain head recomputed from the store; published to the checkpoints topic when asked."""
    app = open_ledger(settings, read_only=True)
    checkpoint = chain_at(app)
    checkpoint = Checkpoint(checkpoint.position, checkpoint.chain, checkpoint.published_at, MANUAL)
    if not publish:
        return checkpoint, None
    await_broker(settings.bootstrap, settings.broker_timeout_s, "publishing the checkpoint")
    send(settings.bootstrap, settings.checkpoints, app.codec, checkpoint)
    return checkpoint, settings.checkpoints
