"""Faults are one line: full disks, file-size limits, read-only and truncated files, bad SQL, time limits."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import socketserver
import subprocess
import threading
import time
import uuid
from pathlib import Path

import click
import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.records import RecordParser
from projections.spec import DEFAULT_SPEC
from projections.store import ProjectionDB
from tests.helpers import (
    CLI,
    cpu_seconds,
    kill_hard,
    ledger_content,
    run_cli,
    run_cli_on_full_disk,
    run_cli_on_terminal,
    wait_for,
)


def _env(tmp_path: Path) -> dict[str, str]:
    return {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}


def _one_line_error(result: subprocess.CompletedProcess[str], *phrases: str, code: int = 1) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _history(tmp_path: Path) -> Path:
    path = tmp_path / "h.jsonl"
    with path.open("w") as handle:
        write_history(GeneratorConfig(customers=300, employees=8, months=2, seed=4), handle)
    return path


def _run_limited(args: list[str], env: dict[str, str], file_limit: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**os.environ, **env}, preexec_fn=limit, check=False
    )


def test_a_file_size_limit_mid_ingest_is_one_line_and_nothing_is_half_written(tmp_path: Path) -> None:
    history = _history(tmp_path)
    env = _env(tmp_path)
    result = _run_limited(["ingest", str(history), "--batch-size", "200"], env, 300_000)
    _one_line_error(result, "event store", "run the same command again")
    run_cli("ingest", str(history), env=env, check=True)
    clean_env = {"CRM_LEDGER_STORE": str(tmp_path / "clean.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "c.duckdb")}
    run_cli("ingest", str(history), env=clean_env, check=True)
    apps = [LedgerApplication(Settings(store=e["CRM_LEDGER_STORE"]).eventsourcing_env()) for e in (env, clean_env)]
    assert ledger_content(apps[0]) == ledger_content(apps[1])
    for app in apps:
        app.close()


def test_output_past_a_file_size_limit_is_one_line(tmp_path: Path) -> None:
    """stdout redirected to a file that reaches its limit: the command told it, then the last
    flush of what was still buffered failed again with a traceback (exit 120)."""
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    for args in (["query", "SELECT * FROM range(200)"], ["query", "SELECT * FROM range(100000)", "--format", "csv"]):
        with (tmp_path / "out.txt").open("w") as out:
            result = subprocess.run(
                [*CLI, *args], stdout=out, stderr=subprocess.PIPE, text=True,
                env={**os.environ, **env}, preexec_fn=limit, check=False,
            )
        _one_line_error(result, "file size limit")


def test_output_onto_a_full_disk_names_standard_output_and_says_it_is_cut_short(tmp_path: Path) -> None:
    """stdout redirected onto a full disk was "disk full: ...; nothing was half-written":
    no name, and the file the output went to held its first part."""
    env = _env(tmp_path)
    run_cli("ingest", str(_history(tmp_path)), env=env, check=True)
    run_cli("project", env=env, check=True)
    disk = tmp_path / "disk"
    disk.mkdir()
    for args in (["query", "SELECT * FROM range(100000)", "--format", "csv"], ["versions"]):
        full = run_cli_on_full_disk(disk, 0, *args, env=env, stdout=disk / "out.txt")
        _one_line_error(full, "disk full (standard output)", "the output is cut short", "run the same command again")
        assert "half-written" not in full.stderr


def test_a_truncated_projection_database_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "p.duckdb").write_bytes(b"DUCK" + b"\x00" * 100)
    _one_line_error(run_cli("query", "SELECT 1", env=env), "projection database", "rebuild")


def test_failing_sql_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = _history(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    _one_line_error(run_cli("query", "SELECT 'x'::INTEGER", env=env), "query")
    _one_line_error(run_cli("query", "SELECT * FROM no_such_table", env=env), "query")
    # Minutes of work on any machine: a query that ended before the Ctrl-C would end the
    # command normally (a Ctrl-C after the command is done changes nothing).
    slow = "SELECT count(*) FROM range(10000000000000) a"
    _one_line_error(run_cli("query", slow, "--timeout", "0.5", env=env), "stopped after 0.5 s")
    # Ctrl-C while the query runs, then again while it stops: one line and 130, every time.
    for second_signal in (False, True):
        running = subprocess.Popen(
            [*CLI, "query", slow], stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
        )
        # Starting takes well under a second of CPU; the query then burns it on every thread.
        wait_for(lambda pid=running.pid: cpu_seconds(pid) >= 1.5, what="the query to run")
        running.send_signal(signal.SIGINT)
        if second_signal:
            running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=60)
        assert running.returncode == 130 and stderr.strip() == "interrupted", (running.returncode, stderr)


def test_a_read_only_store_is_one_line(tmp_path: Path) -> None:
    history = _history(tmp_path)
    env = _env(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    store = tmp_path / "l.sqlite"
    # Root ignores file modes; the immutable attribute stops even root from writing.
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        more = tmp_path / "more.jsonl"
        more.write_text(history.read_text().replace('-4', '-5'))
        _one_line_error(run_cli("ingest", str(more), env=env), "event store", "read-only")
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=False)


def test_a_decoded_log_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    history = _history(tmp_path)
    env = _env(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    commits = tmp_path / "p.log" / "ledger" / "_delta_log"
    assert commits.is_dir()
    more = tmp_path / "more.jsonl"
    more.write_text(history.read_text().replace("-4", "-5"))
    added = run_cli("ingest", str(more), env=env)  # new events (and rejects of the shared ones)
    assert "accepted 0," not in added.stdout, added.stdout
    if subprocess.run(["chattr", "+i", str(commits)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        _one_line_error(run_cli("project", env=env), "decoded log", "cannot be written")
    finally:
        subprocess.run(["chattr", "-i", str(commits)], check=False)
    assert run_cli("project", env=env).returncode == 0


def test_a_full_disk_under_the_decoded_log_is_one_line_and_the_rerun_builds_it_whole(tmp_path: Path) -> None:
    """A write of the decoded log that met a full disk made a background task of delta-rs
    panic too, and Rust's report of it (a thread, a path in a crate's source, and with
    RUST_BACKTRACE a backtrace) came before the error line."""
    env = _env(tmp_path)
    run_cli("ingest", str(_history(tmp_path)), env=env, check=True)
    run_cli("project", env=env, check=True)
    disk = tmp_path / "disk"
    disk.mkdir()
    on_disk = {**env, "CRM_LEDGER_DB": str(disk / "p.duckdb")}
    # With room for the database's first pages only, the log's own making fails.
    for free, backtrace in ((100_000, "0"), (100_000, "1"), (20_000, "0")):
        full = run_cli_on_full_disk(disk, free, "project", env={**on_disk, "RUST_BACKTRACE": backtrace})
        _one_line_error(full, "decoded log", "disk full", "run the same command again")
        assert len(full.stderr.strip().splitlines()) == 1, full.stderr
    run_cli("project", env=on_disk, check=True)
    counts = "SELECT (SELECT count(*) FROM customer_profile), (SELECT count(*) FROM reward_score), " \
        "(SELECT count(*) FROM ledger_events)"
    expected = run_cli("query", "--format", "csv", counts, env=env, check=True).stdout
    assert run_cli("query", "--format", "csv", counts, env=on_disk, check=True).stdout == expected


def test_a_damaged_data_file_of_the_decoded_log_is_one_line_and_rebuilt_from_the_source(tmp_path: Path) -> None:
    history = _history(tmp_path)
    env = _env(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    counted = run_cli("query", "SELECT count(*) FROM ledger_events", "--format", "csv", env=env, check=True).stdout
    # A query naming a log's relation wrongly is the query's fault, not a missing log.
    _one_line_error(run_cli("query", "SELECT * FROM crm_log_ledgr", env=env), "query not run", "crm_log_ledgr")
    (data,) = (tmp_path / "p.log" / "ledger").glob("*.parquet")
    whole = data.read_bytes()
    # Truncated (met by Arrow, and by DuckDB scanning the log), then gone.
    data.write_bytes(whole[:1000])
    for args in (["project"], ["query", "SELECT count(*) FROM ledger_events"], ["audit", "verify"]):
        _one_line_error(run_cli(*args, env=env), "decoded log", "is damaged", "--from-source")
    data.unlink()
    for args in (["project"], ["query", "SELECT 1"]):
        _one_line_error(run_cli(*args, env=env), "decoded log", "is damaged", str(data.name))
    # The same database by a path through `..` (Arrow names the file by its absolute path).
    (tmp_path / "sub").mkdir()
    roundabout = {**env, "CRM_LEDGER_DB": str(tmp_path / "sub" / ".." / "p.duckdb")}
    _one_line_error(run_cli("project", env=roundabout), "decoded log", "is damaged", str(data.name))
    # The whole folder moved away (or a database copied without it): readers never make it.
    (tmp_path / "p.log").rename(tmp_path / "elsewhere")
    for args in (["query", "SELECT count(*) FROM ledger_events"], ["audit", "verify"], ["audit", "reproduce"]):
        _one_line_error(run_cli(*args, env=env), "decoded log", "is not there", "crm-ledger project")
    assert run_cli("query", "SELECT count(*) FROM reward_score", env=env).returncode == 0
    # Back, with its first commit (the table's schema) emptied or garbled.
    (tmp_path / "elsewhere").rename(tmp_path / "p.log")
    first = tmp_path / "p.log" / "ledger" / "_delta_log" / f"{0:020d}.json"
    for text in ("", "garbage{"):
        first.write_text(text)
        for args in (["project"], ["query", "SELECT count(*) FROM ledger_events"]):
            _one_line_error(run_cli(*args, env=env), "decoded log", "is damaged", "--from-source")
    run_cli("replay", "--metrics", str(DEFAULT_SPEC), "--from-source", env=env, check=True)
    again = run_cli("query", "SELECT count(*) FROM ledger_events", "--format", "csv", env=env, check=True).stdout
    assert again == counted


def test_a_projection_database_named_like_its_own_log_folder_is_refused(tmp_path: Path) -> None:
    """`--db x.log`: the decoded log of x.log is the folder x.log, the database file itself;
    `project` made the database, then failed on "Not a directory"."""
    store = str(tmp_path / "l.sqlite")
    for db in (str(tmp_path / "x.log"), "", str(tmp_path / "..")):
        _one_line_error(run_cli("--db", db, "project", env={"CRM_LEDGER_STORE": store}), "projection database")
    named = {"CRM_LEDGER_STORE": store, "CRM_LEDGER_DB": str(tmp_path / "x.log")}
    _one_line_error(run_cli("query", "SELECT 1", env=named), "x.log beside it")
    assert not (tmp_path / "x.log").exists()


def test_an_argument_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 (a file name from another system) reach Python as lone
    surrogates, which no store or encoder takes: refused before any command runs."""
    name = os.fsdecode(b"a\xffb")
    for args in (["goal", "close", name, "--outcome", "met"], ["customer", "show", name], ["export", "--parquet", name]):
        result = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env={**os.environ, **_env(tmp_path)}, check=False
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: argument") and "is not valid UTF-8" in result.stderr
    assert not any(tmp_path.iterdir())


