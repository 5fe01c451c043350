"""The web pages' parts without a browser: users files, password checks, SVG charts."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pytest
from argon2 import PasswordHasher, extract_parameters

from crm_ledger.visible import visible
from projections.store import MAX_QUOTED_REFERENCE, VersionInfo
from tests.helpers import run_cli, start_cli
from web import data
from web.app import SECURITY_HEADERS, create_app
from web.charts import Series, Target, bar_chart, line_chart
from web.data import check_database
from web.errors import WebError
from web.pages import fmt_number, fmt_rate, id_fields, page_link, path_segment, statement_link
from web.server import listening_socket
from web.users import LOCAL_USER, MAX_CONCURRENT_CHECKS, Users, hash_password


def test_users_file_roles_teams_and_passwords(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(
        f'[users.ada]\npassword = "{hash_password("s3cret-pass")}"\nrole = "lead"\nteams = ["t1"]\n'
        f'[users.rita]\npassword = "{hash_password("audit-pass")}"\nrole = "auditor"\n'
    )
    users = Users.load(path)
    ada = users.authenticate("ada", "s3cret-pass")
    assert ada is not None and ada.can_see("t1") and not ada.can_see("t2") and not ada.can_see(None)
    rita = users.authenticate("rita", "audit-pass")
    assert rita is not None and rita.can_see("t2") and rita.sees_everything
    assert users.authenticate("ada", "wrong") is None
    assert users.authenticate("nobody", "s3cret-pass") is None
    assert LOCAL_USER.sees_everything
    # An empty or short password is no guard for anyone's scores: refused when hashed.
    for weak in ("", "1234567"):
        with pytest.raises(WebError, match="at least 8 characters"):
            hash_password(weak)


_HASH = hash_password("a-long-password")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[users.a]\npassword = "plain"\nteams = ["t1"]\n', "expected an argon2 hash"),
        ('[users.a]\npassword = "$argon2id$x"\nrole = "boss"\n', "role: must be one of"),
        ('[users.a]\npassword = "$argon2id$x"\nrole = "lead"\n', "a lead needs at least one team"),
        ('[users.a]\npassword = "$argon2id$x"\nteams = "t1"\n', "expected a list of team ids"),
        ("nothing = 1\n", "no [users.NAME] tables"),
        ("[users\n", "cannot read the users file"),
        # A user who could never sign in (a broken hash, a name HTTP Basic cannot carry).
        ('[users.a]\npassword = "$argon2id$x"\nrole = "auditor"\n', "users.a.password: not a whole argon2 hash"),
        (f'[users."a:b"]\npassword = "{_HASH}"\nrole = "auditor"\n', "users.'a:b': a user name is printable"),
        (f'[users.""]\npassword = "{_HASH}"\nrole = "auditor"\n', "users.'': a user name is printable"),
    ],
)
def test_a_bad_users_file_is_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(WebError, match=re.escape(words)):
        Users.load(path)


def test_charts_are_inline_svg_with_gaps_and_target_steps() -> None:
    chart = str(
        line_chart(
            ["2026-01", "2026-02", "2026-03"],
            [Series("csat <b>", (50.0, None, 80.0))],
            [Target("goal g1", (75.0, 75.0, 70.0))],
            title="CSAT",
        )
    )
    assert (
        chart.startswith("<svg")
        and "<script" not in chart
        and "http" not in chart.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "csat &lt;b&gt;" in chart  # labels are escaped
    assert chart.count('class="target"') == 3 + 1  # one step per month, one in the legend
    assert "<polyline" not in chart  # a gap between the only two points: no line drawn across it
    assert "No values" in str(line_chart(["2026-01"], [Series("x", (None,))], title="empty"))
    assert str(bar_chart(["a", "b"], [3.0, 1.0], title="bars")).count("<rect") == 2


def test_an_id_in_a_link_is_one_path_segment() -> None:
    assert path_segment("a/../b") == "a%2F..%2Fb"
    assert path_segment("t/./u") == "t%2F.%2Fu"
    assert path_segment("c?d#e%2Ff g") == "c%3Fd%23e%252Ff%20g"
    assert path_segment("ä") == "%C3%A4"


def test_an_id_that_is_a_dot_segment_is_linked_through_the_query_string() -> None:
    # Browsers resolve "." and ".." (and "%2e", "%2E") segments away: no encoding survives.
    assert page_link("employee", ".") == "/employee/?id=."
    assert page_link("employee", "..", period="2025-01", version=None) == "/employee/?id=..&period=2025-01"
    assert page_link("team", ".", version="v_abc") == "/team/?id=.&version=v_abc"
    assert statement_link("..", "2025-01") == "/employee/?id=..&statement=2025-01"
    assert id_fields("..", period="2025-01") == {"id": "..", "period": "2025-01"}
    # Every other id stays one path segment, as before.
    assert page_link("employee", "...") == "/employee/..."
    assert page_link("employee", "a/../b", period="2025-01") == "/employee/a%2F..%2Fb?period=2025-01"
    assert statement_link("a/../b", "2025-01") == "/employee/a%2F..%2Fb/statement/2025-01"
    assert id_fields("emp-1") == {}


def test_serve_on_an_ipv6_address_announces_an_address_a_browser_takes(tmp_path: Path) -> None:
    """`--host ::1` was announced as http://::1:PORT/ (no browser reads that), and the bracketed
    form a URL takes, `--host [::1]`, was 'Name or service not known'."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    db = tmp_path / "p.duckdb"
    duckdb.connect(str(db)).close()
    for host in ("::1", "[::1]"):
        server = start_cli("--db", str(db), "serve", "--host", host, "--port", "0")
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert re.search(r"on http://\[::1\]:[0-9]+/ ", line), (host, line, server.poll())
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_serve_refuses_another_programs_database_without_asking_duckdb(tmp_path: Path) -> None:
    # DuckDB took an SQLite file (the ledger named by --db by mistake) for one of its
    # extensions' and went to download that extension before refusing it.
    store = tmp_path / "ledger.sqlite"
    with contextlib.closing(sqlite3.connect(store)) as con:
        con.execute("CREATE TABLE t (x)")
        con.commit()
    with pytest.raises(WebError, match=r"ledger\.sqlite: not a DuckDB database that can be opened read-only \(another"):
        check_database(store)
    duckdb.connect(str(tmp_path / "p.duckdb")).close()
    check_database(tmp_path / "p.duckdb")


