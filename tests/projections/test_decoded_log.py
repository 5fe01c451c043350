"""The decoded log: exactly-once appends across restarts, consistent snapshots for readers."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import duckdb
import pytest

from crm_ledger.errors import TransientError
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.append import LogAppender
from projections.engine import Projector
from projections.errors import LogMismatchError, ProjectionError, StaleBatchError
from projections.log import DecodedLog, native_panics_hidden, register_log, register_logs
from projections.readonly import reader
from projections.sources import LedgerSource, Position, RawBatch
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB
from tests.helpers import run_cli
from tests.projections.test_projections import MODEL_TABLES, digest


def _ledger(tmp_path: Path) -> LedgerApplication:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=200, employees=5, months=2, seed=3), handle)
    app = LedgerApplication(Settings(store=str(tmp_path / "l.sqlite")).eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    return app


def _append(log: DecodedLog, app: LedgerApplication, batches: int | None = None) -> None:
    appender = LogAppender(log, LedgerSource(app, batch_size=97), app.codec)
    with appender.batches(follow=False) as prepared:
        for done, batch in enumerate(prepared, start=1):
            appender.commit(batch)
            if batches is not None and done >= batches:
                return


def test_a_restarted_appender_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    app = _ledger(tmp_path)
    log = DecodedLog(tmp_path / "log")
    notifications = [n.id for n in app.read_notifications(1, 1_000_000)]
    _append(log, app, batches=3)  # stops after three commits, as a killed appender would
    assert log.positions(["ledger"])["ledger"].offset == notifications[3 * 97 - 1]
    _append(DecodedLog(tmp_path / "log"), app)  # a new process: resumes from the log itself
    _append(DecodedLog(tmp_path / "log"), app)  # and again: nothing new
    rows = log.dataset().to_table(columns=["notification_id", "chain"])
    ids = rows.column("notification_id").to_pylist()
    assert sorted(ids) == notifications
    # The hash chain continued across the restart exactly as in one uninterrupted run.
    fresh = DecodedLog(tmp_path / "fresh")
    _append(fresh, app)
    chains = dict(zip(ids, rows.column("chain").to_pylist(), strict=True))
    expected = fresh.dataset().to_table(columns=["notification_id", "chain"]).to_pylist()
    assert all(chains[r["notification_id"]] == r["chain"] for r in expected)


def test_a_handle_held_while_the_log_is_rebuilt_reads_the_new_log(tmp_path: Path) -> None:
    """`replay --from-source` rebuilds the log beside a follower: its versions start anew, below
    the one the follower's handle holds, and the handle reads the new log (it raised)."""
    app = _ledger(tmp_path)
    held = DecodedLog(tmp_path / "log")
    _append(held, app, batches=4)
    assert held.version() == 4
    shutil.rmtree(tmp_path / "log")
    _append(DecodedLog(tmp_path / "log"), app, batches=1)
    assert held.version() == 1
    assert held.positions(["ledger"])["ledger"].offset == [n.id for n in app.read_notifications(1, 97)][-1]


def test_two_appenders_of_one_source_never_commit_the_same_rows(tmp_path: Path) -> None:
    app = _ledger(tmp_path)
    notifications = [n.id for n in app.read_notifications(1, 1_000_000)]
    first = LogAppender(DecodedLog(tmp_path / "log"), LedgerSource(app, batch_size=97), app.codec)
    second = LogAppender(DecodedLog(tmp_path / "log"), LedgerSource(app, batch_size=97), app.codec)
    with first.batches(follow=False) as ours, second.batches(follow=False) as theirs:
        batch = next(ours)
        first.commit(batch)
        # The second read the log's start too: its first batch holds the same rows.
        # A second `replay` or `project` started meanwhile: exit 75, the same command reads on.
        with pytest.raises(StaleBatchError, match=r"moved on in the decoded log.*run the same command again"):
            second.commit(next(theirs))
        for batch in ours:
            first.commit(batch)
    ids = DecodedLog(tmp_path / "log").dataset().to_table(columns=["notification_id"]).column(0).to_pylist()
    assert sorted(ids) == notifications
    assert issubclass(StaleBatchError, TransientError)


class _Overtaken(LedgerSource):
    """A ledger source whose first batches are read only after another process appended them all."""

    def __init__(self, app: LedgerApplication, other: Callable[[], None]) -> None:
        super().__init__(app, batch_size=97)
        self.other: Callable[[], None] | None = other

    def batches(self, positions: Mapping[str, Position], *, follow: bool) -> Iterator[RawBatch]:
        if self.other is not None:
            other, self.other = self.other, None
            other()
        yield from super().batches(positions, follow=follow)


