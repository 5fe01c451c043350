"""The web pages in a real browser: Debian's Chromium driven by Playwright against `crm-ledger serve`.

One server and one browser per session over one demo database (team goals, CFPB complaints,
a closed period with statements, a second version). Numbers on the pages are checked against
the read models; a lead cannot open another team (403) and nothing can write. Screenshots are
saved under the session's temporary folder (`screenshots/`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest

from crm_cli.demo import run_demo
from importers.generator import GeneratorConfig
from projections.readonly import reader
from projections.spec import DEFAULT_SPEC
from tests.helpers import CLI, run_cli, start_cli, wait_for
from tests.ports import free_port
from web.pages import fmt_number, fmt_rate
from web.users import hash_password

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"ada": "ada-secret", "rita": "rita-secret"}


def _chromium() -> str:
    """The system Chromium; installed by the project's script when missing, else a clear skip."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    result = subprocess.run(
        [str(ROOT / "scripts/ensure-chromium.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode == 3:
        pytest.skip(f"no Chromium and no package manager to install it: {result.stderr.strip()}")
    assert result.returncode == 0, f"installing Chromium failed: {result.stderr}"
    found = shutil.which("chromium")
    assert found, "scripts/ensure-chromium.sh ran but chromium is not on PATH"
    return found


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo with goals, CFPB complaints, a closed month and a second version, served."""
    folder = tmp_path_factory.mktemp("web")
    settings = run_demo(
        folder / "demo", GeneratorConfig(customers=150, employees=16, months=3, seed=5), lambda _: None
    )
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    # The sample has two deliberately broken rows (exit 1); every other row lands.
    imported = run_cli("import", "cfpb", str(ROOT / "tests/data/cfpb_current.csv"), env=env)
    assert "accepted 28" in imported.stdout, imported.stdout + imported.stderr
    run_cli("project", env=env, check=True)
    run_cli("period", "close", "2025-01", env=env, check=True)
    run_cli("project", env=env, check=True)
    text = DEFAULT_SPEC.read_text()
    start = text.index('kpi = "problems_solved"')
    cap_at = text.index("cap = ", start)
    spec = folder / "cap.toml"
    spec.write_text(text[:cap_at] + "cap = 4" + text[text.index("\n", cap_at) :])
    run_cli("replay", "--metrics", str(spec), "--name", "cap", env=env, check=True)
    users = folder / "users.toml"
    users.write_text(
        f'[users.ada]\npassword = "{hash_password(PASSWORDS["ada"])}"\nrole = "lead"\nteams = ["team-01"]\n\n'
        f'[users.rita]\npassword = "{hash_password(PASSWORDS["rita"])}"\nrole = "auditor"\n'
    )
    with _served(settings.projections_db, "--users", str(users)) as base:
        yield {"base": base, "db": settings.projections_db, "shots": tmp_path_factory.mktemp("screenshots")}


@contextmanager
def _served(db: Path, *options: str) -> Iterator[str]:
    """`crm-ledger serve` over `db` on a free port, until the block ends; yields its address."""
    port = free_port()
    server = start_cli("--db", str(db), "serve", "--port", str(port), *options)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            assert server.poll() is None, server.stderr.read() if server.stderr else "server exited"
            return False

    try:
        wait_for(up, 60, "crm-ledger serve")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


#: Ids a browser would take apart if their "/" were left bare in a link ("." and ".." segments
#: are resolved before the request), one with the characters a URL gives meaning to, and one
#: that ends like the address of a statement.
ODD_EMPLOYEE, ODD_TEAM, ODD_OTHER = "a/../b", "t/./u", "c?d#e%2Ff g"
ODD_STATEMENT = "d/statement/2025-01"
#: Ids that are whole dot segments: no encoding keeps a browser from resolving them away.
DOT, DOT_DOT = ".", ".."
#: The name two versions of the odd site share (a name `find_version` cannot choose by).
TWIN = "twin"


@pytest.fixture(scope="session")
def odd_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small history whose teams and employees have such ids, with a closed month and two
    more versions of one name, served."""
    folder = tmp_path_factory.mktemp("odd")
    env = {
        "CRM_LEDGER_STORE": str(folder / "ledger.sqlite"),
        "CRM_LEDGER_DB": str(folder / "projections.duckdb"),
    }
    history = folder / "history.jsonl"
    # Two teams; the renamed employees are in team-01 with a score in the closed month.
    generate = ["--customers", "40", "--employees", "12", "--months", "2", "--seed", "3"]
    run_cli("generate", *generate, "--out", str(history), check=True)
    text = history.read_text()
    renamed = {
        "emp-0001": ODD_EMPLOYEE,
        "emp-0003": ODD_OTHER,
        "emp-0007": ODD_STATEMENT,
        "emp-0009": DOT,
        "emp-0011": DOT_DOT,
        "team-01": ODD_TEAM,
        "team-02": DOT,
    }
    for generated, odd in renamed.items():
        assert json.dumps(generated) in text
        text = text.replace(json.dumps(generated), json.dumps(odd))
    history.write_text(text)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    run_cli("period", "close", "2025-01", env=env, check=True)
    run_cli("project", env=env, check=True)
    text = DEFAULT_SPEC.read_text()
    cap_at = text.index("cap = ", text.index('kpi = "problems_solved"'))
    for cap in (4, 5):
        spec = folder / f"cap{cap}.toml"
        spec.write_text(text[:cap_at] + f"cap = {cap}" + text[text.index("\n", cap_at) :])
        run_cli("replay", "--metrics", str(spec), "--name", TWIN, env=env, check=True)
    with _served(folder / "projections.duckdb") as base:
        yield {"base": base, "db": folder / "projections.duckdb"}


@pytest.fixture(scope="session")
def browser(site: dict[str, Any]) -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def _page(browser: Any, site: dict[str, Any], user: str) -> Any:
    context = browser.new_context(
        http_credentials={"username": user, "password": PASSWORDS[user]},
        viewport={"width": 1280, "height": 900},
    )
    return context.new_page()


def _read(site: dict[str, Any], sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with reader(site["db"]) as con:  # registers the decoded log `ledger_events` reads
        return con.execute(sql, params or []).fetchall()


def _shot(page: Any, site: dict[str, Any], name: str) -> None:
    page.screenshot(path=str(site["shots"] / f"{name}.png"), full_page=True)


def test_team_page_shows_the_goal_progress_kpis_and_scores_of_the_read_models(
    browser: Any, site: dict[str, Any]
) -> None:
    page = _page(browser, site, "ada")
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(site["base"]) else outside.append(r.url))
    response = page.goto(f"{site['base']}/team/team-01")
    assert response.status == 200
    progress = _read(
        site,
        "SELECT goal_id, period, actual, met FROM team_goal_progress WHERE team_id = 'team-01' ORDER BY ALL",
    )
    assert progress, "the demo sets goals for team-01"
    for goal_id, period, actual, met in progress:
        row = page.locator(f"#goal-{goal_id} tr[data-period='{period}']")
        assert row.locator("td.actual").inner_text() == fmt_number(actual, 3)
        expected = "not measured yet" if met is None else ("met" if met else "not met")
        assert row.locator("td").last.inner_text() == expected
    for period, csat, fcr in _read(
        site, "SELECT period, csat_pct, fcr_rate FROM kpi_team_month WHERE team_id = 'team-01'"
    ):
        row = page.locator(f"#kpis tr[data-period='{period}']")
        assert row.locator("td[data-kpi='csat_pct']").inner_text() == fmt_number(csat, 3)
        assert row.locator("td[data-kpi='fcr_rate']").inner_text() == fmt_number(fcr, 3)
    scores = _read(site, "SELECT employee_id, period, score FROM reward_score WHERE team_id = 'team-01'")
    for employee_id, period, score in scores:
        cell = page.locator("#members tr", has=page.locator(f"a:text-is('{employee_id}')")).locator(
            f"td[data-period='{period}']"
        )
        assert cell.inner_text() == fmt_number(score)
    assert page.locator("svg.chart").count() >= 6
    assert page.locator("svg.chart line.target").count() > 0, "goals are drawn as target lines"
    assert "do not show that one thing caused another" in page.locator("#evidence ~ p.method").inner_text()
    (n_all,) = _read(
        site,
        "SELECT n FROM team_evidence_correlation WHERE team_id = '(all)' ORDER BY practice, outcome LIMIT 1",
    )[0]
    assert page.locator("#correlations td", has_text=str(n_all)).count() > 0
    _shot(page, site, "team")
    assert outside == [], "the page loaded something from elsewhere"


def test_a_lead_sees_only_their_teams(browser: Any, site: dict[str, Any]) -> None:
    page = _page(browser, site, "ada")
    page.goto(f"{site['base']}/")
    assert [t.inner_text() for t in page.locator("#teams tbody td:first-child a").all()] == ["team-01"]
    assert page.goto(f"{site['base']}/team/team-02").status == 403
    other = _read(site, "SELECT employee_id FROM kpi_employee_month WHERE team_id = 'team-02' LIMIT 1")[0][0]
    assert page.goto(f"{site['base']}/employee/{other}").status == 403
    _shot(page, site, "forbidden")
    auditor = _page(browser, site, "rita")
    assert auditor.goto(f"{site['base']}/team/team-02").status == 200
    teams = _read(site, "SELECT count(DISTINCT team_id) FROM kpi_team_month WHERE team_id <> '(none)'")[0][0]
    auditor.goto(f"{site['base']}/")
    assert auditor.locator("#teams tbody tr").count() == teams


def _status(url: str, method: str = "GET", user: str | None = "rita", password: str | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=b"x=1" if method != "GET" else None)
    if user is not None:
        secret = password if password is not None else PASSWORDS[user]
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_nothing_can_write_and_strangers_are_asked_to_sign_in(browser: Any, site: dict[str, Any]) -> None:
    before = hashlib.sha256(Path(site["db"]).read_bytes()).hexdigest()
    paths = ["/", "/team/team-01", "/versions", "/complaints", "/employee/emp-0001"]
    for path in paths:
        assert _status(site["base"] + path, user=None) == 401
        assert _status(site["base"] + path, password="wrong") == 401
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert _status(site["base"] + path, method) == 405, (method, path)
    page = _page(browser, site, "rita")
    for path in paths:
        page.goto(site["base"] + path)
        assert page.locator("form[method='post'], form:not([method]), input[type='file']").count() == 0
    assert hashlib.sha256(Path(site["db"]).read_bytes()).hexdigest() == before


def test_employee_page_explains_a_score_and_links_the_statement(browser: Any, site: dict[str, Any]) -> None:
    employee, period, score = _read(
        site,
        "SELECT employee_id, period, score FROM reward_score WHERE team_id = 'team-01' ORDER BY ALL LIMIT 1",
    )[0]
    page = _page(browser, site, "ada")
    assert page.goto(f"{site['base']}/employee/{employee}?period={period}").status == 200
    assert page.locator(f"#scores tr[data-period='{period}'] td.score").inner_text() == fmt_number(score)
    points = [float(p.inner_text()) for p in page.locator("#components td.points").all()]
    assert sum(points) == pytest.approx(score, abs=0.01 * len(points))
    (events,) = _read(
        site,
        "SELECT count(*) FROM ledger_events WHERE (employee_id = ? OR (author_id = ? AND event_type = 'ArticleLinked')) "
        "AND strftime(occurred_at, '%Y-%m') = ?",
        [employee, employee, period],
    )[0]
    assert page.locator("#events tbody tr").count() == min(events, 300)
    _shot(page, site, "employee")
    (told,) = _read(
        site, "SELECT score FROM reward_statement WHERE employee_id = ? AND period = '2025-01'", [employee]
    )[0]
    page.locator("#statements a", has_text="statement").first.click()
    assert page.locator("p.score").inner_text() == f"{told:.2f}"


def test_versions_page_is_the_diff(browser: Any, site: dict[str, Any]) -> None:
    from replay.diff import diff_versions
    from web.data import find_version, versions

    with duckdb.connect(str(site["db"]), read_only=True) as con:
        old = next(v for v in versions(con) if v.promoted)
        new = find_version(con, "cap")
        report = diff_versions(con, old, new)
    page = _page(browser, site, "rita")
    page.goto(f"{site['base']}/versions?old={old.version}&new={new.version}")
    assert page.locator("#spearman").inner_text() == fmt_number(report.spearman, 4)
    assert page.locator("#changes tbody tr").count() == min(200, report.rows_changed)
    shown = page.locator("#goal-changes tbody tr").count() if report.goal_changes else 0
    assert shown == len(report.goal_changes)
    _shot(page, site, "versions")
    lead = _page(browser, site, "ada")
    lead.goto(f"{site['base']}/versions?old={old.version}&new={new.version}")
    linked = {a.inner_text() for a in lead.locator("#changes a").all()}
    allowed = {
        r[0] for r in _read(site, "SELECT DISTINCT employee_id FROM reward_score WHERE team_id = 'team-01'")
    }
    assert linked <= allowed


def test_complaints_page_lists_the_complaint_kpis(browser: Any, site: dict[str, Any]) -> None:
    page = _page(browser, site, "rita")
    assert page.goto(f"{site['base']}/complaints").status == 200
    expected = _read(
        site,
        "SELECT complaints_received, timely_rate FROM complaint_kpi_month "
        "WHERE channel = '(all)' AND product = '(all)' ORDER BY team_id, period",
    )
    rows = page.locator("#complaint-kpis tbody tr").all()
    assert [int(r.locator("td.received").inner_text()) for r in rows] == [e[0] for e in expected]
    assert [r.locator("td").nth(6).inner_text() for r in rows] == [fmt_rate(e[1]) for e in expected]
    assert page.locator("#issues tbody tr").count() > 0
    _shot(page, site, "complaints")
    lead = _page(browser, site, "ada")
    lead.goto(f"{site['base']}/complaints")
    assert lead.locator("#complaint-kpis tbody tr").count() == 0


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    duckdb.connect(str(db)).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--db", str(db), "serve", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    # An empty address would bind every interface, announced as "http://:PORT/".
    empty = run_cli("--db", str(db), "serve", "--host", "", "--port", "0")
    assert empty.returncode == 1 and empty.stderr.startswith("error: --host is empty")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.mkdir(), "not a file"),
        (lambda p: p.write_text("not a database\n"), "not a DuckDB database that can be opened read-only"),
        (lambda p: p.write_bytes(b""), "not a DuckDB database that can be opened read-only"),
        (lambda p: None, "no projection database yet"),
    ],
    ids=["folder", "text-file", "empty-file", "missing"],
)
def test_serve_refuses_what_is_not_a_duckdb_database_in_one_line(
    tmp_path: Path, make: Any, words: str
) -> None:
    db = tmp_path / "projections.duckdb"
    make(db)
    result = subprocess.run(
        [*CLI, "--db", str(db), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "serving" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {db}: ") and words in lines[0], result.stderr


def test_serve_starts_while_a_projector_holds_the_database(tmp_path: Path) -> None:
    db = tmp_path / "projections.duckdb"
    with duckdb.connect(str(db)):  # a writer in another process, as `project --follow` is
        server = start_cli("--db", str(db), "serve", "--port", "0")
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith(f"serving {db} read-only on http://127.0.0.1:")
        finally:
            server.terminate()
            server.wait(timeout=30)


def _get(url: str, user: str = "rita") -> tuple[int, str]:
    """Status and body of a GET as `user`, errors included."""
    request = urllib.request.Request(url)
    secret = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    request.add_header("Authorization", "Basic " + secret)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def _promoted_and_cap(site: dict[str, Any]) -> tuple[str, str]:
    old = _read(site, "SELECT version FROM crm_promoted")[0][0]
    new = _read(site, "SELECT version FROM crm_versions WHERE name = 'cap'")[0][0]
    return str(old), str(new)


@pytest.mark.parametrize(
    "threshold",
    [
        *("abc", "nan", "NaN", "inf", "-inf", "1e400", "-1", "100.5", "1e308", "5" * 5000),
        *("1_0", "1e1", "%2050", "%D9%A5%D9%A0", "0x10", "%00"),
    ],
)
def test_a_threshold_that_is_not_a_score_is_a_bad_request(site: dict[str, Any], threshold: str) -> None:
    old, new = _promoted_and_cap(site)
    status, body = _get(f"{site['base']}/versions?old={old}&new={new}&threshold={threshold}")
    assert status == 400
    assert "threshold must be a score from 0 to 100" in body and "Traceback" not in body
    assert len(body) < 5000, "the page does not echo the whole parameter"


def test_a_threshold_in_range_is_used(site: dict[str, Any]) -> None:
    old, new = _promoted_and_cap(site)
    given = (("", "50"), ("0", "0"), ("100", "100"), ("12.5", "12"), ("7.", "7"), (".5", "0"))
    for threshold, shown in given:
        status, body = _get(f"{site['base']}/versions?old={old}&new={new}&threshold={threshold}")
        assert status == 200 and f"crossed {shown} upwards" in body, threshold


@pytest.mark.parametrize(
    "path",
    [
        "/employee/emp-0001?period=abc",
        "/employee/emp-0001?period=2025-13",
        "/employee/emp-0001?period=99999999999-01",
        "/employee/emp-0001/statement/abc",
        "/employee/emp-0001/statement/2025-1",
    ],
)
def test_a_month_that_is_not_a_month_is_a_bad_request(site: dict[str, Any], path: str) -> None:
    status, body = _get(site["base"] + path)
    assert status == 400 and "must be a month YYYY-MM" in body, (path, status)


def test_a_statement_of_no_employee_is_not_found_and_of_another_team_forbidden(site: dict[str, Any]) -> None:
    for user in ("ada", "rita"):
        status, body = _get(f"{site['base']}/employee/nobody/statement/2025-01", user)
        assert status == 404 and "no employee &#39;nobody&#39;" in body, (user, status)
    other = _read(
        site,
        "SELECT min(employee_id) FROM reward_statement WHERE period = '2025-01' "
        "AND employee_id NOT IN (SELECT employee_id FROM kpi_employee_month WHERE team_id = 'team-01' "
        "UNION SELECT employee_id FROM reward_score WHERE team_id = 'team-01')",
    )[0][0]
    assert other is not None
    assert _get(f"{site['base']}/employee/{other}/statement/2025-01", "ada")[0] == 403
    assert _get(f"{site['base']}/employee/{other}/statement/2025-01", "rita")[0] == 200


def test_links_to_ids_with_slashes_and_dots_reach_their_pages(browser: Any, odd_site: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(f"{odd_site['base']}/")
    page.get_by_role("link", name=ODD_TEAM, exact=True).click()
    expect(page.locator("h1")).to_have_text(f"Team {ODD_TEAM}")
    assert page.url == f"{odd_site['base']}/team/t%2F.%2Fu"
    for employee in (ODD_EMPLOYEE, ODD_OTHER, ODD_STATEMENT, DOT, DOT_DOT):
        page.locator("#members").get_by_role("link", name=employee, exact=True).click()
        expect(page.locator("h1")).to_have_text(f"Employee {employee}")
        page.locator("#statements").get_by_role("link", name="statement").first.click()
        expect(page).to_have_title(f"Reward statement {employee} 2025-01")
        page.go_back()
        page.get_by_role("link", name=ODD_TEAM, exact=True).click()
        expect(page.locator("h1")).to_have_text(f"Team {ODD_TEAM}")
    (shown,) = _read(
        odd_site, "SELECT count(DISTINCT employee_id) FROM reward_score WHERE team_id = ?", [ODD_TEAM]
    )[0]
    assert page.locator("#members tbody tr").count() == shown


def test_links_to_dot_ids_reach_their_pages_and_keep_them(browser: Any, odd_site: dict[str, Any]) -> None:
    """Ids "." and ".." are resolved away by the browser however they are encoded ("%2e" too):
    their links carry the id in the query string of the same route, and every link and form
    on their pages keeps it."""
    from playwright.sync_api import expect

    base = odd_site["base"]
    page = browser.new_page()
    page.goto(f"{base}/")
    page.get_by_role("link", name=DOT, exact=True).click()
    expect(page.locator("h1")).to_have_text(f"Team {DOT}")
    assert page.url == f"{base}/team/?id=."
    (members,) = _read(
        odd_site, "SELECT count(DISTINCT employee_id) FROM reward_score WHERE team_id = ?", [DOT]
    )[0]
    assert members > 0 and page.locator("#members tbody tr").count() == members
    twin = _read(odd_site, "SELECT version FROM crm_versions WHERE name = ? ORDER BY version", [TWIN])[0][0]
    page.locator("select[name='version']").select_option(twin)
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(f"{base}/team/?version={twin}&id=.")
    expect(page.locator("h1")).to_have_text(f"Team {DOT}")
    page.goto(f"{base}/team/{ODD_TEAM.replace('/', '%2F')}")
    for employee, address in ((DOT, "?id=."), (DOT_DOT, "?id=..")):
        page.locator("#members").get_by_role("link", name=employee, exact=True).click()
        expect(page).to_have_url(f"{base}/employee/{address}")
        expect(page.locator("h1")).to_have_text(f"Employee {employee}")
        page.locator("#scores").get_by_role("link", name="explain").first.click()
        expect(page).to_have_url(f"{base}/employee/{address}&period=2025-01")
        expect(page.locator("h1")).to_have_text(f"Employee {employee}")
        assert page.locator("#components tbody tr").count() > 0
        page.locator("select[name='version']").select_option(twin)
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(f"{base}/employee/?version={twin}&{address[1:]}&period=2025-01")
        expect(page.locator("h1")).to_have_text(f"Employee {employee}")
        page.locator("#statements").get_by_role("link", name="statement").first.click()
        expect(page).to_have_title(f"Reward statement {employee} 2025-01")
        page.goto(f"{base}/team/{ODD_TEAM.replace('/', '%2F')}")
    assert _get(f"{base}/employee/")[0] == 400 and _get(f"{base}/team/?id=")[0] == 400


def test_pages_find_a_version_as_the_command_line_does(odd_site: dict[str, Any]) -> None:
    """By id, unique id prefix or name: an unknown one is not found (404), a name two versions
    share is a bad request (400) that says so, never the first of them."""
    base = odd_site["base"]
    known = [str(v) for (v,) in _read(odd_site, "SELECT version FROM crm_versions ORDER BY version")]
    twins = [str(v) for (v,) in _read(odd_site, "SELECT version FROM crm_versions WHERE name = ?", [TWIN])]
    (promoted,) = _read(odd_site, "SELECT version FROM crm_promoted")[0]
    assert len(twins) == 2
    for path in (f"/?version={TWIN}", f"/versions?old={promoted}&new={TWIN}", f"/team/x?version={TWIN}"):
        status, body = _get(base + path)
        assert status == 400, (path, status)
        assert f"version name &#39;{TWIN}&#39; is ambiguous" in body and "use the version id" in body, path
    for path in ("/?version=nope", "/versions?old=nope&new=" + twins[0]):
        status, body = _get(base + path)
        assert status == 404 and "unknown version &#39;nope&#39;" in body, (path, status)

    def unique_prefix(version: str) -> str:
        return next(p for n in range(6, 15) if sum(v.startswith(p := version[:n]) for v in known) == 1)

    for twin in twins:
        status, body = _get(f"{base}/?version={unique_prefix(twin).removeprefix('v_')}")
        assert status == 200 and f'<option value="{twin}" selected>' in body, twin
    status, body = _get(f"{base}/versions?old={unique_prefix(twins[0])}&new={unique_prefix(twins[1])}")
    assert status == 200 and 'id="spearman"' in body
    assert f'<option value="{twins[0]}" selected>' in body and f'<option value="{twins[1]}" selected>' in body


def test_a_database_not_projected_yet_says_so_on_every_page(tmp_path: Path) -> None:
    db = tmp_path / "projections.duckdb"
    duckdb.connect(str(db)).close()
    with _served(db) as base:
        for path in ("/", "/team/t", "/employee/e", "/employee/e/statement/2025-01", "/complaints"):
            try:
                urllib.request.urlopen(base + path, timeout=30)
            except urllib.error.HTTPError as error:
                assert error.code == 503, path
                assert "no version is promoted yet" in error.read().decode(), path
            else:
                raise AssertionError(f"{path} answered without a promoted version")
        with urllib.request.urlopen(base + "/versions", timeout=30) as response:
            assert response.status == 200


def test_a_database_damaged_while_served_is_not_available_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "projections.duckdb"
    duckdb.connect(str(db)).close()
    with _served(db) as base:
        db.write_text("overwritten by mistake\n")
        try:
            urllib.request.urlopen(base + "/", timeout=30)
        except urllib.error.HTTPError as error:
            assert error.code == 503
            # Refused by its header before DuckDB could take it for an empty database.
            assert "is not a DuckDB database file" in error.read().decode()
        else:
            raise AssertionError("a damaged database was served")


def test_a_decoded_log_moved_away_while_served_is_named_not_blamed_on_the_version(tmp_path: Path) -> None:
    env = {"CRM_LEDGER_STORE": str(tmp_path / "ledger.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    history = tmp_path / "history.jsonl"
    generate = ["--customers", "20", "--employees", "6", "--months", "2", "--seed", "5"]
    run_cli("generate", *generate, "--out", str(history), check=True)
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    run_cli("period", "close", "2025-01", env=env, check=True)
    run_cli("project", env=env, check=True)
    with _served(tmp_path / "p.duckdb") as base:
        (tmp_path / "p.log").rename(tmp_path / "elsewhere")
        try:
            # A closed month's statement is read from the ledger's events, in the decoded log.
            urllib.request.urlopen(f"{base}/employee/emp-0001/statement/2025-01", timeout=30)
        except urllib.error.HTTPError as error:
            assert error.code == 503
            body = error.read().decode()
            assert "the decoded log is not there" in body and "predates" not in body
        else:
            raise AssertionError("a statement was served without the decoded log")


def test_a_statement_typed_with_bare_slashes_is_still_a_statement(odd_site: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"{odd_site['base']}/employee/a/../b/statement/2025-01", timeout=30) as got:
        assert f"<title>Reward statement {ODD_EMPLOYEE} 2025-01</title>" in got.read().decode()
    with urllib.request.urlopen(f"{odd_site['base']}/employee/d%2Fstatement%2F2025-01", timeout=30) as got:
        assert f"<h1>Employee {ODD_STATEMENT}</h1>" in got.read().decode()


def test_a_long_team_or_employee_id_is_echoed_cut_short_on_the_404_page(site: dict[str, Any]) -> None:
    long_id = "x" * 5000
    for path in (f"/team/{long_id}", f"/employee/{long_id}", f"/employee/{long_id}/statement/2025-01"):
        status, body = _get(site["base"] + path)
        assert status == 404, (path[:40], status)
        assert "x" * 80 + "…" in body and "x" * 81 not in body, path[:40]
    # A team lead is refused another team before it is looked up: the 403 quotes it cut short too.
    status, body = _get(site["base"] + f"/team/{long_id}", "ada")
    assert status == 403 and "x" * 80 + "…" in body and "x" * 81 not in body, status
