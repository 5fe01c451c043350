"""Service read models (sla_case, field KPIs, retention, profile) against an independent oracle."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from projections.engine import Projector
from projections.sources import LedgerSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB
from tests.projections.test_projections import build, load, make_history
from tests.service_oracle import ServiceOracle

SERVICE_SPEC = DEFAULT_SPEC.parent / "service.toml"
#: The default spec's hash: versions built before the service models keep their identity.
DEFAULT_SPEC_HASH = "3a47b0bda77bb868ce5dd8c8081d894556445fe5247b12254b6e288af3934d27"


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)


@pytest.fixture
def built(tmp_path: Path, app: LedgerApplication, settings: Settings) -> tuple[ProjectionDB, ServiceOracle]:
    path = tmp_path / "h.jsonl"
    records = make_history(path, customers=500, employees=16, months=5, seed=21)
    load(app, path)
    return build(settings, LedgerSource(app), app), ServiceOracle(records)


def test_service_models_match_an_independent_oracle(built: tuple[ProjectionDB, ServiceOracle]) -> None:
    db, oracle = built
    con = db.connection

    cases = oracle.sla_case()
    rows = con.execute(
        "SELECT case_id, contract_id, sla_hours, epoch_ms(accepted_at), epoch_ms(resolved_at), breached FROM sla_case"
    ).fetchall()
    assert {r[0] for r in rows} == set(cases)
    for case_id, contract, hours, accepted, resolved, breached in rows:
        want = cases[case_id]
        assert (contract, hours, accepted, resolved, breached) == (
            want["contract_id"],
            want["sla_hours"],
            want["accepted_at"],
            want["resolved_at"],
            want["breached"],
        ), case_id
    assert sum(1 for c in cases.values() if c["breached"]) > 0
    assert sum(1 for c in cases.values() if c["breached"] is False) > 0

    names = ("sla_n", "sla_met", "visits", "visits_on_time", "ftf_n", "ftf_fixed")
    kpis = con.execute(
        f"SELECT employee_id, team_id, period, {', '.join(names)} FROM kpi_employee_month"
    ).fetchall()
    expected = oracle.kpi_employee_month()
    got = {(r[0], r[1], r[2]): dict(zip(names, r[3:], strict=True)) for r in kpis}
    for key, want in expected.items():
        assert key in got, key
        for name in names:
            assert got[key][name] == want.get(name, 0), (key, name)
    for key, row in got.items():
        if key not in expected:
            assert all(row[name] == 0 for name in names), key
    assert sum(w.get("visits", 0) for w in expected.values()) > 20
    rates = con.execute(
        "SELECT sum(visits_on_time) / sum(visits), sum(ftf_fixed) / sum(ftf_n), sum(sla_met) / sum(sla_n) "
        "FROM kpi_team_month"
    ).fetchone()
    assert rates is not None and all(0 < r < 1 for r in rates)

    retention = oracle.retention()
    columns = (
        "up_for_renewal",
        "renewed",
        "churned",
        "replaced",
        "merged",
        "open",
        "value_up",
        "value_decided",
        "value_retained",
        "renewal_rate",
        "nrr_pct",
    )
    rows = con.execute(
        f"SELECT segment, region, period, {', '.join(columns)} FROM retention_month "
        "WHERE (segment = '(all)') = (region = '(all)')"
    ).fetchall()
    assert {r[:3] for r in rows} == set(retention)
    for row in rows:
        want = retention[row[:3]]
        for name, value in zip(columns, row[3:], strict=True):
            summed = 0.0 if value is None and name in ("value_decided", "value_retained") else value
            assert _close(summed, want[name]), (row[:3], name, value, want[name])
    assert sum(r["churned"] for k, r in retention.items() if k[0] == "(all)") > 0
    db.close()


def test_profile_shows_contracts_installed_base_and_visits(built: tuple[ProjectionDB, ServiceOracle]) -> None:
    db, oracle = built
    rows = db.connection.execute(
        "SELECT customer_id, active_contracts, contract_value, installed_products, len(installed_product_list), "
        "sla_covered, open_field_visits FROM customer_profile"
    ).fetchall()
    active = {cid: runs[-1] for cid, runs in oracle.runs.items() if runs[-1].ended_at is None}
    per_customer: dict[str, int] = {}
    for run in active.values():
        per_customer[run.customer_id] = per_customer.get(run.customer_id, 0) + 1
    for customer_id, contracts, value, products, listed, covered, _ in rows:
        assert contracts == per_customer.get(customer_id, 0), customer_id
        assert products == listed
        assert (value > 0) == (contracts > 0)
        if covered:
            assert contracts > 0
    assert any(r[3] > 0 for r in rows) and any(r[5] for r in rows)
    db.close()


def test_default_spec_is_unchanged_and_the_service_spec_rewards_sla_and_first_time_fix(
    built: tuple[ProjectionDB, ServiceOracle], app: LedgerApplication
) -> None:
    db, _ = built
    assert load_spec(DEFAULT_SPEC).content_hash == DEFAULT_SPEC_HASH
    spec = load_spec(SERVICE_SPEC)
    assert {c.kpi for c in spec.components} >= {"sla_met_rate", "ftf_rate", "on_time_rate"}
    version = db.ensure_version(spec, SERVICE_SPEC.read_text(), LedgerSource(app).name)
    Projector(db, version, LedgerSource(app), app.codec).run()
    schema = db.find_version(version.version).schema
    rows = db.connection.execute(
        f"SELECT component, count(*), avg(value) FROM {schema}.reward_components "
        "WHERE component IN ('sla', 'first_time_fix') GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == ["first_time_fix", "sla"]
    assert all(0 < r[2] <= 1 for r in rows)
    scores = db.connection.execute(f"SELECT min(score), max(score) FROM {schema}.reward_score").fetchone()
    assert scores is not None and 0 <= scores[0] < scores[1] <= 100
    db.close()
