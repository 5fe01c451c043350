"""`project --workers N`: a consumer group of decoder processes appending one decoded log.

Two workers give the same log, stream by stream, and the same read models as one worker
and as the single-process projector; a worker killed with kill -9 loses nothing and
duplicates nothing once the command is run again; Ctrl-C stops every process with one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from crm_ledger.settings import Settings, log_root
from ledger.application import LedgerApplication
from ledger.relay import Relay, RelayConfig
from projections.errors import LogMismatchError
from projections.log import DecodedLog
from projections.readonly import reader
from projections.scaleout import project_with_workers
from projections.service import project_promoted
from projections.sources import LedgerSource, Position
from projections.staging import STAGING_DIR
from tests.helpers import CLI, kill_hard, run_cli, wait_for
from tests.projections.test_projections import MODEL_TABLES, build, digest, load, make_history

pytestmark = pytest.mark.kafka


def _settings(tmp_path: Path, name: str, bootstrap: str, topic: str) -> Settings:
    return Settings(
        store=str(tmp_path / "ledger.sqlite"),
        projections_db=tmp_path / f"{name}.duckdb",
        bootstrap=bootstrap,
        events_topic=topic,
    )


def _log_rows(db_path: Path) -> pa.Table:
    """Every row of the Kafka log, in stream and position order, without the time it was read."""
    (path,) = [p for p in log_root(db_path).iterdir() if (p / "_delta_log").exists()]
    table = DecodedLog(path).dataset().to_table().drop_columns(["seen_at"])
    return table.sort_by([("stream", "ascending"), ("position", "ascending")]).combine_chunks()


def _staged_leftovers(db_path: Path) -> list[Path]:
    """Anything left in the workers' staging tables (each removed when its worker stops)."""
    return [p for log in log_root(db_path).iterdir() for p in (log / STAGING_DIR).glob("*")]


def _relayed(app: LedgerApplication, tmp_path: Path, bootstrap: str, topic: str, **history: Any) -> int:
    path = tmp_path / "h.jsonl"
    make_history(path, **history)
    load(app, path)
    Relay(app, RelayConfig(bootstrap, topic, partitions=6, transactional_id=f"r-{topic}")).run()
    return app.max_position()


