"""A local single-node Apache Kafka broker (KRaft) run from Apache's own jars.

The jars come from Maven Central through `scripts/fetch-kafka.sh`; this module formats the
storage, starts `kafka.Kafka` as a child process that outlives the CLI call, waits until
the broker answers metadata requests, and stops it again.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from crm_cli.background import first_error, read_pid, run_fetch_script, stop_process
from crm_cli.disk_room import nearly_full
from crm_cli.errors import BrokerError
from crm_ledger.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker keeps its data and which loopback ports it listens on."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    lib_dir: Path = PROJECT_ROOT / ".kafka" / "lib"
    heap: str = "512m"
    #: More log folders besides `data_dir/logs` (Kafka's JBOD: one folder per disk). Kafka
    #: spreads partitions over them and, when one fails (its disk full, say), takes only that
    #: one offline and stays up; `data_dir/logs` comes first, so it keeps the cluster metadata,
    #: without which the broker stops. Given from the first start: the storage is formatted
    #: once, and a folder added later is not.
    extra_log_dirs: tuple[Path, ...] = ()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"


def server_properties(config: BrokerConfig) -> str:
    """The broker's configuration: one node acting as broker and controller."""
    logs = ",".join(str(folder) for folder in (config.data_dir / "logs", *config.extra_log_dirs))
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{config.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{config.port},CONTROLLER://127.0.0.1:{config.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{config.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={logs}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=3",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=-1",
            "",
        ]
    )


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ConfigurationError("java was not found on PATH: the Kafka broker needs Java 17 or newer")
    return java


FETCH_SCRIPT = PROJECT_ROOT / "scripts" / "fetch-kafka.sh"


def _classpath(config: BrokerConfig) -> str:
    if not any(config.lib_dir.glob("kafka_2.13-*.jar")):
        fetch_jars(config)
    return str(config.lib_dir / "*")


def fetch_jars(config: BrokerConfig) -> None:
    """Fetch Apache Kafka's jars from Maven Central with the project's script (needs Maven)."""
    if config.lib_dir != PROJECT_ROOT / ".kafka" / "lib" or not FETCH_SCRIPT.exists():
        raise ConfigurationError(f"Kafka jars are missing in {config.lib_dir}: run scripts/fetch-kafka.sh")
    run_fetch_script(FETCH_SCRIPT, "the Kafka jars")


def _read_pid(config: BrokerConfig) -> int | None:
    # The broker's command line ends with its settings file, which is in its data folder.
    return read_pid(config.pid_file, str(config.properties_file))


def is_running(config: BrokerConfig) -> bool:
    """True when the broker process recorded in the data folder is alive."""
    return _read_pid(config) is not None


def _cluster_id() -> str:
    """A random KRaft cluster id, never starting with '-' (Kafka's own rule: it would read as an option)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def format_storage(config: BrokerConfig) -> None:
    """Write server.properties and format the KRaft storage once (idempotent)."""
    java = _require_java()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.properties_file.write_text(server_properties(config))
    if (config.data_dir / "logs" / "meta.properties").exists():
        return
    cluster_id = _cluster_id()
    result = subprocess.run(
        [
            java,
            "-cp",
            _classpath(config),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id,
            "-c",
            str(config.properties_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        verdict = first_error(result.stderr + "\n" + result.stdout)
        raise BrokerError(f"formatting Kafka storage failed: {verdict}")


def start(config: BrokerConfig, timeout_s: float = 90.0) -> None:
    """Start the broker in the background and wait until it answers metadata requests."""
    if is_running(config):
        wait_until_ready(config.bootstrap, timeout_s)
        return
    java = _require_java()
    format_storage(config)
    log = config.log_file.open("ab")
    process = subprocess.Popen(
        [
            java,
            f"-Xmx{config.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={PROJECT_ROOT / 'scripts' / 'kafka-log4j2.properties'}",
            "-cp",
            _classpath(config),
            "kafka.Kafka",
            str(config.properties_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    config.pid_file.write_text(str(process.pid))
    try:
        wait_until_ready(config.bootstrap, timeout_s, process=process)
    except (BrokerError, KeyboardInterrupt) as error:
        # Ctrl-C while it starts stops it too: it went on starting in the background, the
        # command having said "interrupted".
        stop(config)
        if isinstance(error, BrokerError) and process.poll() is not None:
            raise BrokerError(f"{error}: {why_it_exited(config)}") from error
        raise


def why_it_exited(config: BrokerConfig) -> str:
    """What to do about a broker that exited while starting. A full log folder is named: the
    broker's own log then shows only a fault in reading its memory-mapped index files."""
    logs = config.data_dir / "logs"
    if nearly_full(logs):
        return f"its log folder {logs} is full: free some space there, then run the same command again"
    return f"see its log {config.log_file}"


def wait_until_ready(
    bootstrap: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll the broker with metadata requests until it answers (never a blind sleep)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the Kafka broker exited with code {process.returncode} while starting")
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = error
    raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout_s:.0f}s: {last_error}")


def stop(config: BrokerConfig, timeout_s: float = 30.0) -> bool:
    """Stop the broker (SIGTERM, then SIGKILL); returns False when none was running."""
    return stop_process(config.pid_file, str(config.properties_file), timeout_s)
