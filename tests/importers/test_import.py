"""Importing complaint history: the CFPB export as published, and a mapped CSV."""

from __future__ import annotations

import csv
import json
import statistics
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from crm_ledger.settings import Settings
from importers.cfpb import read_cfpb
from importers.mapped_csv import read_mapped_csv
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records
from ledger.records import RecordParser
from projections.service import project_promoted
from tests.helpers import run_cli

DATA = Path(__file__).parent.parent / "data"
EXAMPLES = Path(__file__).parents[2] / "examples"
CURRENT = DATA / "cfpb_current.csv"
OLDER = DATA / "cfpb_2014.csv"


def run(app: LedgerApplication, records: Any, rejects: Path | None = None) -> Any:
    sink = RejectSink(rejects, echo=None)
    try:
        return ingest_records(app, records, sink, batch_size=4)
    finally:
        sink.close()


def test_cfpb_exact_counts_rejects_and_idempotency(
    app: LedgerApplication, parser: RecordParser, tmp_path: Path
) -> None:
    rejects = tmp_path / "rejects.jsonl"
    first = run(app, read_cfpb(CURRENT, parser), rejects)
    assert (first.accepted, first.duplicates, first.rejected) == (28, 0, 2)
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(e["record"], e["field"]) for e in entries] == [
        ("cfpb_current.csv:9", "Date received"),
        ("cfpb_current.csv:10", "Complaint ID"),
    ]
    older = run(app, read_cfpb(OLDER, parser))
    assert (older.accepted, older.duplicates, older.rejected) == (24, 1, 0)  # EQUIFAX's desk exists
    again = run(app, read_cfpb(CURRENT, parser))
    assert (again.accepted, again.duplicates, again.rejected) == (0, 28, 2)
    assert app.max_position() == 52


def test_cfpb_mapping_of_one_complaint(app: LedgerApplication, parser: RecordParser) -> None:
    run(app, read_cfpb(OLDER, parser))
    records = [app.codec.decode(n.state) for n in app.read_notifications(1, 100)]
    first = [
        (t, r)
        for t, r in records
        if r.get("case_id") == "cfpb:1002001" or r.get("customer_id") == "cfpb-consumer:1002001"
    ]
    assert [t for t, _ in first] == [
        "CustomerRegistered",
        "CaseOpened",
        "CaseAccepted",
        "CaseResolved",
        "CaseReopened",
    ]
    opened = first[1][1]
    assert opened["channel"] == "web" and opened["team_id"] == "WELLS FARGO & COMPANY"
    assert opened["topic"] == "Mortgage" and opened["summary"] == "Loan servicing, payments, escrow account"
    assert first[2][1]["timely"] is True and first[2][1]["employee_id"] == "company:WELLS FARGO & COMPANY"
    assert first[3][1]["resolution_code"] == "explanation"


