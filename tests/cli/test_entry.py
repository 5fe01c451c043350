"""The entry point: Ctrl-C while the command line is still being imported is one line, exit 130."""

from __future__ import annotations

import contextlib
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
from importers.generator import GeneratorConfig, write_history
from ledger.ingest import PARALLEL_PARSE_BYTES
from projections.store import ProjectionDB
from tests.helpers import CLI, run_cli, stored_rows, wait_for


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


#: Installed as the started command's sitecustomize: a real Ctrl-C, sent to itself at the
#: moment the named module is looked up (a timed signal from outside cannot hit it reliably).
_CTRL_C_AT_AN_IMPORT = '''
import os, signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["CTRL_C_AT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, os.environ.get("CTRL_C_SIGNAL", "SIGINT")))
        return None

sys.meta_path.insert(0, CtrlC())
'''


def _started_with_ctrl_c_at(
    tmp_path: Path,
    module: str,
    entry: list[str],
    args: Sequence[str] = ("generate", "--customers", "3", "--out", os.devnull),
    sent: str = "SIGINT",
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(_CTRL_C_AT_AN_IMPORT, encoding="utf-8")
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "CTRL_C_AT": module, "CTRL_C_SIGNAL": sent}
    command = [*entry, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize(
    "module",
    [
        "crm_cli.__main__",  # runpy looking up the entry point, right after the package
        "crm_cli.exit_codes",  # the entry point's own first imports
        "crm_cli.runtime",
        "click",  # the command line's heavy imports, under the entry point's guard
        "importers.generator",  # the command's own import, once main handles Ctrl-C itself
    ],
)
def test_ctrl_c_at_any_import_of_the_start_is_one_line_and_exit_130(tmp_path: Path, module: str) -> None:
    """Between the package's import and the entry point's guard, Ctrl-C was a traceback of
    whichever module was being imported (exit 1, or -2: the interpreter ended by the signal)."""
    started = _started_with_ctrl_c_at(tmp_path, module, CLI)
    assert (started.returncode, started.stderr) == (130, "interrupted\n")


@pytest.mark.parametrize("sent", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", [["ingest"], ["import", "cfpb"]])
def test_ctrl_c_while_a_load_imports_its_modules_stops_it(tmp_path: Path, command: list[str], sent: str) -> None:
    """A Ctrl-C (or a SIGTERM, taken as one) while `ingest` or `import` loaded its modules
    (pandas, which a library tries to import and gives up on whatever fails) was lost: the
    run went on to its end."""
    store = tmp_path / "l.sqlite"
    source = Path(__file__).parents[1] / "data" / "cfpb_current.csv"
    if command == ["ingest"]:
        source = tmp_path / "h.jsonl"
        with source.open("w") as handle:
            write_history(GeneratorConfig(customers=3, employees=2, months=1, seed=4), handle)
    args = ["--store", str(store), *command, "--rejects", str(tmp_path / "rejects.jsonl"), str(source)]
    started = _started_with_ctrl_c_at(tmp_path, "pandas", CLI, args, sent)
    assert (started.returncode, started.stderr) == (130, "interrupted\n")
    assert stored_rows(store) == 0


def test_ctrl_c_while_the_script_starts_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """The `crm-ledger` script (as the installer writes it) imports the entry point itself."""
    script = tmp_path / "bin" / "crm-ledger"
    script.parent.mkdir()
    script.write_text(
        "import re\nimport sys\nfrom crm_cli.__main__ import run\nif __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    sys.exit(run())\n",
        encoding="utf-8",
    )
    started = _started_with_ctrl_c_at(tmp_path, "crm_cli.runtime", [sys.executable, str(script)])
    assert (started.returncode, started.stderr) == (130, "interrupted\n")


def test_importing_the_package_elsewhere_leaves_ctrl_c_alone() -> None:
    """Only the command's own start quiets Ctrl-C: a program importing the package keeps
    Python's KeyboardInterrupt."""
    shown = subprocess.run(
        [sys.executable, "-c", "import signal, crm_cli.cli; print(signal.getsignal(signal.SIGINT).__name__)"],
        capture_output=True, text=True, check=True,
    )
    assert shown.stdout.strip() == "default_int_handler"


def _forked_children(pid: int) -> list[int]:
    """The command's children forked without a new program (parse workers, not the writing
    process or multiprocessing's resource tracker)."""
    own = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for child in map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{child}/cmdline").read_bytes() == own:
                found.append(child)
    return found


def test_sigterm_while_ingest_parses_in_workers_is_a_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM (`kill`, a service manager) ends a command as Ctrl-C does: one line, exit 130,
    and the run's workers stop without a traceback each; the same ingest then lands the rest."""
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:  # past PARALLEL_PARSE_BYTES: parsed by forked workers
        records = write_history(GeneratorConfig(customers=2500, employees=8, months=6, seed=4), handle)
    assert history.stat().st_size > PARALLEL_PARSE_BYTES
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    args = ["ingest", "--rejects", str(tmp_path / "rejects.jsonl"), str(history)]
    running = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    wait_for(lambda: len(_forked_children(running.pid)) >= 2 or running.poll() is not None, what="the workers")
    running.send_signal(signal.SIGTERM)
    _, stderr = running.communicate(timeout=60)
    if running.returncode == 0:
        # Known and rare (seen in one clean run of the suite of four): the interrupt, raised as
        # KeyboardInterrupt, landed in a finalizer, where Python drops it ("Exception ignored
        # in"); the run then went on to its end, and every record landed once. Only a stop flag
        # checked between batches (as `generate` has) would close this.
        assert "Exception ignored" in stderr, stderr
        assert stored_rows(tmp_path / "l.sqlite") == records
        return
    assert (running.returncode, stderr) == (130, "interrupted\n")
    assert stored_rows(tmp_path / "l.sqlite") < records
    run_cli(*args, env=env, check=True)
    assert stored_rows(tmp_path / "l.sqlite") == records
    assert run_cli("audit", "verify", env=env).returncode == 0


@pytest.mark.parametrize("command", [["versions"], ["audit", "head"]])
def test_ctrl_c_while_a_reading_command_imports_its_modules_stops_it(tmp_path: Path, command: list[str]) -> None:
    """The same for the commands that read: a Ctrl-C while they loaded pyarrow was lost there
    (the command ran to its end)."""
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=3, employees=2, months=1, seed=4), handle)
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    stores = ["--store", env["CRM_LEDGER_STORE"], "--db", env["CRM_LEDGER_DB"]]
    started = _started_with_ctrl_c_at(tmp_path, "pandas", CLI, [*stores, *command])
    assert (started.returncode, started.stderr) == (130, "interrupted\n")


def test_workers_end_with_an_ingest_killed_hard_and_print_nothing(tmp_path: Path) -> None:
    """kill -9 of the command left its parse workers writing results to a closed pipe, each
    printing a traceback on the terminal; the kernel now ends them with their parent."""
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:  # past PARALLEL_PARSE_BYTES: parsed by forked workers
        write_history(GeneratorConfig(customers=2500, employees=8, months=6, seed=4), handle)
    env = {**os.environ, "CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    running = subprocess.Popen(
        [*CLI, "ingest", "--rejects", str(tmp_path / "r.jsonl"), str(history)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    wait_for(lambda: len(_forked_children(running.pid)) >= 2 or running.poll() is not None, what="the workers")
    workers = _forked_children(running.pid)
    running.kill()
    _, stderr = running.communicate(timeout=60)  # returns once every holder of the pipe is gone
    assert "Traceback" not in stderr
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "the workers' end")
