"""The entry point: Ctrl-C while the command line is still being imported is one line, exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from crm_cli.__main__ import run
from projections.store import ProjectionDB
from tests.helpers import CLI


@pytest.fixture(autouse=True)
def _sigint_handler_kept() -> Iterator[None]:
    """`run` ends by ignoring Ctrl-C (its command is done): in this process it must not stay so,
    or every command the later tests start would inherit an ignored SIGINT."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


class InterruptedImport:
    """A module finder that stands for Ctrl-C arriving while crm_cli.cli is imported.

    The moment cannot be hit reliably with a real signal (the import takes a fraction of a
    second, less on a quiet machine), so the interruption is raised where it would land.
    """

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "crm_cli.cli":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "crm_cli.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(), *sys.meta_path])
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_the_entry_point_runs_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["crm-ledger", "--help"])
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 0
    assert "Usage: crm-ledger" in capsys.readouterr().out


def _read_a_little_and_go_away(command: list[str], **popen: Any) -> None:
    """Run `command` as `... | head` would: read 100 bytes, close the pipe; the command ends
    with 141 and no error line (what the reader read is all it wanted)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    assert process.stdout is not None
    process.stdout.read(100)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr
    assert stderr == b""


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    _read_a_little_and_go_away([*CLI, "generate", "--customers", "3000", "--out", "-"], cwd=tmp_path)


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_reader_that_goes_away_from_one_large_write_ends_the_command_with_141(
    tmp_path: Path, unbuffered: str
) -> None:
    """query writes its csv in one piece. Under PYTHONUNBUFFERED (python -u, as containers
    often set) stdout wrote straight to the pipe: the write the reader cut short returned
    fewer bytes, which Python's text layer dropped without an error, so `query ... | head`
    ended 0, the rest of its output silently gone."""
    db = tmp_path / "p.duckdb"
    ProjectionDB(db).close()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env |= {"CRM_LEDGER_DB": str(db), **({"PYTHONUNBUFFERED": unbuffered} if unbuffered else {})}
    _read_a_little_and_go_away([*CLI, "query", "SELECT * FROM range(300000)", "--format", "csv"], env=env)


def test_a_ctrl_c_while_heavy_modules_import_is_raised_once_they_are_loaded() -> None:
    """Raised inside an extension module's initialisation, a KeyboardInterrupt was swallowed
    there (the command ran on), aborted the process (DuckDB's), or made the interpreter end by
    the signal: during the block it is only held."""
    from crm_cli.runtime import interrupt_after

    before = signal.getsignal(signal.SIGINT)
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), interrupt_after():
        os.kill(os.getpid(), signal.SIGINT)
        reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGINT) is before
    with interrupt_after():
        pass  # nothing held: nothing raised


def test_a_closed_standard_output_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # Python makes a stream the process was started without None: the command line's set-up
    # (`sys.stdout.isatty()`) failed on it with a traceback, whatever the command.
    def closed(stream: int) -> Any:
        return lambda: os.close(stream)

    shown = subprocess.run(
        [*CLI, "generate", "--customers", "1", "--out", "-"], preexec_fn=closed(1), capture_output=False,
        stderr=subprocess.PIPE, text=True, check=False,
    )
    assert shown.returncode == 1 and shown.stderr == "error: standard output is closed\n", shown.stderr
    # Written to a file, a command needs no standard output; nor one to tell it anything.
    out = tmp_path / "h.jsonl"
    for stream in (1, 2):
        quiet = subprocess.run(
            [*CLI, "generate", "--customers", "1", "--out", str(out)], preexec_fn=closed(stream), check=False
        )
        assert quiet.returncode == 0 and out.stat().st_size > 0, stream