def test_a_projector_overtaken_by_another_appender_goes_on_from_the_log(tmp_path: Path) -> None:
    app = _ledger(tmp_path)
    notifications = [n.id for n in app.read_notifications(1, 1_000_000)]
    db = ProjectionDB(tmp_path / "p.duckdb")
    version = db.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_SPEC.read_text(), "ledger")
    path = db.log("ledger").path
    stats = Projector(db, version, _Overtaken(app, lambda: _append(DecodedLog(path), app)), app.codec).run()
    assert stats.applied == 0  # the other appended everything; nothing was written twice
    ids = DecodedLog(path).dataset().to_table(columns=["notification_id"]).column(0).to_pylist()
    assert sorted(ids) == notifications
    assert db.find_version(version.version).events == len(notifications)
    db.close()


def test_readers_see_whole_commits_while_the_log_is_appended(tmp_path: Path) -> None:
    app = _ledger(tmp_path)
    log = DecodedLog(tmp_path / "log")
    notifications = [n.id for n in app.read_notifications(1, 1_000_000)]
    total = len(notifications)
    writer = threading.Thread(target=_append, args=(DecodedLog(tmp_path / "log"), app))
    writer.start()
    seen = []
    reader = duckdb.connect()
    while writer.is_alive() or not seen or seen[-1] < total:
        register_log(reader, "ledger", DecodedLog(tmp_path / "log"))
        count, highest = reader.execute(
            "SELECT count(*), coalesce(max(position), 0) FROM crm_log_ledger"
        ).fetchone()  # type: ignore[misc]
        # A snapshot is a prefix of the log made of whole commits: no gap, no partial batch.
        assert count == (notifications.index(highest) + 1 if highest else 0)
        assert count % 97 == 0 or count == total
        seen.append(count)
        if not writer.is_alive() and count == total:
            break
    writer.join()
    assert seen == sorted(seen) and seen[-1] == total
    assert log.version() >= 1