def test_outputs_never_overwrite_the_ledger_and_are_whole_or_absent(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = _history(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    own = [env["CRM_LEDGER_STORE"], env["CRM_LEDGER_STORE"] + "-wal", env["CRM_LEDGER_DB"], str(tmp_path / "p.log" / "x")]
    for path in own:
        for args in (
            ["query", "SELECT 1", "--format", "csv", "--out", path],
            ["generate", "--customers", "1", "--out", path],
            ["ingest", str(history), "--rejects", path],
        ):
            _one_line_error(run_cli(*args, env=env), "would overwrite the ledger's own files")
    assert run_cli("query", "SELECT count(*) FROM ledger_events", env=env).returncode == 0
    # A write cut short (here by a file-size limit) leaves the previous file as it was.
    keep = tmp_path / "keep.csv"
    keep.write_text("earlier\n")
    big = "SELECT range AS r, repeat('x', 100) AS s FROM range(20000)"
    _one_line_error(_run_limited(["query", big, "--format", "csv", "--out", str(keep)], env, 100_000))
    assert keep.read_text() == "earlier\n" and [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_commands_that_read_the_ledger_refuse_a_store_that_does_not_exist(tmp_path: Path) -> None:
    """A mistyped store path is refused in one line, never created empty and reported on."""
    typo = tmp_path / "typo" / "sub" / "ledger.sqlite"
    env = {"CRM_LEDGER_STORE": str(typo), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    for args in (
        ["customer", "show", "cust-000001"],
        ["statement", "--employee", "emp-0001", "--period", "2025-01"],
        ["period", "status", "2025-01"],
        ["period", "close", "2025-01"],
        ["period", "adjust", "2025-01", "--dry-run"],
        ["goal", "close", "g1", "--outcome", "achieved"],
        ["goal", "revise", "g1", "--target", "1", "--agreed-by", "e1", "--reason", "r"],
        # Its team's members must be in the ledger: an empty one made at a typo never has them.
        [
            *["goal", "set", "g1", "--team", "t1", "--kpi", "csat_pct", "--target", "80"],
            *["--from", "2025-01", "--to", "2025-02", "--agreed-by", "e1", "--at", "2025-01-02"],
        ],
        ["audit", "head"],
        # Those that append the ledger to the decoded log or publish it: an empty ledger made
        # at a typo would have been "projected" (or said to be another ledger than the log's).
        ["project"],
        ["replay", "--metrics", str(DEFAULT_SPEC), "--name", "x"],
        ["relay"],
        # drop reads the ledger beyond the log for closed periods that name the version.
        ["drop", "v_nope"],
    ):
        _one_line_error(run_cli(*args, env=env), "no such ledger store")
    assert not (tmp_path / "typo").exists()
    assert not (tmp_path / "p.duckdb").exists()


def test_commands_on_versions_refuse_a_projection_database_that_does_not_exist(tmp_path: Path) -> None:
    """A mistyped --db was made anew (folders and an empty database) by promote, drop, period
    close and period adjust, which then said 'unknown version' or 'no version is promoted'."""
    store = tmp_path / "l.sqlite"
    app = LedgerApplication(Settings(store=str(store)).eventsourcing_env())
    # January closed (adjust reads the projection for a closed period only), February not.
    closed = {"type": "RewardPeriodClosed", "event_id": str(uuid.uuid4()), "occurred_at": "2025-02-01T00:00:00Z"}
    closed |= {"period": "2025-01", "ledger_position": 0, "version": "v_x", "spec_name": "default"}
    app.record([RecordParser(app.registry, allow_internal=True).parse(closed)], atomic=True)
    app.close()
    typo = tmp_path / "typo" / "p.duckdb"
    env = {"CRM_LEDGER_STORE": str(store), "CRM_LEDGER_DB": str(typo)}
    for args in (["promote", "v_x"], ["drop", "v_x"], ["period", "close", "2025-02"], ["period", "adjust", "2025-01"]):
        _one_line_error(run_cli(*args, env=env), f"{typo}: no projection database yet")
    assert not (tmp_path / "typo").exists()


def test_a_rejects_file_that_cannot_be_written_stops_the_run_before_anything_lands(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = _history(tmp_path)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the rejects file's folder should be")
    _one_line_error(run_cli("ingest", str(history), "--rejects", str(blocked / "r.jsonl"), env=env))
    assert not (tmp_path / "l.sqlite").exists()
    # Without rejects, the file the run opened early is not left behind empty.
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(history.read_text().splitlines()[:20]) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    done = run_cli("ingest", str(clean), "--rejects", str(rejects), env=env)
    assert "rejected 0" in done.stdout and not rejects.exists(), done.stdout


def test_a_full_disk_under_the_rejects_file_leaves_it_as_it_was_and_a_rerun_writes_each_reject_once(
    tmp_path: Path,
) -> None:
    """A full disk cut the rejects file's last line short, the error named no file, and the
    run made again appended all its rejects after the lines the failed run had left: a broken
    line, and the first rejects twice."""
    env = _env(tmp_path)
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=200, employees=6, months=2, seed=4, invalid_rate=0.1), handle)
    disk = tmp_path / "disk"
    disk.mkdir()
    rejects = disk / "rejects.jsonl"
    earlier = '{"record": "an earlier run"}\n'
    rejects.write_text(earlier)
    full = run_cli_on_full_disk(disk, 16_384, "ingest", str(history), "--rejects", str(rejects), env=env)
    _one_line_error(full, "disk full", str(rejects), "run the same command again")
    assert rejects.read_text() == earlier
    done = run_cli("ingest", str(history), "--rejects", str(rejects), env=env)
    assert done.returncode == 1 and "rejected 0" not in done.stdout, (done.stdout, done.stderr)
    refused = int(done.stdout.split("rejected ")[1].split(",")[0])
    lines = rejects.read_text().splitlines()
    assert lines[0] == earlier.strip()
    entries = [json.loads(line)["record"] for line in lines[1:]]
    assert len(entries) == len(set(entries)) == refused > 40


def test_a_full_disk_under_a_separate_key_store_names_the_key_store(tmp_path: Path) -> None:
    """The key store's errors were told as the event store's: "event store l.sqlite: disk
    full" while the event store's disk had room and the key store's had none."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**_env(tmp_path), "CRM_LEDGER_KEY_STORE": str(disk / "keys.sqlite")}
    history = _history(tmp_path)
    full = run_cli_on_full_disk(disk, 0, "ingest", str(history), env=env)
    _one_line_error(full, f"key store {disk / 'keys.sqlite'}", "disk full", "run the same command again")
    assert "event store" not in full.stderr
    run_cli("ingest", str(history), env=env, check=True)
    assert "chain intact" in run_cli("audit", "verify", env=env, check=True).stdout


def test_a_store_on_a_full_disk_is_called_full_when_sqlite_says_disk_i_o_error(tmp_path: Path) -> None:
    """SQLite tells ENOSPC as "disk I/O error" where it grows its shared-memory file (a reader
    too): on a full disk, every command on the store said "the disk refused a write (full,
    a file-size limit, or failing)", though its disk had no room at all."""
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**_env(tmp_path), "CRM_LEDGER_STORE": str(disk / "l.sqlite")}
    run_cli("ingest", str(_history(tmp_path)), env=env, check=True)
    for args in (["audit", "verify", "--source", "ledger"], ["ingest", str(_history(tmp_path))]):
        full = run_cli_on_full_disk(disk, 0, *args, env=env)
        _one_line_error(full, f"event store {disk / 'l.sqlite'}: disk full", "run the same command again")
    assert "chain intact" in run_cli("audit", "verify", "--source", "ledger", env=env, check=True).stdout


def test_a_table_on_the_terminal_shows_the_first_thousand_rows_and_says_so(tmp_path: Path) -> None:
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()
    shown = run_cli("query", "SELECT range AS r FROM range(5000)", env=env)
    assert shown.returncode == 0 and "│ 999 " in shown.stdout and "│ 1000 " not in shown.stdout
    assert "the first 1,000 rows" in shown.stderr
    every = run_cli("query", "SELECT range AS r FROM range(5000)", "--format", "csv", env=env)
    assert len(every.stdout.splitlines()) == 5001 and "first" not in every.stderr


def test_number_options_refuse_nan_and_query_refuses_empty_sql(tmp_path: Path) -> None:
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()
    for args in (
        ["query", "SELECT 1", "--timeout", "nan"],
        ["query", "SELECT 1", "--timeout", "1e300"],  # overflowed the wait's clock: a traceback
        ["diff", "a", "b", "--threshold", "nan"],
        ["generate", "--customers", "1", "--invalid-rate", "nan", "--out", str(tmp_path / "h.jsonl")],
        ["project", "--follow", "--refresh-interval", "nan"],
        ["query", "  "],
        # An empty value (an unset shell variable) is not "no filter" nor "the promoted one".
        ["goal", "list", "--team", ""],
        ["explain", "--employee", "e1", "--period", "2025-01", "--version", " "],
        # Months are ASCII digits, as period commands take them (isdigit() took fullwidth ones).
        ["generate", "--customers", "1", "--start", "\uff12\uff10\uff12\uff15-\uff10\uff12", "--out", str(tmp_path / "g.jsonl")],
        ["explain", "--employee", "e1", "--period", "\uff12\uff10\uff12\uff15-\uff10\uff12"],
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 2 and "Invalid value" in result.stderr and "Traceback" not in result.stderr, args
    # A moment is the option's usage error (it was "field 'as_of'", as if a record's).
    moment = run_cli("replay", "--metrics", str(DEFAULT_SPEC), "--as-of", "garbage", env=env)
    assert moment.returncode == 2 and "Invalid value for '--as-of': not an ISO-8601" in moment.stderr


def test_generate_and_demo_refuse_histories_they_cannot_make(tmp_path: Path) -> None:
    """A history ending past 9998-12 was a traceback (its end no date); more employees than
    join before it starts joined after their first cases; a demo running past its 24 months
    of goals, or into the future, failed half way, its history already ingested."""
    out = str(tmp_path / "h.jsonl")
    for args, phrase in (
        (["generate", "--months", "100000", "--out", out], "100000 months from 2025-01 end in 10358-04, after 9998-12"),
        (["generate", "--start", "9998-12", "--months", "2", "--out", out], "end in 9999-01, after 9998-12"),
        (["generate", "--employees", "43201", "--out", out], "'--employees': 43201 is more than"),
        (["generate", "--customers", "3000001", "--out", out], "'--customers': 3000001 is more than"),
        (["demo", "--dir", str(tmp_path / "d"), "--months", "25"], "25 is not in the range 1<=x<=24"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2 and phrase in result.stderr and "Traceback" not in result.stderr, args
    assert not (tmp_path / "h.jsonl").exists() and not (tmp_path / "d").exists()


def test_service_ports_are_ports_they_can_be_found_on(tmp_path: Path) -> None:
    # Port 0 had `registry up` wait its 120 s for an answer on port 0; 99999 was handed to Java;
    # Kafka's controller listens on port+1.
    for args in (["registry", "up", "--port", "0"], ["registry", "status", "--port", "99999"], ["kafka", "up", "--port", "65535"]):
        result = run_cli(*args, "--data", str(tmp_path / "data"))
        assert result.returncode == 2 and "Invalid value for '--port'" in result.stderr, args
    assert not (tmp_path / "data").exists()


def test_hash_password_without_an_answer_is_a_failure_not_an_interruption() -> None:
    # The end of its input was "aborted", exit 130, as if Ctrl-C had been pressed.
    for given in ("", "a-long-password\n"):  # nothing; no second line for the confirmation
        result = subprocess.run([*CLI, "hash-password"], input=given, capture_output=True, text=True, check=False)
        _one_line_error(result, "the input ended before the prompt was answered")
    both = subprocess.run(
        [*CLI, "hash-password"], input="a-long-password\n" * 2, capture_output=True, text=True, check=False
    )
    assert both.returncode == 0 and both.stdout.startswith("$argon2id$")


def test_publish_to_a_port_that_answers_no_kafka_gives_up_at_the_broker_timeout(tmp_path: Path) -> None:
    # A bootstrap address naming another service (a web server, the registry's port) took the
    # Kafka client's own 30 s whatever CRM_LEDGER_BROKER_TIMEOUT said.
    env = _env(tmp_path)
    run_cli("ingest", str(_history(tmp_path)), env=env, check=True)
    run_cli("project", env=env, check=True)

    class NoKafka(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), NoKafka) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        bootstrap = f"127.0.0.1:{server.server_address[1]}"
        started = time.monotonic()
        result = run_cli("publish", env={**env, "CRM_LEDGER_BOOTSTRAP": bootstrap, "CRM_LEDGER_BROKER_TIMEOUT": "2"})
        took = time.monotonic() - started
        server.shutdown()
    _one_line_error(result, f"Kafka at {bootstrap} did not answer", code=75)
    assert took < 15, took


def test_publish_never_creates_a_missing_projection_database(tmp_path: Path) -> None:
    # It made an empty database at a mistyped --db, then said no version was promoted.
    result = run_cli("--db", str(tmp_path / "typo.duckdb"), "publish", env=_env(tmp_path))
    _one_line_error(result, "typo.duckdb: no projection database yet")
    assert list(tmp_path.iterdir()) == []


def test_a_demo_history_that_would_run_into_the_future_is_refused() -> None:
    from crm_cli.cli import _history_fits

    with click.Context(click.Command("demo")), pytest.raises(click.BadParameter, match=r"after 2026-11 \(this month\)"):
        _history_fits("2025-01", 24, until="2026-11")
    with click.Context(click.Command("demo")):
        _history_fits("2025-01", 23, until="2026-11")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://u:secret@h:99999/x", "(port out of range 0-65535)"),
        ("postgresql://[::1/x", "(invalid IPv6 URL)"),
        ("postgres://u:secret@h:abc/x", "(port could not be cast to integer value as 'abc')"),
    ],
)
def test_a_malformed_store_url_is_one_line_without_its_password(tmp_path: Path, url: str, why: str) -> None:
    history = _history(tmp_path)
    for args in (["--store", url, "audit", "head"], ["ingest", str(history)]):
        result = run_cli(*args, env={**_env(tmp_path), "CRM_LEDGER_STORE": url})
        _one_line_error(result, "the store URL", "is malformed " + why, "fix --store or CRM_LEDGER_STORE")
        assert "secret" not in result.stderr


def test_an_unreachable_postgresql_store_is_a_temporary_failure_after_the_store_timeout(
    tmp_path: Path,
) -> None:
    # Nothing listens on port 1; the connection pool alone would wait its own 30 s.
    url = "postgresql://u:secret@127.0.0.1:1/x"
    env = {**_env(tmp_path), "CRM_LEDGER_STORE_TIMEOUT": "2"}
    started = time.monotonic()
    result = run_cli("--store", url, "audit", "head", env=env)
    elapsed = time.monotonic() - started
    _one_line_error(result, "event store postgresql://u:***@127.0.0.1:1/x is unreachable", code=75)
    assert "after 2.00 sec" in result.stderr
    assert "secret" not in result.stderr
    assert elapsed < 25, elapsed  # generous: the point is not waiting the pool's 30 s


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "1e300", "1e9"])
def test_a_store_timeout_that_is_not_a_positive_number_is_one_line(tmp_path: Path, value: str) -> None:
    env = {**_env(tmp_path), "CRM_LEDGER_STORE_TIMEOUT": value}
    result = run_cli("--store", "postgresql://u:p@127.0.0.1:1/x", "audit", "head", env=env)
    _one_line_error(result, f"CRM_LEDGER_STORE_TIMEOUT={value!r} is not valid")


