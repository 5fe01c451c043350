"""The entry point: Ctrl-C while the command line is still being imported is one line, exit 130."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

from crm_cli.__main__ import run


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