def test_a_log_is_never_continued_from_another_ledger(tmp_path: Path) -> None:
    """A projection database (and its log) kept while the ledger was replaced: `project` says so
    in one line instead of reading on from the old ledger's position; `replay --from-source`
    rebuilds the log from the ledger at hand."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    for path, seed in ((first, 3), (second, 4)):
        with path.open("w") as handle:
            write_history(GeneratorConfig(customers=120, employees=5, months=2, seed=seed), handle)
    db = tmp_path / "p.duckdb"
    old = {"CRM_LEDGER_STORE": str(tmp_path / "old.sqlite"), "CRM_LEDGER_DB": str(db)}
    new = {**old, "CRM_LEDGER_STORE": str(tmp_path / "new.sqlite")}
    run_cli("ingest", str(first), env=old, check=True)
    run_cli("project", env=old, check=True)
    run_cli("ingest", str(second), env=new, check=True)
    for command in (["project"], ["replay", "--metrics", str(DEFAULT_SPEC), "--name", "again"]):
        refused = run_cli(*command, env=new)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
        assert "the decoded log was built from another ledger" in refused.stderr
        assert "replay --from-source" in refused.stderr
    # The same ledger reads on as before.
    assert run_cli("project", env=old).returncode == 0
    # What a rebuild stopped while removing the log it replaced leaves beside the log.
    shutil.copytree(tmp_path / "p.log" / "ledger", tmp_path / "p.log" / "ledger.old")
    rebuilt = run_cli("replay", "--from-source", "--metrics", str(DEFAULT_SPEC), "--name", "rebuilt", env=new)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert sorted(p.name for p in (tmp_path / "p.log").iterdir()) == ["ledger"]
    app = LedgerApplication(Settings(store=new["CRM_LEDGER_STORE"]).eventsourcing_env())
    try:
        ids = [n.id for n in app.read_notifications(1, 1_000_000)]
    finally:
        app.close()
    counted = run_cli("query", "SELECT count(*) AS n FROM ledger_events", "--format", "csv", env=new, check=True)
    assert counted.stdout.split() == ["n", str(len(ids))]


def test_a_log_in_a_folder_whose_name_has_spaces_or_accents_is_read(tmp_path: Path) -> None:
    """delta-rs names a local table's files percent-encoded ("my%20data"): Arrow looked for them
    as they were written, so every project and query in such a folder failed."""
    app = _ledger(tmp_path)
    log = DecodedLog(tmp_path / "my data ü" / "log")
    _append(log, app, batches=2)
    _append(DecodedLog(tmp_path / "my data ü" / "log"), app)  # resumes from the heads it reads back
    notifications = [n.id for n in app.read_notifications(1, 1_000_000)]
    ids = log.dataset().to_table(columns=["notification_id"]).column(0).to_pylist()
    assert sorted(ids) == notifications
    assert log.dataset(after={"ledger": notifications[-1]}).count_rows() == 0
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "my data ü" / "p q.duckdb")}
    run_cli("project", env=env, check=True)
    counted = run_cli("query", "SELECT count(*) AS n FROM ledger_events", "--format", "csv", env=env, check=True)
    assert counted.stdout.split() == ["n", str(len(notifications))]


@pytest.mark.parametrize("folder", ["a%41b", "x%2Fy", "b\\c"])
def test_a_log_in_a_folder_that_delta_reads_as_another_is_refused_before_anything_is_made(
    tmp_path: Path, folder: str
) -> None:
    """delta-rs wrote a log under "a%41b" and read it back from "aAb" (a file:// URL with the
    "%" as "%25" is decoded once more on reading too): no form of the path works, so it is
    refused in one line naming it, before the log or the database is made."""
    (tmp_path / folder).mkdir()
    with pytest.raises(ProjectionError, match="Delta library reads as"):
        DecodedLog(tmp_path / folder / "log")
    _ledger(tmp_path)
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / folder / "p.duckdb")}
    for args in (["project"], ["replay", "--metrics", str(DEFAULT_SPEC)]):
        refused = run_cli(*args, env=env)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert f"projection database {tmp_path / folder / 'p.duckdb'}: its path holds" in refused.stderr
    assert not any((tmp_path / folder).iterdir())


def test_a_percent_sign_that_is_no_escape_is_a_folder_name_like_any_other(tmp_path: Path) -> None:
    app = _ledger(tmp_path)
    folder = tmp_path / "100% %zz %4"
    _append(DecodedLog(folder / "log"), app)
    notifications = [n.id for n in app.read_notifications(1, 1_000_000)]
    ids = DecodedLog(folder / "log").dataset().to_table(columns=["notification_id"]).column(0).to_pylist()
    assert sorted(ids) == notifications and (folder / "log" / "_delta_log").is_dir()


def test_a_log_whose_last_rows_were_taken_out_of_its_commits_is_not_read_on(tmp_path: Path) -> None:
    """A commit stripped of its files (its application transactions kept) read as a log holding
    the ledger: `project` said "applied 0 events" and a rebuilt database lost those events."""
    app = _ledger(tmp_path)
    _append(DecodedLog(tmp_path / "log"), app)
    last = sorted((tmp_path / "log" / "_delta_log").glob("*.json"))[-1]
    last.write_text("".join(line for line in last.read_text().splitlines(True) if '"add"' not in line))
    with pytest.raises(LogMismatchError, match="its files were altered"):
        DecodedLog(tmp_path / "log").positions(["ledger"])


def test_a_log_removed_and_decoded_anew_with_more_events_reaches_the_read_models(tmp_path: Path) -> None:
    """The new log numbers its versions from 0 again: its version 1 holding more events than
    the old version 1 the read models recorded, `project` took them as current (events lost)."""
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=150, employees=5, months=2, seed=6), handle)
    lines = history.read_text().splitlines(True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[: len(lines) * 3 // 4]))
    rest.write_text("".join(lines[len(lines) * 3 // 4 :]))
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    run_cli("ingest", str(first), env=env, check=True)
    run_cli("project", env=env, check=True)
    run_cli("ingest", str(rest), env=env, check=True)
    shutil.rmtree(tmp_path / "p.log")
    run_cli("project", env=env, check=True)
    clean = {**env, "CRM_LEDGER_DB": str(tmp_path / "clean.duckdb")}
    run_cli("project", env=clean, check=True)
    digests = []
    for db in (env["CRM_LEDGER_DB"], clean["CRM_LEDGER_DB"]):
        with reader(Path(db)) as con:
            digests.append([digest(con, table) for table in MODEL_TABLES])
    assert digests[0] == digests[1]


def test_the_heads_an_appender_committed_are_the_ones_the_log_holds(tmp_path: Path) -> None:
    """An appender's next run starts from the positions it committed, kept at hand while the log
    is still at the version its commit made: the same offset, chain and message that a reader
    of the Delta files finds; once another process commits, the files are read again."""
    app = _ledger(tmp_path)
    log = DecodedLog(tmp_path / "log")
    _append(log, app, batches=2)

    def heads(of: DecodedLog) -> tuple[int, str | None, bytes | None]:
        head = of.positions(["ledger"])["ledger"]
        return head.offset, head.chain, head.value

    kept = heads(log)
    assert kept[2] is not None
    assert kept == heads(DecodedLog(tmp_path / "log"))
    _append(DecodedLog(tmp_path / "log"), app, batches=1)  # another process goes on
    assert heads(log) == heads(DecodedLog(tmp_path / "log")) != kept


def test_the_rows_of_a_commit_are_kept_only_as_that_commit(tmp_path: Path) -> None:
    """The rows an appender committed are what the log gained from the version it committed on
    to the one it made (the index of a follower reads them from here): the same rows a reader of
    the Delta files finds; asked for any other pair of versions, or after another process
    committed, the log answers None and the files are read."""
    app = _ledger(tmp_path)
    log = DecodedLog(tmp_path / "log")
    _append(log, app, batches=2)
    table_id = str(log.table().metadata().id)
    version = log.version()
    kept = log.appended(table_id, version - 1, version)
    assert kept is not None and kept.num_rows == 97
    in_files = log.dataset(version).to_table().sort_by("position").slice(97)
    assert kept.select(["position", "chain", "value"]).equals(in_files.select(["position", "chain", "value"]))
    assert log.appended(table_id, version - 2, version) is None
    assert log.appended("another table", version - 1, version) is None
    _append(DecodedLog(tmp_path / "log"), app, batches=1)  # another process goes on
    assert log.appended(table_id, version, version + 1) is None


def test_project_says_so_when_another_run_decoded_the_events_it_brings_the_tables_to(tmp_path: Path) -> None:
    """A replay of another spec decodes the new events into the shared log; `project` then
    decodes none itself but brings the promoted version to them ("applied 0 events" alone)."""
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=60, employees=4, months=1, seed=4), handle)
    lines = history.read_text().splitlines(True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    rest.write_text("".join(lines[len(lines) // 2 :]))
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    run_cli("ingest", str(first), env=env, check=True)
    run_cli("project", env=env, check=True)
    run_cli("ingest", str(rest), env=env, check=True)
    strict = tmp_path / "strict.toml"
    strict.write_text(DEFAULT_SPEC.read_text().replace("csat_satisfied_min = 4", "csat_satisfied_min = 5"))
    # A version of its own (a shared one would bring its base, the promoted version, along).
    run_cli("replay", "--metrics", str(strict), "--full", env=env, check=True)
    projected = run_cli("project", env=env, check=True)
    assert "applied 0 events" in projected.stdout
    assert f"the read models brought up to the log ({len(lines)} events)" in projected.stdout


def test_only_the_panic_reports_of_a_failed_write_are_kept_off_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """What delta-rs' background task prints when a write fails (a full disk) is dropped; any
    other output of the same moment, and a panic of a write that did not fail, are kept."""
    panic = (
        b"\nthread 'tokio-rt-worker' (7) panicked at src/buffered.rs:369:41:\nAlready shut down\n"
        b"stack backtrace:\n   0: frame\nnote: Some details are omitted\n"
    )
    with pytest.raises(OSError), native_panics_hidden():
        os.write(2, b"before\n" + panic + b"after\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert capfd.readouterr().err == "before\nafter\n"
    with native_panics_hidden():
        os.write(2, panic)
    assert capfd.readouterr().err == panic.decode()


def test_a_log_whose_making_failed_is_made_again_and_readers_leave_it_alone(tmp_path: Path) -> None:
    """A full disk while the log was made left its `_delta_log` folder empty: every later
    look took the log as made and failed with "No files in log segment"."""
    path = tmp_path / "p.log" / "ledger"
    (path / "_delta_log").mkdir(parents=True)
    with duckdb.connect() as connection:
        assert register_logs(connection, tmp_path / "p.log", ["ledger"]) == {}
    assert list((path / "_delta_log").iterdir()) == []
    assert DecodedLog(path).version() == 0
