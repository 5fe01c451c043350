"""Contracts, installed base and field visits on the write model: rules, filled fields, parsing."""

from __future__ import annotations

from typing import Any

import pytest

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.domain import Contract, Site, aggregate_id
from ledger.errors import ValidationError
from ledger.records import RecordParser
from tests.factory import basics, rec


def record(
    app: LedgerApplication, parser: RecordParser, *raws: dict[str, Any]
) -> list[tuple[str, str | None]]:
    outcomes = app.record([parser.parse(r) for r in raws])
    return [(o.status, o.error.field if o.error else None) for o in outcomes]


def reasons(app: LedgerApplication, parser: RecordParser, *raws: dict[str, Any]) -> list[str | None]:
    return [str(o.error) if o.error else None for o in app.record([parser.parse(r) for r in raws])]


@pytest.fixture
def ready(app: LedgerApplication, parser: RecordParser) -> LedgerApplication:
    assert {s for s, _ in record(app, parser, *basics())} == {"accepted"}
    return app


OK = ("accepted", None)


def started(contract_id: str = "k-1", customer_id: str = "c1", **fields: Any) -> dict[str, Any]:
    base = {
        "contract_id": contract_id,
        "customer_id": customer_id,
        "plan": "standard",
        "annual_value": 1200.0,
        "currency": "EUR",
        "starts_on": "2026-01-01",
        "ends_on": "2027-01-01",
        "sla_hours_high": 8,
        "sla_hours_medium": 24,
    }
    at = fields.pop("at", "2026-01-02T09:00:00Z")
    return rec("ContractStarted", at, **{**base, **fields})


def installed(site: str = "s1", customer: str = "c1", serial: str = "SN1", **fields: Any) -> dict[str, Any]:
    at = fields.pop("at", "2026-01-03T09:00:00Z")
    return rec(
        "ProductInstalled",
        at,
        site_id=site,
        customer_id=customer,
        product="boiler",
        serial=serial,
        employee_id="e1",
        **fields,
    )


def opened(case_id: str = "q1", customer: str = "c1", at: str = "2026-01-10T09:00:00Z") -> dict[str, Any]:
    return rec("CaseOpened", at, case_id=case_id, customer_id=customer, kind="incident", channel="phone")


def scheduled(visit: str = "v1", case: str = "q1", **fields: Any) -> dict[str, Any]:
    at = fields.pop("at", "2026-01-10T10:00:00Z")
    base = {
        "visit_id": visit,
        "case_id": case,
        "employee_id": "e2",
        "site_id": "s1",
        "window_start": "2026-01-11T08:00:00Z",
        "window_end": "2026-01-11T12:00:00Z",
    }
    return rec("FieldVisitScheduled", at, **{**base, **fields})


def completed(visit: str = "v1", **fields: Any) -> dict[str, Any]:
    at = fields.pop("at", "2026-01-11T11:00:00Z")
    base = {"visit_id": visit, "arrived_at": "2026-01-11T09:30:00Z", "fixed": True}
    return rec("FieldVisitCompleted", at, **{**base, **fields})


# -- contracts ----------------------------------------------------------------------------
def test_contract_lifecycle_fills_the_customer(ready: LedgerApplication, parser: RecordParser) -> None:
    renewal = rec(
        "ContractRenewed",
        "2026-10-01T09:00:00Z",
        contract_id="k-1",
        ends_on="2028-01-01",
        annual_value=1300.0,
    )
    end = rec("ContractEnded", "2026-11-01T09:00:00Z", contract_id="k-1", reason="churned")
    assert record(ready, parser, started(), renewal, end) == [OK, OK, OK]
    facts = ready.events.get(aggregate_id("contract", "k-1"))
    assert [e.data["customer_id"] for e in facts] == ["c1", "c1", "c1"]  # type: ignore[attr-defined]


def test_contract_dates_are_ordered(ready: LedgerApplication, parser: RecordParser) -> None:
    assert record(ready, parser, started(ends_on="2025-12-31")) == [("rejected", "ends_on")]
    assert record(ready, parser, started(ends_on="2026-01-01")) == [("rejected", "ends_on")]
    assert record(ready, parser, started()) == [OK]
    shorter = rec(
        "ContractRenewed", "2026-06-01T09:00:00Z", contract_id="k-1", ends_on="2026-12-01", annual_value=1.0
    )
    assert record(ready, parser, shorter) == [("rejected", "ends_on")]


def test_no_two_active_contracts_with_one_id(ready: LedgerApplication, parser: RecordParser) -> None:
    assert record(ready, parser, started(), started(at="2026-02-01T09:00:00Z")) == [
        OK,
        ("rejected", "contract_id"),
    ]
    end = rec("ContractEnded", "2026-03-01T09:00:00Z", contract_id="k-1", reason="replaced")
    # Once ended, the id may start again, for the same customer only.
    assert record(
        ready,
        parser,
        end,
        started(at="2026-04-01T09:00:00Z", customer_id="c2"),
        started(at="2026-04-02T09:00:00Z", starts_on="2026-04-01", ends_on="2027-04-01"),
    ) == [OK, ("rejected", "customer_id"), OK]


