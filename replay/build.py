"""`replay`: build a new version of the read models under a metric spec, side by side.

A replay never re-decodes the source: it first brings the shared decoded log up to date
(only what the source holds beyond it, without holding the projection database), then
builds the new version's derived tables from the log with set-based SQL in one
transaction. A killed replay leaves the log's committed batches (appends are exactly
once) and no half-built version: the same command continues. When only weights, caps or
smoothing changed (same KPI definitions), the new version shares its base's KPI tables
and only its scores are computed. `--from-source` re-decodes the whole source into a
fresh log first, for when someone doubts the log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb

from crm_ledger.progress import Reporter
from crm_ledger.settings import Settings
from projections.engine import Projector
from projections.interrupts import statements_interrupted_on_stop
from projections.service import append_source, catch_up, codec_of, ledger_for, rebuild_log, source_label
from projections.spec import load_spec
from projections.store import ProjectionDB, VersionInfo, version_id

Mode = Literal["full", "kpi-change", "scores-only", "caught-up", "interrupted"]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did."""

    version: str
    name: str
    mode: Mode
    applied: int
    seconds: float
    based_on: str | None = None
    #: What the replay did not do as asked, said after its line.
    note: str | None = None

    def message(self) -> str:
        line = self._line()
        return line if self.note is None else f"{line}; {self.note}"

    def _line(self) -> str:
        if self.mode == "scores-only":
            return (
                f"{self.version} ({self.name}): KPI definitions unchanged, scores recomputed from the "
                f"KPI tables of {self.based_on} without re-reading the log in {self.seconds:.2f}s "
                "(for a replay of the log, drop it and replay with --full)"
            )
        if self.mode == "kpi-change":
            return (
                f"{self.version} ({self.name}): KPI definitions changed, built from the decoded log "
                f"sharing the spec-independent tables of {self.based_on}: {self.applied} events "
                f"in {self.seconds:.2f}s (for a build of its own, drop it and replay with --full; "
                "--from-source re-decodes)"
            )
        if self.mode == "interrupted":
            return (
                f"{self.version} ({self.name}): interrupted after {self.applied} events; "
                "run the same command again to continue"
            )
        rate = self.applied / self.seconds if self.seconds > 0 else 0.0
        verb = "replayed" if self.mode == "full" else "caught up"
        return (
            f"{self.version} ({self.name}): {verb} {self.applied} events "
            f"in {self.seconds:.1f}s ({rate:,.0f} ev/s)"
        )


def _known_note(version: VersionInfo, name: str | None, full: bool) -> str | None:
    """What a replay of a spec that is `version` already does not do as asked: a spec (as of a
    moment, over a source) is one version, which keeps its first name; one built from another
    shares that one's tables, which `full` cannot undo."""
    notes = []
    if name is not None and name != version.name:
        already = f"this spec is version {version.version} already, named {version.name!r}"
        notes.append(f"--name {name!r} not applied: {already}")
    if full:
        notes.append(
            f"--full not applied: it shares the tables of {version.built_from}; "
            "drop it, then replay with --full for a build of its own"
        )
    return "; ".join(notes) or None


def _shareable_base(db: ProjectionDB, kpi_hash: str | None, label: str) -> VersionInfo | None:
    """A built, live version of the source with these KPI definitions (any when None), promoted first."""
    candidates = [
        v
        for v in db.versions()
        if (kpi_hash is None or v.kpi_hash == kpi_hash)
        and v.source == label
        and v.as_of is None
        and v.built_from is None
        and v.built_at is not None
    ]
    candidates.sort(key=lambda v: (not v.promoted, v.created_at))
    return candidates[0] if candidates else None


