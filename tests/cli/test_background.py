"""The development services' pid files: only the process a folder's `up` started is theirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crm_cli import broker, registry_server
from crm_cli.background import first_error, run_fetch_script
from crm_ledger.errors import ConfigurationError
from tests.helpers import wait_for


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="no /proc to read command lines from")
def test_a_stale_pid_file_never_stops_the_process_that_now_has_its_pid(tmp_path: Path) -> None:
    # After a crash or a restart the recorded pid goes to some other process: `down` sent it
    # SIGTERM (then SIGKILL), and `status` said the service was running.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        registry = registry_server.RegistryServerConfig(data_dir=tmp_path / "registry")
        kafka = broker.BrokerConfig(data_dir=tmp_path / "kafka", port=19_999, controller_port=20_000)
        for config in (registry, kafka):
            config.data_dir.mkdir()
            config.pid_file.write_text(str(other.pid))
        assert not registry_server.is_running(registry) and not registry_server.stop(registry, timeout_s=1)
        assert not broker.is_running(kafka) and not broker.stop(kafka, timeout_s=1)
        assert other.poll() is None  # still running, untouched
        assert not registry.pid_file.exists() and not kafka.pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_failed_fetch_is_one_line_naming_why(tmp_path: Path) -> None:
    # It was "fetching ... failed:" and the last 2,000 characters of the script's output.
    script = tmp_path / "fetch.sh"
    script.write_text(
        "echo 'fetching the thing ...' >&2\n"
        "echo '[ERROR] Failed to execute goal: Could not resolve io.example:thing:1.0'\n"
        "echo '[ERROR] -> [Help 1]'\n"
        "exit 1\n"
    )
    with pytest.raises(ConfigurationError) as caught:
        run_fetch_script(script, "the thing")
    assert str(caught.value) == (
        "fetching the thing with fetch.sh failed: [ERROR] Failed to execute goal: Could not resolve io.example:thing:1.0"
    )
    assert first_error("") == "it said nothing" and first_error("a\nb\n") == "b"


def test_ctrl_c_while_a_service_starts_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It went on starting in the background, the command having said "interrupted".
    java = tmp_path / "java"
    java.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    java.chmod(0o755)
    monkeypatch.setattr(registry_server.shutil, "which", lambda _name: str(java))
    config = registry_server.RegistryServerConfig(data_dir=tmp_path / "data", port=19_998, dist_dir=tmp_path)
    config.runner_jar.write_text("")

    def interrupted(*_args: object, **_kwargs: object) -> None:
        # Started, and found by its pid file once it runs its own command line (right after
        # the fork, it still shows this process's).
        wait_for(lambda: registry_server.is_running(config), 10.0, "the started service")
        raise KeyboardInterrupt

    monkeypatch.setattr(registry_server, "wait_until_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry_server.start(config)
    assert not registry_server.is_running(config) and not config.pid_file.exists()