def _asgi(app: Any, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request to the application, without a server (the status, headers and body sent)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "headers": [], "http_version": "1.1", "scheme": "http", "server": ("test", 80),
        "client": ("test", 1), "root_path": "",
    }

    def run() -> None:
        # A 500 is sent, then its error raised again. In a thread of its own: a test run
        # earlier in this process (the browser's) may have left an event loop running in
        # this one, where asyncio.run refuses to start (and the refusal was taken for it).
        with contextlib.suppress(RuntimeError):
            asyncio.run(app(scope, receive, send))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_every_answer_carries_the_pages_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The router's 404 and 405 went out without them (cacheable, no Content-Security-Policy).
    db = tmp_path / "p.duckdb"
    duckdb.connect(str(db)).close()
    app = create_app(db)
    monkeypatch.setattr(data, "versions", lambda _con: (_ for _ in ()).throw(RuntimeError("boom")))
    for method, path, status in (("GET", "/nope", 404), ("POST", "/", 405), ("GET", "/", 500)):
        got, headers, body = _asgi(app, method, path)
        assert got == status, (method, path, got)
        assert {k.lower(): v for k, v in SECURITY_HEADERS.items()}.items() <= headers.items(), (method, path)
        assert b"Traceback" not in body and b"boom" not in body
    assert set(_asgi(app, "POST", "/")[1]["allow"].split(", ")) == {"GET", "HEAD"}


