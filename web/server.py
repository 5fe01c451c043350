"""`crm-ledger serve`: run the web application with uvicorn until Ctrl-C."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from web.app import create_app
from web.data import check_database
from web.errors import WebError
from web.users import Users

#: Connections waiting to be accepted (uvicorn's own default).
_BACKLOG = 2048


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` for `run_server`, or a `WebError` saying why not.

    Bound by us, not by uvicorn: a port in use is one line of ours (uvicorn logs its own error
    and exits), and with port 0 the port the system chose is the one announced. `demo --serve`
    binds before it builds, so a port in use is known before minutes of work.
    """
    if not host.strip():
        # An empty address binds every interface, which nobody typing "" meant.
        raise WebError("--host is empty: give an address (127.0.0.1 for this machine, 0.0.0.0 for all)")
    # An IPv6 address is bracketed in a URL ([::1]), and may be given so; bound without them.
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
        # Listening at once: a socket only bound does not keep the port from another that
        # binds it too (with SO_REUSEADDR), and then this one could no longer listen.
        listening.listen(_BACKLOG)
    except OSError as error:
        listening.close()
        raise WebError(f"cannot listen on {_shown(host)}:{port}: {error.strerror or error}") from None
    return listening


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_server(
    db: Path,
    host: str,
    port: int,
    users_file: Path | None,
    echo: Callable[[str], None] = print,
    *,
    listening: socket.socket | None = None,
) -> None:
    """Serve the pages over `db`; with `users_file`, only its users, each seeing their teams.

    `listening` is a socket `listening_socket` bound already (then `host` and `port` are not
    bound again); it is closed when the server stops or cannot start.
    """
    if listening is None:
        listening = listening_socket(host, port)
    with listening:
        check_database(db)
        users = Users.load(users_file) if users_file is not None else None
        app = create_app(db, users)
        address = listening.getsockname()
        shown, port = _shown(str(address[0])), int(address[1])
        who = f"users from {users_file}" if users_file else "no sign-in: every team is shown"
        echo(f"serving {db} read-only on http://{shown}:{port}/ ({who}); Ctrl-C stops")
        config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
        uvicorn.Server(config).run(sockets=[listening])
