"""A throwaway PostgreSQL server for the test session (the machine's own binaries).

PostgreSQL refuses to run as root, so when the tests run as root the cluster is
initialised and started as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port


@dataclass(frozen=True)
class PostgresServer:
    data: Path
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def _as_owner(command: list[str], owner: str | None, prefix: Sequence[str] = ()) -> list[str]:
    if owner is None:
        return [*prefix, *command]
    return [*prefix, "runuser", "-u", owner, "--", *command]


def owner_ids() -> tuple[int, int] | None:
    """The uid and gid the server runs as (the `postgres` user under root); None: no such user."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def start(base: Path, prefix: Sequence[str] = ()) -> tuple[PostgresServer, subprocess.Popen[bytes]] | None:
    """Initialise and start a server on a free loopback port; None when PostgreSQL is absent.

    `prefix` runs initdb and the server through another command (`nsenter`, for a server
    whose folder is a disk mounted in a namespace of its own)."""
    initdb = _binary("initdb")
    if initdb is None or _binary("postgres") is None:
        return None
    owner = None
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            return None
        owner = user = entry.pw_name
        base.mkdir(parents=True, exist_ok=True)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        os.chmod(base, 0o700)
    data = base / "data"
    subprocess.run(
        _as_owner([initdb, "-D", str(data), "-A", "trust", "-U", user, "--no-sync"], owner, prefix),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(data, free_port(), user)
    process = serve(server, prefix)
    return (server, process) if process is not None else None


def serve(server: PostgresServer, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes] | None:
    """Start the server on its initialised folder (again, after it stopped) and wait until it
    takes connections; None when it did not come up."""
    postgres = _binary("postgres")
    assert postgres is not None
    owner = server.user if os.getuid() == 0 else None
    process = subprocess.Popen(
        _as_owner(
            [
                postgres,
                "-D",
                str(server.data),
                "-p",
                str(server.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(server.data.parent),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            owner,
            prefix,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                break
        except OSError:
            if process.poll() is not None:
                return None
            time.sleep(0.1)
    import psycopg

    while time.monotonic() < deadline:
        try:
            psycopg.connect(server.url("postgres"), connect_timeout=2).close()
            return process
        except psycopg.OperationalError:
            time.sleep(0.1)
    process.terminate()
    return None


def create_database(server: PostgresServer, name: str) -> str:
    import psycopg

    with psycopg.connect(server.url("postgres"), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)