def test_two_workers_build_the_same_log_and_read_models_as_one(
    app: LedgerApplication, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    total = _relayed(app, tmp_path, kafka_bootstrap, topic, customers=400, months=3)
    logs = {}
    models = {}
    for workers in (1, 2):
        settings = _settings(tmp_path, f"w{workers}", kafka_bootstrap, topic)
        project_with_workers(settings, workers, None, follow=False, batch_size=700)
        logs[workers] = _log_rows(settings.projections_db)
        assert not _staged_leftovers(settings.projections_db)
        with reader(settings.projections_db) as con:
            models[workers] = {t: digest(con, t) for t in MODEL_TABLES}
    single = _settings(tmp_path, "single", kafka_bootstrap, topic)
    project_promoted(single, "kafka", None, follow=False)
    assert logs[1].num_rows == total
    assert logs[2].equals(logs[1])
    assert _log_rows(single.projections_db).equals(logs[1])
    assert models[2] == models[1]
    with reader(single.projections_db) as con:
        assert {t: digest(con, t) for t in MODEL_TABLES} == models[1]


def _workers_of(pid: int) -> list[int]:
    """The decoder processes the command started (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in map(int, children):
        with contextlib.suppress(FileNotFoundError):
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in command:
                found.append(child)
    return found


def _rows_in(db_path: Path) -> int:
    root = log_root(db_path)
    if not root.exists():
        return 0
    return sum(
        DecodedLog(path).dataset().count_rows() for path in root.iterdir() if (path / "_delta_log").exists()
    )


def _env(tmp_path: Path, db_path: Path, bootstrap: str, topic: str) -> dict[str, str]:
    return {
        **os.environ,
        "CRM_LEDGER_STORE": str(tmp_path / "ledger.sqlite"),
        "CRM_LEDGER_DB": str(db_path),
        "CRM_LEDGER_BOOTSTRAP": bootstrap,
        "CRM_LEDGER_TOPIC": topic,
    }


def _follow_with_two_workers(
    env: dict[str, str], *, start_new_session: bool = False
) -> subprocess.Popen[str]:
    """`project --source kafka --workers 2 --follow` on the test's ledger and topic."""
    return subprocess.Popen(
        [*CLI, "project", "--source", "kafka", "--workers", "2", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=start_new_session,
    )


@pytest.mark.slow
def test_a_worker_killed_with_kill_9_loses_and_duplicates_nothing(
    app: LedgerApplication, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    total = _relayed(app, tmp_path, kafka_bootstrap, topic, customers=3000, months=3)
    db_path = tmp_path / "crash.duckdb"
    env = _env(tmp_path, db_path, kafka_bootstrap, topic)
    process = _follow_with_two_workers(env)
    try:
        wait_for(lambda: len(_workers_of(process.pid)) == 2, timeout_s=60, what="two workers")
        wait_for(lambda: _rows_in(db_path) > 0, timeout_s=120, what="a first commit")
        os.kill(_workers_of(process.pid)[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_hard(process)
    assert process.returncode == 1
    assert "decoder worker" in stderr and "signal 9" in stderr and "Traceback" not in stderr
    finished = run_cli("project", "--source", "kafka", "--workers", "2", env=env)
    assert finished.returncode == 0, finished.stderr
    assert not _staged_leftovers(db_path)  # the killed worker's folder was swept by the next run
    rows = _log_rows(db_path)
    assert rows.num_rows == total
    assert len(set(rows.column("notification_id").to_pylist())) == total
    clean = build(Settings(store="unused", projections_db=tmp_path / "clean.duckdb"), LedgerSource(app), app)
    with reader(db_path) as con:
        for table in MODEL_TABLES:
            assert digest(con, table) == digest(clean.connection, table), table
    clean.close()


def test_ctrl_c_stops_the_workers_and_the_command_with_one_line(
    app: LedgerApplication, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    _relayed(app, tmp_path, kafka_bootstrap, topic, customers=200, months=2)
    db_path = tmp_path / "p.duckdb"
    # Its own process group, as a terminal's foreground job: Ctrl-C reaches every process.
    process = _follow_with_two_workers(
        _env(tmp_path, db_path, kafka_bootstrap, topic), start_new_session=True
    )
    try:
        wait_for(lambda: _rows_in(db_path) > 0, timeout_s=120, what="a first commit")
        workers = _workers_of(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_hard(process)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert len(stdout.strip().splitlines()) == 1 and "stopped after" in stdout
    assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers)


@pytest.mark.parametrize("store_kind", ["sqlite"])  # a check of the log and the topic alone
def test_workers_never_read_on_from_a_topic_made_anew(
    app: LedgerApplication, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    """A log that goes on from offsets the topic's partitions no longer hold (the topic deleted
    and made anew) is refused before any worker starts, as the single-process source does."""
    _relayed(app, tmp_path, kafka_bootstrap, topic, customers=40, months=1)
    settings = _settings(tmp_path, "w", kafka_bootstrap, topic)
    project_with_workers(settings, 1, None, follow=False)
    (path,) = [p for p in log_root(settings.projections_db).iterdir() if (p / "_delta_log").exists()]
    log = DecodedLog(path)
    held = {f"{topic}:{p}": log.table().transaction_version(f"{topic}:{p}") for p in range(6)}
    # What a topic made anew looks like from the log: it goes on past every partition's end.
    beyond = [Position(stream, int(last) + 1000) for stream, last in held.items() if last is not None]
    assert beyond
    log.append(DecodedLog(path).dataset().to_table().slice(0, 0), beyond)
    with pytest.raises(LogMismatchError, match="the decoded log was built from another topic"):
        project_with_workers(settings, 2, None, follow=False)


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its new parent is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_of_a_command_killed_with_kill_9_leave_and_the_rerun_lands_everything_once(
    app: LedgerApplication, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    """The main process killed, its workers went on for good (idle members of the group)."""
    total = _relayed(app, tmp_path, kafka_bootstrap, topic, customers=200, months=2)
    db_path = tmp_path / "p.duckdb"
    env = _env(tmp_path, db_path, kafka_bootstrap, topic)
    process = _follow_with_two_workers(env)
    try:
        wait_for(lambda: _rows_in(db_path) > 0, timeout_s=120, what="a first commit")
        workers = _workers_of(process.pid)
        assert len(workers) == 2
    finally:
        kill_hard(process)
    wait_for(lambda: not any(map(_running, workers)), timeout_s=30, what="the workers to leave")
    finished = run_cli("project", "--source", "kafka", "--workers", "2", env=env)
    assert finished.returncode == 0, finished.stderr
    rows = _log_rows(db_path)
    assert rows.num_rows == total
    assert len(set(rows.column("notification_id").to_pylist())) == total
