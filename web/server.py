"""`crm-ledger serve`: run the web application with uvicorn until Ctrl-C."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import uvicorn

from web.app import create_app
from web.errors import WebError
from web.users import Users


def run_server(
    db: Path, host: str, port: int, users_file: Path | None, echo: Callable[[str], None] = print
) -> None:
    """Serve the pages over `db`; with `users_file`, only its users, each seeing their teams."""
    if not db.exists():
        raise WebError(f"{db}: no projection database yet (run `crm-ledger project` or `crm-ledger demo`)")
    users = Users.load(users_file) if users_file is not None else None
    app = create_app(db, users)
    who = f"users from {users_file}" if users_file else "no sign-in: every team is shown"
    echo(f"serving {db} read-only on http://{host}:{port}/ ({who}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