def expected_kpis(files: list[Path]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Plain Python over the CSV rows: the complaint KPIs docs/imports.md defines."""
    relief = {"Closed with monetary relief", "Closed with non-monetary relief", "Closed with relief"}
    closed = relief | {"Closed with explanation", "Closed without relief", "Closed"}
    channels = {
        "web": "web",
        "web referral": "web",
        "referral": "referral",
        "phone": "phone",
        "postal mail": "post",
        "fax": "fax",
        "email": "email",
    }
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for path in files:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    received = _date(row["Date received"])
                except ValueError:
                    continue
                if not row["Complaint ID"]:
                    continue
                sent = _date(row["Date sent to company"]) if row["Date sent to company"] else None
                item = {
                    "received": received,
                    "sent": max(sent, received) if sent else None,
                    "response": row["Company response to consumer"],
                    "timely": row["Timely response?"],
                }
                period = received.strftime("%Y-%m")
                channel = channels.get(row["Submitted via"].lower(), "other")
                product = row["Product"] or "(none)"
                for key in (
                    (row["Company"], period, "(all)", "(all)"),
                    (row["Company"], period, channel, "(all)"),
                    (row["Company"], period, "(all)", product),
                ):
                    groups[key].append(item)
    result = {}
    for key, items in groups.items():
        n = len(items)
        timely = [i["timely"] == "Yes" for i in items if i["timely"] in ("Yes", "No") and i["sent"]]
        days = [(i["sent"] - i["received"]).total_seconds() / 86400 for i in items if i["sent"]]
        result[key] = {
            "complaints_received": n,
            "closed": sum(1 for i in items if i["response"] in closed and i["sent"]),
            "relief_rate": sum(1 for i in items if i["response"] in relief and i["sent"]) / n,
            "monetary_relief_rate": sum(
                1 for i in items if i["response"] == "Closed with monetary relief" and i["sent"]
            )
            / n,
            "timely_rate": sum(timely) / len(timely) if timely else None,
            "median_days_to_company": statistics.median(days) if days else None,
        }
    return result


def _date(text: str) -> datetime:
    for pattern in ("%Y-%m-%d", "%m/%d/%Y"):
        try:
            return datetime.strptime(text, pattern)
        except ValueError:
            continue
    raise ValueError(text)


def test_complaint_kpis_match_a_plain_python_computation(settings: Settings, parser: RecordParser) -> None:
    app = LedgerApplication(settings.eventsourcing_env())
    run(app, read_cfpb(CURRENT, parser))
    run(app, read_cfpb(OLDER, parser))
    project_promoted(settings, "ledger", None, follow=False)
    expected = expected_kpis([CURRENT, OLDER])
    with duckdb.connect(str(settings.projections_db), read_only=True) as con:
        rows = con.execute(
            "SELECT team_id, period, channel, product, complaints_received, closed, relief_rate, "
            "monetary_relief_rate, timely_rate, median_days_to_company FROM complaint_kpi_month"
        ).fetchall()
    got = {
        r[:4]: dict(
            zip(
                (
                    "complaints_received",
                    "closed",
                    "relief_rate",
                    "monetary_relief_rate",
                    "timely_rate",
                    "median_days_to_company",
                ),
                r[4:],
                strict=True,
            )
        )
        for r in rows
    }
    assert set(got) == set(expected)
    for key, values in expected.items():
        for name, value in values.items():
            if value is None:
                assert got[key][name] is None, (key, name)
            else:
                assert got[key][name] == pytest.approx(value, abs=1e-9), (key, name)


def test_cli_import_cfpb(settings: Settings, tmp_path: Path) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    first = run_cli("import", "cfpb", str(CURRENT), str(OLDER), env=env)
    assert first.returncode == 1  # two rows are rejected
    assert first.stdout.strip().endswith("accepted 52, duplicates skipped 1, rejected 2, conflicts 0")
    assert "cfpb_current.csv:9: field 'Date received'" in first.stderr
    # The export as downloaded (zipped) is the same rows: nothing new.
    zipped = tmp_path / "complaints.csv.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(CURRENT, "complaints.csv")
    again = run_cli("import", "cfpb", str(zipped), env=env)
    assert again.stdout.strip().endswith("accepted 0, duplicates skipped 28, rejected 2, conflicts 0"), again
    assert "complaints.csv.zip:9: field 'Date received'" in again.stderr
    not_cfpb = run_cli("import", "cfpb", str(EXAMPLES / "helpdesk-tickets.csv"), env=env)
    assert (
        not_cfpb.returncode == 1 and "Complaint ID" in not_cfpb.stderr and "Traceback" not in not_cfpb.stderr
    )


def test_mapped_csv_import(app: LedgerApplication, parser: RecordParser, tmp_path: Path) -> None:
    mapping = EXAMPLES / "helpdesk-mapping.toml"
    tickets = EXAMPLES / "helpdesk-tickets.csv"
    rejects = tmp_path / "r.jsonl"
    first = run(app, read_mapped_csv(tickets, mapping, parser), rejects)
    assert (first.accepted, first.duplicates, first.rejected) == (25, 3, 1)
    assert json.loads(rejects.read_text())["record"] == "helpdesk-tickets.csv:6"
    again = run(app, read_mapped_csv(tickets, mapping, parser))
    assert (again.accepted, again.rejected) == (0, 1)
    records = [app.codec.decode(n.state) for n in app.read_notifications(1, 100)]
    opened = [r for t, r in records if t == "CaseOpened"]
    assert [r["channel"] for r in opened] == ["email", "web", "phone", "chat", "social"]
    assert opened[0]["kind"] == "complaint" and opened[0]["topic"] == "Invoice shows wrong VAT, twice"
    surveys = [r for t, r in records if t == "SurveyAnswered"]
    assert [(s["case_id"], s["csat"], s["employee_id"]) for s in surveys][:2] == [
        ("ticket:1001", 5, "agent:501"),
        ("ticket:1002", 5, "agent:502"),
    ]


def test_an_empty_cell_in_an_event_id_refuses_the_row_by_its_column(parser: RecordParser, tmp_path: Path) -> None:
    """Each row with an empty id cell rendered the same key ('helpdesk::opened'): the first
    one became a case 'ticket:' and the others its duplicates or conflicts."""
    mapping = EXAMPLES / "helpdesk-mapping.toml"
    header, first, *_ = (EXAMPLES / "helpdesk-tickets.csv").read_text().splitlines()
    columns = header.split(",")

    def row(**cells: str) -> str:
        values = dict(zip(columns, csv.reader([first]).__next__(), strict=True))
        return ",".join(f'"{v}"' for v in {**values, **cells}.values())

    path = tmp_path / "tickets.csv"
    lines = [
        row(**{"Ticket ID": "", "Subject": "a"}),
        row(**{"Ticket ID": " ", "Subject": "b"}),
        row(**{"Ticket ID": "7", "Requester ID": ""}),
        # Unassigned: the agent's event has a `when` on the column, so the ticket still lands.
        row(**{"Ticket ID": "8", "Assignee ID": "", "Assigned at": "", "Solved at": "", "Satisfaction score": ""}),
    ]
    path.write_text("\n".join([header, *lines]) + "\n")
    records = list(read_mapped_csv(path, mapping, parser))
    refused = [(r.location, r.error.field, r.error.reason) for r in records if r.error is not None]
    assert refused == [
        ("tickets.csv:2", "Ticket ID", "is empty, and the event id 'helpdesk:{Ticket ID}:opened' needs it"),
        ("tickets.csv:3", "Ticket ID", "is empty, and the event id 'helpdesk:{Ticket ID}:opened' needs it"),
        ("tickets.csv:4", "Requester ID", "is empty, and the event id 'helpdesk:requester:{Requester ID}' needs it"),
    ]
    landed = [(r.fact.event_type, r.location) for r in records if r.fact is not None]
    assert landed == [("CustomerRegistered", "tickets.csv:5"), ("CaseOpened", "tickets.csv:5")]


@pytest.mark.parametrize("written", ["2000-01-01", "2000-01-01T00:00:00Z", "2000-01-01T00:00:00", "2000-01-01 00:00:00Z"])
def test_a_toml_date_in_a_mapping_is_the_moment_it_names(parser: RecordParser, tmp_path: Path, written: str) -> None:
    """Unquoted, TOML reads `occurred_at = 2000-01-01` as its own date value, which the ledger
    refused in every row ("expected a timestamp, got datetime.date(2000, 1, 1)")."""
    quoted = 'occurred_at = "2000-01-01T00:00:00Z"'
    text = (EXAMPLES / "helpdesk-mapping.toml").read_text()
    tickets = EXAMPLES / "helpdesk-tickets.csv"
    mapping = tmp_path / "m.toml"
    mapping.write_text(text.replace(quoted, f"occurred_at = {written}"))
    expected = [(r.location, r.fact, str(r.error)) for r in read_mapped_csv(tickets, EXAMPLES / "helpdesk-mapping.toml", parser)]
    assert [(r.location, r.fact, str(r.error)) for r in read_mapped_csv(tickets, mapping, parser)] == expected
    mapping.write_text(text.replace(quoted, "occurred_at = 10:00:00"))
    with pytest.raises(Exception, match="occurred_at: a time of day alone is no timestamp"):
        read_mapped_csv(tickets, mapping, parser)
    # In a column's table too: its default, and the values of its map.
    for spec in (f'{{ column = "Nowhere", default = {written} }}', f'{{ column = "Nowhere", map = {{ "" = {written} }} }}'):
        mapping.write_text(text.replace(quoted, f"occurred_at = {spec}"))
        tickets_without = tmp_path / "t.csv"
        lines = tickets.read_text().splitlines()
        tickets_without.write_text("\n".join([lines[0] + ",Nowhere", *(line + "," for line in lines[1:])]) + "\n")
        got = [(r.location.split(":")[1], r.fact, str(r.error)) for r in read_mapped_csv(tickets_without, mapping, parser)]
        assert got == [(location.split(":")[1], fact, error) for location, fact, error in expected], spec


def test_mapped_csv_contracts_and_installed_base(app: LedgerApplication, parser: RecordParser) -> None:
    contracts = run(
        app, read_mapped_csv(EXAMPLES / "crm-contracts.csv", EXAMPLES / "crm-contracts-mapping.toml", parser)
    )
    assets = run(
        app,
        read_mapped_csv(
            EXAMPLES / "crm-installed-base.csv", EXAMPLES / "crm-installed-base-mapping.toml", parser
        ),
    )
    assert (contracts.accepted, contracts.duplicates, contracts.rejected) == (14, 4, 0)
    assert (assets.accepted, assets.duplicates, assets.rejected) == (12, 4, 0)
    records = [app.codec.decode(n.state) for n in app.read_notifications(1, 100)]
    started = {r["contract_id"]: r for t, r in records if t == "ContractStarted"}
    assert started["SC-0002"]["sla_hours_high"] == 8 and started["SC-0002"]["sla_hours_critical"] == 4
    assert started["SC-0003"]["sla_hours_critical"] is None and started["SC-0001"]["plan"] == "standard"
    assert started["SC-0001"]["starts_on"] == 1_738_368_000_000  # 2025-02-01, UTC midnight
    renewed = [r for t, r in records if t == "ContractRenewed"]
    assert [(r["contract_id"], r["customer_id"], r["annual_value"]) for r in renewed] == [
        ("SC-0001", "account:ACC-100", 2520.0)
    ]
    ended = {r["contract_id"]: (r["reason"], r["replaced_by"]) for t, r in records if t == "ContractEnded"}
    assert ended == {"SC-0003": ("churned", None), "SC-0004": ("replaced", "SC-0005")}
    removed = [(r["serial"], r["customer_id"]) for t, r in records if t == "ProductRemoved"]
    assert removed == [("OL-RT-0092", "account:ACC-101"), ("LP-HP-7781", "account:ACC-102")]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("{Ticket ID}", "{No Such Column}"), "column missing from the header"),
        (("{Ticket ID}", "{Ticket ID"), "unbalanced brace"),
        (('type = "', 'wehn = "x"\ntype = "'), "wehn: unknown key"),
        (('when = "Assignee ID"', 'when = ["Assignee ID"]'), "when: must be a column name"),
        (('id = "helpdesk:agent:{Assignee ID}"', 'id = ["helpdesk:agent:{Assignee ID}"]'), "id: must be a template"),
        (('default = "unknown"', 'defualt = "unknown"'), "region: defualt: unknown key"),
        (('column = "Region"', 'colum = "Region"'), "region: colum: unknown key"),
        (('column = "Region"', 'column = ["Region"]'), "region: column: must be a column name"),
        (('map = { Gold', 'mapp = { Gold'), "segment: mapp: unknown key"),
        (('map = { Gold = "enterprise", Silver = "smb", "" = "consumer" }', 'map = "Gold"'), "segment: map: must be a table"),
    ],
)
def test_a_mapping_mistake_refuses_the_file_before_any_row(
    parser: RecordParser, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text((EXAMPLES / "helpdesk-mapping.toml").read_text().replace(*edit, 1))
    with pytest.raises(Exception, match=message):
        list(read_mapped_csv(EXAMPLES / "helpdesk-tickets.csv", mapping, parser))