def replay(
    settings: Settings,
    spec_path: Path,
    source: str,
    *,
    as_of: datetime | None = None,
    name: str | None = None,
    full: bool = False,
    from_source: bool = False,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ReplayResult:
    """Build (or finish, or catch up) the version of `spec_path` over the decoded log.

    `full` builds the version's own tables from the log (no sharing); `from_source`
    first decodes the whole source again into a fresh log that replaces the shared one.
    """
    spec = load_spec(spec_path)  # every spec error surfaces before any work
    spec_text = spec_path.read_text(encoding="utf-8")
    label = source_label(settings, source)
    target = version_id(spec, as_of, label)
    started = time.monotonic()
    app = ledger_for(settings, source)
    codec = codec_of(app)

    rebuilt = 0
    if from_source:
        rebuilt = rebuild_log(settings, source, label, app, reporter=reporter, should_stop=should_stop)
        if should_stop():
            return ReplayResult(target, name or spec.name, "interrupted", rebuilt, time.monotonic() - started)
        full = True
    # Decode what the source holds beyond the log, without holding the projection database.
    appended = append_source(settings, source, label, app, reporter=reporter, should_stop=should_stop)
    if should_stop():
        return ReplayResult(target, name or spec.name, "interrupted", appended, time.monotonic() - started)
    try:
        with ProjectionDB(settings.projections_db) as db, _stoppable(db, should_stop):
            known = {v.version: v for v in db.versions()}
            # A version built from another shares its tables: made anew they would still be shared.
            rebuild = full and (from_source or target not in known or known[target].built_from is None)
            note = _known_note(known[target], name, full and not rebuild) if target in known else None
            if target in known and rebuild:
                # Asked for again in full (or after re-decoding): its tables are made anew from the log.
                version = known[target]
                Projector(db, version, None, codec).refresh(full=True)
                events = rebuilt if from_source else db.find_version(version.version).events
                seconds = time.monotonic() - started
                return ReplayResult(target, version.name, "full", events, seconds, note=note)
            if target in known:
                version = known[target]
                stats, _ = catch_up(
                    db,
                    version,
                    settings=settings,
                    source=source,
                    app=app,
                    reporter=reporter,
                    should_stop=should_stop,
                )
                return ReplayResult(
                    target, version.name, "caught-up", stats.applied, time.monotonic() - started, note=note
                )
            base = None if full or as_of is not None else _shareable_base(db, spec.kpi_hash, label)
            if base is not None:
                derived = db.ensure_version(spec, spec_text, label, name=name, built_from=base.version)
                Projector(db, derived, None, codec).refresh(scores_only=True)
                return ReplayResult(
                    target, derived.name, "scores-only", 0, time.monotonic() - started, based_on=base.version
                )
            base = None if full or as_of is not None else _shareable_base(db, None, label)
            if base is not None:
                # Another threshold: the new KPI columns are recounted from the shared measures.
                derived = db.ensure_version(spec, spec_text, label, name=name, built_from=base.version)
                Projector(db, derived, None, codec).refresh()
                events = db.find_version(derived.version).events
                seconds, based_on = time.monotonic() - started, base.version
                return ReplayResult(target, derived.name, "kpi-change", events, seconds, based_on=based_on)

        with ProjectionDB(settings.projections_db, wait_s=600) as db, _stoppable(db, should_stop):
            version = db.ensure_version(spec, spec_text, label, as_of=as_of, name=name)
            Projector(db, version, None, codec).refresh(full=True)
            events = db.find_version(version.version).events
    except duckdb.InterruptException:
        if not should_stop():
            raise
        # Stopped inside a build: its transaction rolled back, the version stays as it was.
        return ReplayResult(target, name or spec.name, "interrupted", appended, time.monotonic() - started)
    return ReplayResult(target, version.name, "full", events, time.monotonic() - started)


def _stoppable(db: ProjectionDB, should_stop: Callable[[], bool]) -> contextlib.AbstractContextManager[None]:
    """A Ctrl-C during one of the build's long statements stops it (projections.interrupts)."""
    return statements_interrupted_on_stop(db.open_connection, should_stop)
