"""Errors of the web pages."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError


class WebError(CrmLedgerError):
    """The web application cannot start or serve (a bad users file, a missing database)."""


class NotFoundError(WebError):
    """A team, employee, version or page that does not exist (HTTP 404)."""


class ForbiddenError(WebError):
    """The signed-in user may not see this team (HTTP 403)."""


class BadRequestError(WebError):
    """A query or path parameter that is not what the page takes (HTTP 400)."""
