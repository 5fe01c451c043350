"""The read-only web application: teams, employees, versions, complaints.

Every route answers GET (and HEAD) only; any other method is refused by the router (405).
Pages read the projection database through read-only connections (`web.data`), so nothing
on a page can change anything. With a users file, HTTP Basic authentication decides who
is asking, and a lead sees only the teams listed for them (403 for any other team).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import duckdb
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from crm_ledger.errors import CrmLedgerError
from crm_ledger.visible import visible
from projections.log import missing_log, missing_log_advice
from projections.store import quoted_reference
from replay.diff import diff_versions
from rewards.errors import PeriodError
from rewards.periods import parse_period
from web import data, pages
from web.errors import BadRequestError, ForbiddenError, NotFoundError, WebError
from web.statements import statement_from_events
from web.users import LOCAL_USER, User, Users

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: No script, no frame, nothing from elsewhere: the pages are static documents with inline SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _UnauthorizedError(WebError):
    """No or wrong credentials (HTTP 401)."""


#: Reward scores run from 0 to 100 (100 times the weighted sum of components in 0..1, weights summing to 1).
SCORE_MIN, SCORE_MAX = 0.0, 100.0
DEFAULT_THRESHOLD = 50.0
#: The end of a statement's address, as sent (slashes of an id arrive encoded as %2F).
_STATEMENT_TAIL = re.compile(r"/statement/([^/]+)\Z")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _shown(text: str) -> str:
    """A parameter as quoted in an error message, cut short: the page must not echo a megabyte."""
    return repr(text if len(text) <= 40 else text[:40] + "…")


def score_threshold(text: str | None) -> float:
    """The `threshold` parameter: a score from 0 to 100, 50 when absent or empty."""
    if not text:
        return DEFAULT_THRESHOLD
    # Plain ASCII decimals only: float() would also take "1_0", "1e1" and digits of other scripts.
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    # Anything else is NaN ("nan", "inf" included), which fails the range check.
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise BadRequestError(
            f"threshold must be a score from {SCORE_MIN:g} to {SCORE_MAX:g}, got {_shown(text)}"
        )
    return value


def _query_id(request: Request, route: str) -> str:
    """The `id` parameter of a page addressed as `/ROUTE/?id=ID` (see `pages.page_link`)."""
    given = request.query_params.get("id")
    if not given:
        raise BadRequestError(f"give the {route}'s id: /{route}/ID or /{route}/?id=ID")
    return given


def month_parameter(text: str, name: str) -> str:
    """A `YYYY-MM` month from the request, or a 400 naming the parameter."""
    try:
        return parse_period(text)
    except PeriodError:
        raise BadRequestError(f"{name} must be a month YYYY-MM (e.g. 2025-01), got {_shown(text)}") from None


def _displayed(value: Any) -> Any:
    """Every value a page shows, with the characters that would act on it (a right-to-left
    override that makes one id read as another) as visible escapes (`crm_ledger.visible`)."""
    if isinstance(value, Markup):
        return Markup(visible(value))
    return visible(value) if isinstance(value, str) else value


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]), finalize=_displayed
    )
    env.filters["num"] = pages.fmt_number
    env.filters["pct"] = pages.fmt_rate
    env.globals["kpi_label"] = pages.kpi_label
    env.globals["link"] = pages.page_link
    env.globals["id_fields"] = pages.id_fields
    env.globals["statement_link"] = pages.statement_link
    return env


def create_app(db: Path, users: Users | None = None) -> Starlette:
    """The application over the projection database `db`; `users` None means no sign-in."""
    source = data.Reader(db)
    env = _templates()

    def user_of(request: Request) -> User:
        if users is None:
            return LOCAL_USER
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name, password = "", ""
            found = users.authenticate(name, password)
            if found is not None:
                return found
        raise _UnauthorizedError("sign in with your user name and password")

    def render(
        request: Request, template: str, user: User, status: int = 200, **context: Any
    ) -> HTMLResponse:
        body = env.get_template(template).render(request=request, user=user, **context)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def page(handler: Callable[[Request, User], Response]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                user = user_of(request)
            except _UnauthorizedError as error:
                return PlainTextResponse(
                    str(error),
                    status_code=401,
                    headers={
                        **SECURITY_HEADERS,
                        "WWW-Authenticate": 'Basic realm="crm-ledger", charset="UTF-8"',
                    },
                )
            try:
                return handler(request, user)
            except BadRequestError as error:
                return render(request, "error.html", user, 400, title="Bad request", message=str(error))
            except ForbiddenError as error:
                return render(request, "error.html", user, 403, title="Not yours to see", message=str(error))
            except NotFoundError as error:
                return render(request, "error.html", user, 404, title="Not found", message=str(error))
            except CrmLedgerError as error:  # a missing or busy database, a bad version
                return render(request, "error.html", user, 503, title="Not available", message=str(error))
            except duckdb.IOException as error:
                # The file was replaced or damaged after the start-up check.
                message = f"the projection database cannot be read: {str(error).splitlines()[0]}"
                return render(request, "error.html", user, 503, title="Not available", message=message)
            except duckdb.CatalogException as error:
                if missing_log(error):
                    message = missing_log_advice(db)
                    return render(request, "error.html", user, 503, title="Not available", message=message)
                # A version promoted before a read model existed has no stable name for it yet.
                message = (
                    f"{str(error).splitlines()[0]}: the promoted version predates this page's read models; "
                    "run `crm-ledger project`, then `crm-ledger promote` it again"
                )
                return render(request, "error.html", user, 503, title="Not available", message=message)

        return endpoint

    def index(request: Request, user: User) -> Response:
        with source.connect() as con:
            view = data.resolve(con, request.query_params.get("version"))
            all_teams = data.teams(con, view)
            known = data.versions(con)
        shown = [t for t in all_teams if user.can_see(t["team_id"])]
        return render(request, "index.html", user, view=view, teams=shown, versions=known)

    def team(request: Request, user: User) -> Response:
        team_id = request.path_params["team_id"] or _query_id(request, "team")
        if not user.can_see(team_id):
            raise ForbiddenError(f"team {quoted_reference(team_id)} is not among your teams")
        with source.connect() as con:
            view = data.resolve(con, request.query_params.get("version"))
            if not data.team_exists(con, view, team_id):
                raise NotFoundError(f"no team {quoted_reference(team_id)} in version {view.name}")
            context = pages.team_page(
                view,
                team_id,
                kpis=data.team_kpis(con, view, team_id),
                goals=data.team_goals(con, view, team_id),
                progress=data.goal_progress(con, view, team_id),
                scores=data.member_scores(con, view, team_id),
                evidence=data.evidence(con, view, team_id),
            )
            known = data.versions(con)
        return render(request, "team.html", user, view=view, versions=known, **context)

    def employee_or_statement(request: Request, user: User) -> Response:
        rest = request.path_params["rest"]
        if not rest:
            # The query-string form (`/employee/?id=..`): ids no path segment can carry.
            employee_id = _query_id(request, "employee")
            month = request.query_params.get("statement")
            if month is not None:
                return statement(user, employee_id, month)
            return employee(request, user, employee_id)
        # Only a "/statement/MONTH" typed with bare slashes asks for a statement: an id that
        # ends like that has its slashes encoded in links, which the decoded path forgets.
        raw = request.scope.get("raw_path") or request.url.path.encode()
        tail = _STATEMENT_TAIL.search(raw.decode("latin-1"))
        if tail is not None:
            suffix = f"/statement/{unquote(tail[1])}"
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return statement(user, rest.removesuffix(suffix), unquote(tail[1]))
        return employee(request, user, rest)

    def employee(request: Request, user: User, employee_id: str) -> Response:
        with source.connect() as con:
            view = data.resolve(con, request.query_params.get("version"))
            teams = data.employee_teams(con, view, employee_id)
            if not teams:
                raise NotFoundError(f"no employee {quoted_reference(employee_id)} in version {view.name}")
            if not any(user.can_see(t) for t in teams):
                raise ForbiddenError(f"employee {employee_id!r} was never in one of your teams")
            scores = data.employee_scores(con, view, employee_id)
            periods = [s["period"] for s in scores]
            asked = request.query_params.get("period")
            period = month_parameter(asked, "period") if asked else (periods[-1] if periods else "")
            if period and period not in periods:
                raise NotFoundError(f"employee {quoted_reference(employee_id)} has no score for {period!r}")
            context = pages.employee_page(
                view,
                employee_id,
                teams=teams,
                scores=scores,
                components=data.employee_components(con, view, employee_id),
                statements=data.employee_statements(con, employee_id),
                period=period,
                events=data.events_behind(con, employee_id, period) if period else [],
            )
            known = data.versions(con)
        return render(request, "employee.html", user, view=view, versions=known, **context)

    def statement(user: User, employee_id: str, month: str) -> Response:
        period = month_parameter(month, "the statement's month")
        with source.connect() as con:
            view = data.resolve(con, None)
            teams = data.employee_teams(con, view, employee_id)
            if not teams:
                raise NotFoundError(f"no employee {quoted_reference(employee_id)} in version {view.name}")
            if not any(user.can_see(t) for t in teams):
                raise ForbiddenError(f"employee {employee_id!r} was never in one of your teams")
            events = data.statement_events(con, period)
        html = statement_from_events(events, employee_id, period).to_html()
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    def versions_page(request: Request, user: User) -> Response:
        threshold = score_threshold(request.query_params.get("threshold"))
        with source.connect() as con:
            known = data.versions(con)
            ready = [v for v in known if v.built_at is not None]
            promoted = next((v for v in known if v.promoted), None)
            old_ref = request.query_params.get("old") or (promoted.version if promoted else "")
            new_ref = request.query_params.get("new") or ""
            report = None
            scope: dict[str, str | None] = {}
            if old_ref and new_ref:
                old, new = data.find_version(con, old_ref), data.find_version(con, new_ref)
                old_ref, new_ref = old.version, new.version  # a prefix or name, shown as what it found
                if old.built_at is None or new.built_at is None:
                    raise NotFoundError("both versions must be built before they can be compared")
                report = diff_versions(con, old, new, threshold)
                new_view = data.resolve(con, new.version)
                old_view = data.resolve(con, old.version)
                for v in (old_view, new_view):
                    for row in data.rows(con, f"SELECT employee_id, team_id FROM {v.table('reward_score')}"):
                        scope.setdefault(row["employee_id"], row["team_id"])
        context = pages.versions_page(report, user, scope)
        return render(
            request, "versions.html", user, versions=ready, old=old_ref, new=new_ref, report=report, **context
        )

    def complaints(request: Request, user: User) -> Response:
        with source.connect() as con:
            view = data.resolve(con, request.query_params.get("version"))
            visible = None if user.sees_everything else sorted(user.teams)
            context = pages.complaints_page(
                kpis=data.complaint_kpis(con, view, visible),
                products=data.complaint_products(con, view, visible),
                issues=data.complaint_issues(con, visible),
                articles=data.complaint_articles(con, visible),
            )
            known = data.versions(con)
        return render(request, "complaints.html", user, view=view, versions=known, **context)

    def health(request: Request) -> Response:
        return PlainTextResponse("ok", headers=SECURITY_HEADERS)

    routes = [
        Route("/", page(index), methods=["GET"]),
        # Ids may hold "/" (a CFPB company name is a team id): matched as paths; an
        # employee's page and their statements share one route (see employee_or_statement).
        Route("/team/{team_id:path}", page(team), methods=["GET"]),
        Route("/employee/{rest:path}", page(employee_or_statement), methods=["GET"]),
        Route("/versions", page(versions_page), methods=["GET"]),
        Route("/complaints", page(complaints), methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _plain_error, 500: _internal_error},
    )


def _plain_error(request: Request, error: Exception) -> Response:
    """The router's own answers (no such page: 404, a method other than GET: 405) with the
    pages' headers: they went out without them (cacheable, no Content-Security-Policy)."""
    if not isinstance(error, HTTPException):  # registered for HTTPException only
        raise error
    headers = {**SECURITY_HEADERS, **(error.headers or {})}
    return PlainTextResponse(error.detail, status_code=error.status_code, headers=headers)


def _internal_error(request: Request, error: Exception) -> Response:
    """A fault no page expected: one line for the browser (the server's log has the rest)."""
    message = "internal error: see the server's log"
    return PlainTextResponse(message, status_code=500, headers=SECURITY_HEADERS)
