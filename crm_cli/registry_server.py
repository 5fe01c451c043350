"""A local Confluent-compatible schema registry (Apicurio Registry) run from Maven Central.

The prebuilt distribution comes from `scripts/fetch-registry.sh`; this module starts it as a
child process that outlives the CLI call, on loopback, with its H2 database in a file of the
data folder (so `registry down` and `registry up` keep the schemas), waits until its API
answers, and stops it again. Clients use `url`, the Confluent-compatible API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crm_cli.background import read_pid, run_fetch_script, stop_process
from crm_cli.errors import RegistryServerError
from crm_ledger.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VERSION = "3.0.9"
FETCH_SCRIPT = PROJECT_ROOT / "scripts" / "fetch-registry.sh"
DEFAULT_DIST = PROJECT_ROOT / ".registry" / "dist"
CCOMPAT_PATH = "/apis/ccompat/v7"



@dataclass(frozen=True)
class RegistryServerConfig:
    """Where the registry keeps its database, pid and log, and its loopback port."""

    data_dir: Path
    port: int = 8081
    dist_dir: Path = DEFAULT_DIST
    heap: str = "256m"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what producers, consumers and `schemas push` use."""
        return self.root_url + CCOMPAT_PATH

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "registry.log"

    @property
    def runner_jar(self) -> Path:
        return self.dist_dir / f"apicurio-registry-app-{VERSION}-runner.jar"


def fetch_distribution(config: RegistryServerConfig) -> None:
    """Fetch the registry from Maven Central with the project's script (needs Maven)."""
    if config.runner_jar.exists():
        return
    if config.dist_dir != DEFAULT_DIST or not FETCH_SCRIPT.exists():
        raise ConfigurationError(
            f"the schema registry is missing in {config.dist_dir}: run {FETCH_SCRIPT.name}"
        )
    run_fetch_script(FETCH_SCRIPT, "the schema registry")


def _marker(config: RegistryServerConfig) -> str:
    """What the command line of the registry started for `config` holds: its database's place."""
    return f"-Dapicurio.datasource.url=jdbc:h2:file:{config.data_dir.resolve() / 'registry'}"


def _read_pid(config: RegistryServerConfig) -> int | None:
    return read_pid(config.pid_file, _marker(config))


def is_running(config: RegistryServerConfig) -> bool:
    """True when the registry process recorded in the data folder is alive."""
    return _read_pid(config) is not None


def start(config: RegistryServerConfig, timeout_s: float = 120.0) -> None:
    """Start the registry in the background and wait until its API answers."""
    if is_running(config):
        wait_until_ready(config.root_url, timeout_s)
        return
    java = shutil.which("java")
    if java is None:
        raise ConfigurationError("java was not found on PATH: the schema registry needs Java 17 or newer")
    fetch_distribution(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    log = config.log_file.open("ab")
    process = subprocess.Popen(
        [
            java,
            f"-Xmx{config.heap}",
            # A short-lived development server: the C1 compiler and serial GC start it faster.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={config.port}",
            _marker(config),
            "-Dquarkus.log.console.color=false",
            "-jar",
            str(config.runner_jar),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=config.data_dir,
        start_new_session=True,
    )
    config.pid_file.write_text(str(process.pid))
    try:
        wait_until_ready(config.root_url, timeout_s, process=process)
    except (RegistryServerError, KeyboardInterrupt):
        # Ctrl-C while it starts stops it too: it went on starting in the background, the
        # command having said "interrupted".
        stop(config)
        raise


def system_info(root_url: str, timeout_s: float = 2.0) -> dict[str, str]:
    """The registry's name and version (raises OSError while it does not answer)."""
    with urllib.request.urlopen(root_url + "/apis/registry/v3/system/info", timeout=timeout_s) as reply:
        info: dict[str, str] = json.loads(reply.read())
    return info


def wait_until_ready(root_url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll the registry's API until it answers (never a blind sleep)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RegistryServerError(
                f"the schema registry exited with code {process.returncode} while starting "
                "(is the port in use? see registry.log in the data folder)"
            )
        try:
            system_info(root_url)
            return
        except (OSError, urllib.error.URLError, ValueError) as error:
            last_error = error
            time.sleep(0.1)
    raise RegistryServerError(
        f"the schema registry at {root_url} did not answer within {timeout_s:.0f}s: {last_error}"
    )


def stop(config: RegistryServerConfig, timeout_s: float = 30.0) -> bool:
    """Stop the registry (SIGTERM, then SIGKILL); returns False when none was running."""
    return stop_process(config.pid_file, _marker(config), timeout_s)