def test_data_is_shown_as_it_is_never_as_markup_or_terminal_commands(tmp_path: Path) -> None:
    """A value like "[/x]" broke the table (rich read it as markup); an escape sequence in
    data reached the terminal as a command; csv dropped it when not on a terminal."""
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()
    sql = "SELECT '[/x] [bold]b' AS a, chr(27) || ']0;title' || chr(7) AS b"
    shown = run_cli("query", sql, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "[/x] [bold]b" in shown.stdout and "\\x1b]0;title\\x07" in shown.stdout and "\x1b" not in shown.stdout
    exact = run_cli("query", sql, "--format", "csv", env=env)
    assert exact.stdout.splitlines()[1] == "[/x] [bold]b,\x1b]0;title\x07"
    # One statement at a time: DuckDB ran them all and showed only the last one's rows.
    _one_line_error(run_cli("query", "SELECT 1; SELECT 2", env=env), "give one statement")
    assert run_cli("query", "SELECT 'a;b' AS x;", env=env).returncode == 0


def test_query_on_a_terminal_shows_control_characters_and_a_pipe_gets_them_as_they_are(tmp_path: Path) -> None:
    """A column's name reached the terminal's table as it was, and csv went to a terminal as
    it was: an escape sequence in either was obeyed ("\x1b[2J" cleared the screen)."""
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()
    sql = "SELECT chr(27) || ']0;title' || chr(7) AS \"h\x1b[2Jd\""
    for fmt in ("table", "csv", "json"):
        code, seen = run_cli_on_terminal("query", sql, "--format", fmt, env=env)
        assert code == 0, (fmt, seen)
        # The table's own styling is escape sequences: only those of the data must not be there.
        assert b"\x1b]0;" not in seen and b"\x1b[2J" not in seen and b"\x07" not in seen, (fmt, seen)
        if fmt != "json":  # JSON writes them as \u001b, which a terminal does not obey
            assert b"\\x1b]0;title\\x07" in seen and b"h\\x1b[2Jd" in seen, (fmt, seen)
    assert b"\r\r" not in run_cli_on_terminal("query", sql, "--format", "csv", env=env)[1]
    piped = run_cli("query", sql, "--format", "csv", env=env)
    assert piped.stdout.splitlines() == ["h\x1b[2Jd", "\x1b]0;title\x07"]


def test_messages_that_hold_data_are_not_read_as_markup(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = _history(tmp_path)
    odd = tmp_path / "[bold]x[red].jsonl"
    odd.write_text(history.read_text())
    done = run_cli("ingest", str(odd), env=env)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    _one_line_error(run_cli("goal", "close", "[/x]", "--outcome", "achieved", env=env), "[/x]")


def test_an_out_path_that_is_blank_or_a_dash_makes_no_file_of_that_name(tmp_path: Path) -> None:
    """`--out ""` (an unset shell variable) was 'Is a directory (.)' and `--out " "` wrote a
    file named by a space; `--out -` wrote a file named '-' (stdout, as generate takes it);
    the table format dropped --out and wrote nothing, with exit 0."""
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()
    folder = tmp_path / "cwd"
    folder.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # In a folder of its own, to see what lands there; this tree's code, wherever it runs.
        root = str(Path(__file__).resolve().parents[2])
        merged = {**os.environ, **env, "PYTHONPATH": root}
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env=merged, cwd=folder, check=False)

    for blank in ("", "  "):
        for args in (
            ["query", "SELECT 1", "--format", "csv", "--out", blank],
            ["statement", "--employee", "e1", "--period", "2025-01", "--out", blank],
            ["generate", "--customers", "1", "--out", blank],
        ):
            result = run(*args)
            assert result.returncode == 2 and "Invalid value for '--out'" in result.stderr, (args, result.stderr)
    dashed = run("query", "SELECT 42 AS answer", "--format", "csv", "--out", "-")
    assert dashed.returncode == 0 and dashed.stdout == "answer\n42\n", (dashed.stdout, dashed.stderr)
    for args in (
        ["query", "SELECT 1", "--format", "parquet", "--out", "-"],
        ["query", "SELECT 1", "--out", "table.txt"],
    ):
        result = run(*args)
        assert result.returncode == 2 and "--out" in result.stderr and "Traceback" not in result.stderr, args
    assert sorted(p.name for p in folder.iterdir()) == []


def test_an_output_in_a_folder_that_does_not_exist_is_refused_not_made(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = tmp_path / "h.jsonl"
    history.write_text("")
    missing = tmp_path / "typo"
    for args in (
        ["generate", "--customers", "1", "--out", str(missing / "h.jsonl")],
        ["ingest", str(history), "--rejects", str(missing / "r.jsonl")],
        ["export", "--parquet", str(missing / "parquet")],
    ):
        _one_line_error(run_cli(*args, env=env), f"no folder {missing}")
        assert not missing.exists(), args
    assert not (tmp_path / "l.sqlite").exists()


def test_a_store_in_a_folder_that_does_not_exist_is_refused_not_made(tmp_path: Path) -> None:
    """A mistyped --store or --key-store folder made a new, empty ledger or key file there;
    only the default store's folder (.crm-ledger) is made on first use."""
    root = Path(__file__).resolve().parents[2]
    history = tmp_path / "h.jsonl"
    history.write_text("")
    missing = tmp_path / "typo" / "sub"
    mapping = ["--mapping", str(root / "examples/helpdesk-mapping.toml")]
    writers = (
        ["ingest", str(history)],
        ["import", "cfpb", str(root / "tests/data/cfpb_current.csv")],
        ["import", "csv", str(root / "examples/helpdesk-tickets.csv"), *mapping],
    )
    for args in writers:
        _one_line_error(run_cli("--store", str(missing / "ledger.sqlite"), *args, env=_env(tmp_path)), f"no folder {missing}")
        typo_env = {**_env(tmp_path), "CRM_LEDGER_STORE": str(missing / "ledger.sqlite")}
        _one_line_error(run_cli(*args, env=typo_env), f"no folder {missing}")
        _one_line_error(run_cli("--key-store", str(missing / "keys.sqlite"), *args, env=_env(tmp_path)), f"no folder {missing}")
        assert not (tmp_path / "typo").exists(), args
    # A store named in a folder that exists is made, and so is the default store's folder.
    assert run_cli("--store", str(tmp_path / "new.sqlite"), "ingest", str(history), env=_env(tmp_path)).returncode == 0
    assert (tmp_path / "new.sqlite").is_file()
    folder = tmp_path / "cwd"
    folder.mkdir()
    default_env = {k: v for k, v in os.environ.items() if k not in ("CRM_LEDGER_STORE", "CRM_LEDGER_DB")}
    made = subprocess.run(
        [*CLI, "ingest", str(history)], capture_output=True, text=True, env={**default_env, "PYTHONPATH": str(root)}, cwd=folder, check=False
    )
    assert made.returncode == 0, made.stderr
    assert (folder / ".crm-ledger" / "ledger.sqlite").is_file()


def test_a_projection_database_in_a_folder_that_does_not_exist_is_refused_not_made(tmp_path: Path) -> None:
    env = _env(tmp_path)
    history = tmp_path / "h.jsonl"
    history.write_text(_history(tmp_path).read_text().splitlines()[0] + "\n")
    run_cli("ingest", str(history), env=env, check=True)
    missing = tmp_path / "typo" / "sub"
    spec = str(Path(__file__).resolve().parents[2] / "projections/metrics/default.toml")
    for args in (["project"], ["replay", "--metrics", spec]):
        _one_line_error(run_cli("--db", str(missing / "p.duckdb"), *args, env=env), f"no folder {missing}")
        assert not (tmp_path / "typo").exists(), args
    # In a folder that exists, the database (and its log beside it) is made.
    assert run_cli("--db", str(tmp_path / "p.duckdb"), "project", env=env).returncode == 0
    assert (tmp_path / "p.duckdb").is_file()


def test_a_projection_database_that_is_a_data_file_is_refused_not_read_as_one(tmp_path: Path) -> None:
    # DuckDB opens a JSON, CSV or Parquet file given as a database as an empty in-memory
    # one: `project` would report a build that vanished, read-only commands a permission problem.
    env = _env(tmp_path)
    history = tmp_path / "h.jsonl"
    history.write_text(_history(tmp_path).read_text().splitlines()[0] + "\n")
    run_cli("ingest", str(history), env=env, check=True)
    before = history.read_bytes()
    env["CRM_LEDGER_DB"] = str(history)
    for args in (["project"], ["versions"]):
        _one_line_error(run_cli(*args, env=env), f"{history}", "not a DuckDB database")
    assert history.read_bytes() == before


def test_a_duckdb_file_of_another_program_says_no_version_is_promoted(tmp_path: Path) -> None:
    """A DuckDB file without the catalog (another program's, or an empty one) has no promoted
    version: explain and audit reproduce said "Catalog Error: Table with name crm_promoted
    does not exist!", where goal list and export say what to do."""
    import duckdb

    env = _env(tmp_path)
    duckdb.connect(str(tmp_path / "p.duckdb")).close()
    for args in (
        ["explain", "--employee", "emp-0001", "--period", "2025-01"],
        ["audit", "reproduce"],
        ["goal", "list"],
        ["export", "--parquet", str(tmp_path / "out")],
    ):
        result = run_cli(*args, env=env)
        _one_line_error(result, "promoted")
        assert "Catalog Error" not in result.stderr, (args, result.stderr)


def test_a_sqlite_file_that_holds_no_ledger_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """A store path naming another program's SQLite database, or an empty file, had the ledger's
    tables made in it by every command, reading ones too, which then reported on no events
    ('unknown customer', 'not closed')."""
    import sqlite3

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    connection.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    history = _history(tmp_path)
    reading = (
        ["customer", "show", "cust-000001"],
        ["statement", "--employee", "emp-0001", "--period", "2025-01"],
        ["period", "status", "2025-01"],
        ["audit", "verify"],
        ["audit", "head"],
    )
    for store, phrase, commands in (
        (foreign, "not a ledger store", (*reading, ["ingest", str(history)], ["project"])),
        (empty, "holds no ledger", reading),
    ):
        before = store.read_bytes()
        env = {"CRM_LEDGER_STORE": str(store), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
        for args in commands:
            _one_line_error(run_cli(*args, env=env), str(store), phrase)
        assert store.read_bytes() == before, store
    # A new store is still made by ingest, in a new file or an empty one.
    for store in (tmp_path / "new.sqlite", empty):
        env = {"CRM_LEDGER_STORE": str(store), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
        assert "accepted" in run_cli("ingest", str(history), env=env, check=True).stdout
    # The same for a separate key store: another program's database is not made one.
    before = foreign.read_bytes()
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / "keyed.sqlite"),
        "CRM_LEDGER_KEY_STORE": str(foreign),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
    }
    _one_line_error(run_cli("ingest", str(history), env=env), str(foreign), "not a key store")
    assert foreign.read_bytes() == before


def test_a_dash_where_stdout_cannot_be_written_is_refused_not_made_a_file(tmp_path: Path) -> None:
    """'-' is stdout wherever an output is named (generate, query, statement): export made a
    folder named '-' and ingest a rejects file named '-' in the current folder."""
    env = _env(tmp_path)
    ProjectionDB(tmp_path / "p.duckdb").close()
    history = tmp_path / "h.jsonl"
    history.write_text('{"type": "Bogus"}\n')
    folder = tmp_path / "cwd"
    folder.mkdir()
    root = str(Path(__file__).resolve().parents[2])
    for args, option in (
        (["export", "--parquet", "-"], "'--parquet'"),
        (["ingest", str(history), "--rejects", "-"], "'--rejects'"),
    ):
        result = subprocess.run(
            [*CLI, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env, "PYTHONPATH": root},
            cwd=folder,
            check=False,
        )
        assert result.returncode == 2 and f"Invalid value for {option}" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == []
    assert not (tmp_path / "l.sqlite").exists()


def test_a_projection_database_that_is_a_folder_is_named_so_not_called_damaged(tmp_path: Path) -> None:
    """`--db .crm-ledger` (the folder for the file in it) was 'damaged or truncated: move it
    away and run project to rebuild it': advice that would have moved the ledger's folder."""
    env = _env(tmp_path)
    run_cli("ingest", str(_history(tmp_path)), env=env, check=True)
    env["CRM_LEDGER_DB"] = str(tmp_path)
    for args in (
        ["project"],
        ["versions"],
        ["goal", "list"],
        ["explain", "--employee", "emp-0001", "--period", "2025-01"],
        ["export", "--parquet", str(tmp_path / "out")],
        ["period", "close", "2025-01"],
    ):
        result = run_cli(*args, env=env)
        _one_line_error(result, str(tmp_path), "is a folder")
        assert "damaged" not in result.stderr and "move it away" not in result.stderr, (args, result.stderr)
    assert (tmp_path / "l.sqlite").is_file()


def test_an_export_that_fails_part_way_replaces_no_file_of_the_earlier_one(tmp_path: Path) -> None:
    """An export that failed at its last read model (a damaged decoded log) had replaced the
    files before it: the folder held this export's files beside the earlier one's, a set
    from two moments, and a new folder a part of an export."""
    env = _env(tmp_path)
    run_cli("ingest", str(_history(tmp_path)), env=env, check=True)
    run_cli("project", env=env, check=True)
    folder = tmp_path / "export"
    run_cli("export", "--parquet", str(folder), env=env, check=True)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "reward_score.parquet" in before and "ledger_events.parquet" in before
    # Newer events, then a data file of the decoded log cut short (ledger_events reads it).
    later = tmp_path / "later.jsonl"
    later.write_text(
        '{"type": "ComplimentReceived", "event_id": "0b9d2434-e465-4150-bd9c-66b3ad3c0003", '
        '"occurred_at": "2025-01-10T00:00:00Z", "employee_id": "emp-0001", "channel": "email", '
        '"customer_id": "cust-000001"}\n'
    )
    run_cli("ingest", str(later), env=env, check=True)
    run_cli("project", env=env, check=True)
    for data in (tmp_path / "p.log").rglob("*.parquet"):
        data.write_bytes(data.read_bytes()[:100])
    fresh = tmp_path / "fresh"
    for target in (folder, fresh):
        _one_line_error(run_cli("export", "--parquet", str(target), env=env), "decoded log")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not fresh.exists() or list(fresh.iterdir()) == []


def test_a_store_path_naming_another_kind_of_file_is_named_so_not_called_damaged(tmp_path: Path) -> None:
    """`--store history.jsonl` or the projection database's path (swapped with --db) was 'event
    store is damaged (file is not a database): restore it from a backup'."""
    env = _env(tmp_path)
    history = _history(tmp_path)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    for other in (history, tmp_path / "p.duckdb"):
        before = other.read_bytes()
        env_other = {**env, "CRM_LEDGER_STORE": str(other)}
        for args in (["customer", "show", "cust-000001"], ["period", "status", "2025-01"], ["ingest", str(history)]):
            result = run_cli(*args, env=env_other)
            _one_line_error(result, str(other), "not a SQLite database file")
            assert "damaged" not in result.stderr and "backup" not in result.stderr, (args, result.stderr)
        assert other.read_bytes() == before
    # A ledger cut short is still told as damaged.
    store = tmp_path / "l.sqlite"
    cut = tmp_path / "cut.sqlite"
    cut.write_bytes(store.read_bytes()[:8192])
    _one_line_error(run_cli("customer", "show", "cust-000001", env={**env, "CRM_LEDGER_STORE": str(cut)}), "damaged")


def test_looking_at_a_projection_database_keeps_the_locks_of_its_open_connections(tmp_path: Path) -> None:
    """Every connection first read the file's header to refuse a data file given as a database:
    a plain open and close of the file drops the POSIX locks this process's DuckDB connections
    hold on it, so a second connection in one process (the web pages' requests) let another
    process open the database for writing under the first."""
    import sys

    from projections.store import connect

    path = tmp_path / "p.duckdb"
    ProjectionDB(path).close()
    held = connect(path, read_only=True)
    try:
        connect(path, read_only=True).close()
        other = subprocess.run(
            [sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).close()"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert other.returncode != 0 and "lock" in other.stderr, other.stderr
    finally:
        held.close()


def test_ctrl_c_while_generating_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    """A Ctrl-C raised by Python in the middle of the generator's work could land in a
    finalizer, where Python drops it: once in ~140 tries the run went on to its end, exit 0.
    Taken as a flag and acted on between blocks of lines, it ends the run every time."""
    out = tmp_path / "h.jsonl"
    running = subprocess.Popen(
        [*CLI, "generate", "--customers", "50000", "--out", str(out)], stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: any(tmp_path.glob(".h.jsonl.partial-*")), what="the generator to write")
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode == 130 and stderr.strip() == "interrupted", (running.returncode, stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_write_killed_with_kill_9_leaves_nothing_once_written_again(tmp_path: Path) -> None:
    """kill -9 cleans nothing up: the hidden file of the write stayed beside the target for
    good, as large as the write had got. The next write of that file removes it; the one of a
    write still running (here: this process's) is left alone."""
    out = tmp_path / "h.jsonl"
    running = subprocess.Popen([*CLI, "generate", "--customers", "50000", "--out", str(out)], text=True)
    wait_for(lambda: any(tmp_path.glob(".h.jsonl.partial-*")), what="the generator to write")
    kill_hard(running)
    host = socket.gethostname()
    assert [p.name for p in tmp_path.iterdir()] == [f".h.jsonl.partial-{host}-{running.pid}"]
    running_write = tmp_path / f".h.jsonl.partial-{host}-{os.getpid()}"
    running_write.write_text("")
    # Another machine's write, in a shared folder: its process ids are not this machine's.
    other_machine = tmp_path / f".h.jsonl.partial-elsewhere-{running.pid}"
    other_machine.write_text("")
    run_cli("generate", "--customers", "3", "--out", str(out), check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, running_write.name, other_machine.name])


def test_the_generator_stops_between_blocks_of_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "h.jsonl"
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) == 2

    with out.open("w") as handle, pytest.raises(KeyboardInterrupt):
        write_history(GeneratorConfig(2000, 10, 2, 1), handle, should_stop=stop)
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * 4096 and all(json.loads(line) for line in lines)
