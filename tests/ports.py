"""Free local ports for the servers the tests start (a broker and its controller, a registry,
PostgreSQL, the web pages).

Picked below the ports the system hands out to outgoing connections: a port picked among
those (bind to port 0) was now and then taken by another test's client connection before the
server bound it ("Address already in use"), most often the broker's controller port.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_start() -> int:
    """The first port the system gives outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> int:
    """The first of `count` neighbouring free ports."""
    chooser = random.Random()
    high = max(10_000 + count, _ephemeral_start() - count)
    for _ in range(200):
        port = chooser.randrange(10_000, high)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, probe in enumerate(sockets):
                probe.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return port
    raise RuntimeError(f"no {count} free neighbouring ports")


def free_port() -> int:
    """A free port for one server."""
    return free_ports(1)


def free_port_pair() -> int:
    """The first of two free neighbouring ports (a broker and its controller)."""
    return free_ports(2)