def test_an_ended_contract_is_history(ready: LedgerApplication, parser: RecordParser) -> None:
    end = rec("ContractEnded", "2026-03-01T09:00:00Z", contract_id="k-1", reason="churned")
    again = rec("ContractEnded", "2026-03-02T09:00:00Z", contract_id="k-1", reason="churned")
    renew = rec(
        "ContractRenewed", "2026-03-03T09:00:00Z", contract_id="k-1", ends_on="2029-01-01", annual_value=5.0
    )
    assert record(ready, parser, started(), end, again, renew) == [
        OK,
        OK,
        ("rejected", "contract_id"),
        ("rejected", "contract_id"),
    ]


def test_a_renewal_naming_another_customer_is_refused(ready: LedgerApplication, parser: RecordParser) -> None:
    renewal = rec(
        "ContractRenewed",
        "2026-10-01T09:00:00Z",
        contract_id="k-1",
        customer_id="c2",
        ends_on="2028-01-01",
        annual_value=1300.0,
    )
    assert record(ready, parser, started(), renewal) == [OK, ("rejected", "customer_id")]
    unknown = rec("ContractEnded", "2026-10-01T09:00:00Z", contract_id="k-9", reason="churned")
    assert record(ready, parser, unknown) == [("rejected", "contract_id")]


def test_contract_field_rules(parser: RecordParser) -> None:
    for field, value in (
        ("currency", "eur"),
        ("annual_value", -1),
        ("annual_value", 1e33),  # beyond what the read models' sums can hold
        ("sla_hours_high", 0),
        ("plan", " "),
    ):
        with pytest.raises(ValidationError) as caught:
            parser.parse(started(**{field: value}))
        assert caught.value.field == field
    with pytest.raises(ValidationError) as caught:
        parser.parse(rec("ContractEnded", contract_id="k-1", reason="bored"))
    assert caught.value.field == "reason"


# -- timestamps inside records ------------------------------------------------------------
def test_timestamp_fields_take_iso_text_or_epoch_millis(parser: RecordParser) -> None:
    iso = parser.parse(started(starts_on="2026-01-01T00:00:00Z"))
    naive = parser.parse(started(starts_on="2026-01-01T00:00:00"))
    epoch = parser.parse(started(starts_on=1_767_225_600_000))
    csv_epoch = parser.parse(started(starts_on="1767225600000"))
    assert {f.data["starts_on"] for f in (iso, naive, epoch, csv_epoch)} == {1_767_225_600_000}