def test_an_unknown_version_is_echoed_cut_short_and_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `?version=` of a hundred thousand characters came back whole on the 404 page."""
    db = tmp_path / "p.duckdb"
    duckdb.connect(str(db)).close()
    made = datetime(2025, 1, 1, tzinfo=UTC)
    promoted = VersionInfo(
        "v_0123456789ab", "main", "s", "k", "", None, "ledger", "ready", made, made, 0, None, None, promoted=True
    )
    monkeypatch.setattr(data, "versions", lambda _con: [promoted])
    app = create_app(db)
    given = "<b>\u202e" + "x" * 100_000
    status, _, body = _asgi(app, "GET", "/?version=" + quote(given))
    page = body.decode()
    assert status == 404
    shown = "&lt;b&gt;\\u202e" + "x" * (MAX_QUOTED_REFERENCE - 4) + "…"
    assert f"unknown version &#39;{shown}&#39;; known versions: v_0123456789ab (main)" in page, page[:2000]
    assert "x" * (MAX_QUOTED_REFERENCE - 3) not in page and len(body) < 20_000


def test_password_checks_run_a_few_at_a_time(tmp_path: Path) -> None:
    # Every request thread hashed at once: 60 wrong passwords in a burst took 1.3 GB.
    path = tmp_path / "users.toml"
    path.write_text(f'[users.rita]\npassword = "{_HASH}"\nrole = "auditor"\n')
    users = Users.load(path)
    running, most = 0, 0
    lock = threading.Lock()
    real = users._hasher

    class Counting:
        def verify(self, hash_: str, password: str) -> bool:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                return real.verify(hash_, password)
            finally:
                with lock:
                    running -= 1

    users._hasher = Counting()  # type: ignore[assignment]
    threads = [
        threading.Thread(target=users.authenticate, args=(name, "wrong-password")) for name in ["rita", "x"] * 8
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == MAX_CONCURRENT_CHECKS
    assert users.authenticate("rita", "a-long-password") is not None


def test_unknown_names_cost_what_the_files_own_hashes_cost(tmp_path: Path) -> None:
    # The stand-in for unknown names was made with the library's defaults: against a file's
    # hashes made elsewhere, with other costs, the time of a refusal told whether a name exists.
    costlier = PasswordHasher(time_cost=6, memory_cost=32_768, parallelism=2).hash("a-long-password")
    path = tmp_path / "users.toml"
    path.write_text(f'[users.rita]\npassword = "{costlier}"\nrole = "auditor"\n')
    users = Users.load(path)
    assert extract_parameters(users._dummy_hash) == extract_parameters(costlier)
    assert users.authenticate("nobody", "a-long-password") is None
    assert users.authenticate("rita", "a-long-password") is not None


def test_an_undefined_number_is_a_dash_not_nan() -> None:
    """A rank correlation over values that never change is NaN in the read model."""
    assert [fmt_number(v) for v in (math.nan, math.inf, None, 0.5, 3)] == ["–", "–", "–", "0.50", "3"]
    assert [fmt_rate(v) for v in (math.nan, None, 0.25)] == ["–", "–", "25.0%"]


def test_characters_that_would_act_on_a_page_are_shown_as_escapes() -> None:
    """An id holding U+202E (right-to-left override) read as another id on the page; a link's
    address keeps the id itself (percent-encoded), its text shows the escape."""
    from web.app import _templates

    spoof = "emp-1\u202egnp.exe"
    page = _templates().from_string("<p>{{ name }}</p><a href=\"{{ link('employee', name) }}\">{{ name }}</a>")
    html = page.render(name=spoof)
    assert "\u202e" not in html
    assert html.count("emp-1\\u202egnp.exe") == 2
    assert 'href="/employee/emp-1%E2%80%AEgnp.exe"' in html
    assert visible("tab\tand\nline\x1b[2J\u2066") == "tab\tand\nline\\x1b[2J\\u2066"


def test_demo_serve_on_a_port_in_use_says_so_before_building_the_demo(tmp_path: Path) -> None:
    """The port was found taken only after the demo was generated, ingested and projected."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--serve", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "demo").exists()


def test_a_port_bound_for_serving_is_held_until_it_is_served() -> None:
    """Bound but not listening, the port was not held: another server bound it too while the
    demo was built, and the demo could then not listen."""
    first = listening_socket("127.0.0.1", 0)
    with first, pytest.raises(WebError, match="Address already in use"):
        listening_socket("127.0.0.1", first.getsockname()[1])