@pytest.mark.parametrize("value", ["soon", True, 1.5e12, "1850-01-01", [1]])
def test_bad_timestamp_fields_are_rejected(parser: RecordParser, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        parser.parse(started(ends_on=value), strict=True)
    assert caught.value.field == "ends_on"


def test_a_missing_timestamp_field_is_required(parser: RecordParser) -> None:
    raw = started()
    del raw["ends_on"]
    with pytest.raises(ValidationError) as caught:
        parser.parse(raw)
    assert caught.value.field == "ends_on"


# -- installed base -----------------------------------------------------------------------
def test_a_site_belongs_to_one_customer(ready: LedgerApplication, parser: RecordParser) -> None:
    assert record(ready, parser, installed(), installed(customer="c2", serial="SN2")) == [
        OK,
        ("rejected", "customer_id"),
    ]


def test_install_and_remove(ready: LedgerApplication, parser: RecordParser) -> None:
    removed = rec("ProductRemoved", "2026-02-01T09:00:00Z", site_id="s1", serial="SN1")
    assert record(
        ready,
        parser,
        installed(),
        installed(at="2026-01-04T09:00:00Z"),
        removed,
        rec("ProductRemoved", "2026-02-02T09:00:00Z", site_id="s1", serial="SN1"),
        rec("ProductRemoved", "2026-02-02T09:00:00Z", site_id="s9", serial="SN1"),
        rec("ProductRemoved", "2026-02-02T09:00:00Z", site_id="s1", serial="SN1", customer_id="c2"),
    ) == [
        OK,
        ("rejected", "serial"),
        OK,
        ("rejected", "serial"),
        ("rejected", "site_id"),
        ("rejected", "customer_id"),
    ]


def test_an_installation_needs_a_known_customer_and_active_installer(
    ready: LedgerApplication, parser: RecordParser
) -> None:
    left = rec("EmployeeLeft", "2026-01-02T00:00:00Z", employee_id="e1")
    assert record(ready, parser, installed(customer="c9"), left, installed()) == [
        ("rejected", "customer_id"),
        OK,
        ("rejected", "employee_id"),
    ]


# -- field visits -------------------------------------------------------------------------
def test_a_visit_lifecycle(ready: LedgerApplication, parser: RecordParser) -> None:
    assert record(ready, parser, installed(), opened(), scheduled(), completed()) == [OK] * 4
    assert record(ready, parser, completed(at="2026-01-11T12:00:00Z")) == [("rejected", "visit_id")]
    cancel = rec("FieldVisitCancelled", "2026-01-12T09:00:00Z", visit_id="v1", reason="not needed")
    assert record(ready, parser, cancel) == [("rejected", "visit_id")]


def test_a_visit_belongs_to_an_open_case_of_the_same_customer(
    ready: LedgerApplication, parser: RecordParser
) -> None:
    steps = [
        rec("CaseAccepted", "2026-01-10T09:10:00Z", case_id="q2", employee_id="e1"),
        rec("CaseResolved", "2026-01-10T09:20:00Z", case_id="q2", employee_id="e1", resolution_code="fixed"),
    ]
    assert record(
        ready,
        parser,
        installed(),
        installed(site="s2", customer="c2", serial="SN9"),
        opened(),
        opened("q2"),
        *steps,
        scheduled("v1", customer_id="c2"),
        scheduled("v2", site_id="s2"),
        scheduled("v3", case="q2"),
        scheduled("v4", case="q9"),
        scheduled("v5", site_id="s9"),
        scheduled("v6", window_end="2026-01-11T08:00:00Z"),
        scheduled("v7", at="2026-01-10T08:00:00Z"),
        scheduled("v8", site_id=None),
    ) == [OK] * 6 + [
        ("rejected", "customer_id"),
        ("rejected", "site_id"),
        ("rejected", "case_id"),
        ("rejected", "case_id"),
        ("rejected", "site_id"),
        ("rejected", "window_end"),
        ("rejected", "occurred_at"),
        OK,
    ]


def test_a_completion_names_the_visits_engineer(ready: LedgerApplication, parser: RecordParser) -> None:
    assert record(
        ready,
        parser,
        installed(),
        opened(),
        scheduled(),
        completed(employee_id="e1"),
        completed(customer_id="c2"),
        completed(arrived_at="2026-01-11T11:30:00Z"),
        completed(arrived_at="2026-01-09T11:30:00Z"),
        completed(employee_id="e2", customer_id="c1"),
    ) == [OK] * 3 + [
        ("rejected", "employee_id"),
        ("rejected", "customer_id"),
        ("rejected", "arrived_at"),
        ("rejected", "arrived_at"),
        OK,
    ]


def test_filled_fields_make_a_resent_fact_a_duplicate(ready: LedgerApplication, parser: RecordParser) -> None:
    done = completed()
    assert record(ready, parser, installed(), opened(), scheduled(), done) == [OK] * 4
    assert record(ready, parser, done) == [("duplicate", None)]
    assert record(ready, parser, {**done, "employee_id": "e2", "customer_id": "c1"}) == [("duplicate", None)]
    assert record(ready, parser, {**done, "fixed": False})[0][0] == "conflict"


def test_reasons_name_the_owner(ready: LedgerApplication, parser: RecordParser) -> None:
    found = reasons(ready, parser, installed(), installed(customer="c2", serial="SN2"))
    assert found[1] is not None and "belongs to customer 'c1'" in found[1]


def test_aggregates_with_repeated_first_types_reload_from_the_store(
    ready: LedgerApplication, parser: RecordParser, settings: Settings
) -> None:
    """A site's second installation and a restarted contract are later facts, not creations."""
    end = rec("ContractEnded", "2026-03-01T09:00:00Z", contract_id="k-1", reason="churned")
    again = started(at="2026-04-01T09:00:00Z", starts_on="2026-04-01", ends_on="2027-04-01")
    assert record(ready, parser, installed(), installed(serial="SN2"), started(), end, again) == [OK] * 5
    fresh = LedgerApplication(settings.eventsourcing_env())
    try:
        site = fresh.repository.get(aggregate_id("site", "s1"))
        contract = fresh.repository.get(aggregate_id("contract", "k-1"))
        assert isinstance(site, Site) and sorted(site.installed) == ["SN1", "SN2"]
        assert isinstance(contract, Contract) and contract.active and contract.version == 3
        assert record(fresh, parser, installed(serial="SN2", at="2026-05-01T09:00:00Z")) == [
            ("rejected", "serial")
        ]
    finally:
        fresh.close()


def test_csv_cells_convert_like_other_fields(parser: RecordParser) -> None:
    row = {
        "type": "FieldVisitCompleted",
        "event_id": "8d6c0e0e-0b1a-4c53-9a52-000000000036",
        "occurred_at": "2026-01-08 11:00:00",
        "visit_id": "v1",
        "arrived_at": "1767865200000",
        "fixed": "yes",
        "parts_used": "valve; fuse",
        "customer_id": "",
    }
    fact = parser.parse(row)
    assert fact.data["arrived_at"] == 1_767_865_200_000
    assert fact.data["fixed"] is True and fact.data["parts_used"] == ["valve", "fuse"]
    assert fact.data["customer_id"] is None  # filled in by the ledger
    with pytest.raises(ValidationError) as caught:
        parser.parse({**row, "fixed": "yes"}, strict=True)
    assert caught.value.field in ("arrived_at", "fixed")
