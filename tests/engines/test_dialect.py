"""The DuckDB -> Spark translation of the read models' SQL: each override, and the loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.dialect import SparkTranslator
from engines.errors import UntranslatableError
from projections.models import all_model_sql
from projections.spec import DEFAULT_SPEC, load_spec

SCHEMA = "crm_spark"


def spark(sql: str, columns: dict[str, list[str]] | None = None) -> str:
    return SparkTranslator(SCHEMA, columns, ["article_ids"]).select(sql, "m")


def test_exact_percentile_not_percentile_cont() -> None:
    assert "PERCENTILE(value, 0.9)" in spark("SELECT quantile_cont(value, 0.9) FROM t")
    assert "PERCENTILE(v, 0.5)" in spark("SELECT median(v) FROM t")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT quantile_cont(0.5 ORDER BY v) FROM t", "quantile"),
        ("SELECT quantile_disc(v, 0.5) FROM t", "approximate or discrete"),
        ("SELECT approx_quantile(v, 0.5) FROM t", "approximate or discrete"),
        ("SELECT strftime(t, '%j') FROM t", "%j"),
        ("SELECT epoch(t) FROM t", "difference"),
        ("SELECT * REPLACE (1 AS a) FROM t", "REPLACE"),
        ("SELECT * FROM a ASOF JOIN b ON a.k = b.k AND a.t >= b.v", "ASOF LEFT JOIN"),
        ("SELECT list(x ORDER BY x DESC) FROM t", "ascending"),
        ("SELECT string_agg(x, ',' ORDER BY y) FROM t", "ordered by its own value"),
    ],
)
def test_what_has_no_exact_spark_form_fails_naming_the_model(sql: str, reason: str) -> None:
    with pytest.raises(UntranslatableError) as caught:
        SparkTranslator(SCHEMA).select(sql, "kpi_employee_month")
    assert "read model kpi_employee_month" in str(caught.value)
    assert reason in str(caught.value)


def test_arg_max_of_a_tuple_orders_by_a_struct() -> None:
    sql = spark("SELECT arg_max(x, (a, b)) FILTER (WHERE x IS NOT NULL), arg_min(y, a) FROM t")
    assert "MAX_BY(x, STRUCT(a, b))" in sql
    assert "MIN_BY(y, a)" in sql


def test_strftime_formats_including_the_iso_week() -> None:
    sql = spark("SELECT strftime(occurred_at, '%Y-%m-%d'), strftime(occurred_at, '%G-W%V') FROM t")
    assert "DATE_FORMAT(occurred_at, 'yyyy-MM-dd')" in sql
    assert "EXTRACT(YEAROFWEEK FROM occurred_at)" in sql
    assert "LPAD(CAST(WEEKOFYEAR(occurred_at) AS STRING), 2, '0')" in sql


def test_json_fields_epochs_and_decimal_literals() -> None:
    sql = spark(
        "SELECT payload ->> 'plan', json_array_length(payload -> 'parts'), epoch_ms((payload ->> 'at')::BIGINT), "
        "epoch_ms(occurred_at) // 1000, epoch(a - b) / 3600.0, x::HUGEINT, to_hours(h::BIGINT) FROM t"
    )
    assert "GET_JSON_OBJECT(payload, '$.plan')" in sql
    assert "JSON_ARRAY_LENGTH(GET_JSON_OBJECT(payload, '$.parts'))" in sql
    assert "TIMESTAMP_MILLIS(CAST((GET_JSON_OBJECT(payload, '$.at')) AS BIGINT))" in sql
    assert "UNIX_MILLIS(CAST(occurred_at AS TIMESTAMP)) DIV 1000" in sql
    assert "DIV 86400000000) * 86400 AS DOUBLE)" in sql
    assert "/ CAST(3600.0 AS DOUBLE)" in sql
    assert "CAST(x AS DECIMAL(38, 0))" in sql
    assert "INTERVAL '1' HOUR" in sql


def test_lists_sizes_and_ordered_lists() -> None:
    sql = spark(
        "SELECT len(article_ids), list(p ORDER BY p, s), list_sort(a), string_agg(g, ', ' ORDER BY g) FROM t"
    )
    assert "SIZE(article_ids)" in sql
    assert "TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(p AS k0, s AS k1, p AS v))), s -> s.v)" in sql
    assert "ARRAY_JOIN(ARRAY_SORT(COLLECT_LIST(g)), ', ')" in sql


def test_asof_left_join_becomes_an_interval_join() -> None:
    sql = spark(
        "SELECT r.e, th.team_id FROM r ASOF LEFT JOIN crm_spark.team_history th "
        "ON r.e = th.employee_id AND r.t >= th.valid_from"
    )
    assert "ASOF" not in sql
    assert "LEAD(valid_from) OVER (PARTITION BY employee_id ORDER BY valid_from" in sql
    assert "th.crm_asof_until IS NULL OR r.t < th.crm_asof_until" in sql
    assert "FROM team_history" in sql  # the placeholder schema's tables are Spark views


def test_columns_lambda_expands_to_the_known_columns() -> None:
    sql = spark(
        "SELECT p.* FROM (SELECT COLUMNS(lambda c: c NOT IN ('b')) FROM crm_spark.profile) p",
        {"profile": ["a", "b", "c"]},
    )
    assert "SELECT a, c FROM profile" in sql


def test_group_by_all_with_an_alias_of_an_aggregate() -> None:
    sql = spark("SELECT k, avg(x) AS a, avg(y) AS b, a - b AS d FROM t GROUP BY ALL")
    assert "(AVG(x)) - (AVG(y)) AS d" in sql
    assert "GROUP BY k" in sql


def test_any_value_skips_nulls_as_in_duckdb() -> None:
    assert "ANY_VALUE(kind, TRUE)" in spark("SELECT any_value(kind) FROM t")


@pytest.mark.parametrize("spec_name", ["default.toml", "service.toml"])
def test_every_read_model_statement_translates(spec_name: str) -> None:
    spec = (
        load_spec(DEFAULT_SPEC.parent / spec_name) if spec_name != "default.toml" else load_spec(DEFAULT_SPEC)
    )
    translator = SparkTranslator(SCHEMA, list_columns=["article_ids"])
    translator.columns["customer_profile"] = ["customer_id", "segment"]
    tables = set()
    for statement in all_model_sql(SCHEMA, spec, "v_test", "crm_ev", f"{SCHEMA}.events"):
        _, name, sql = translator.statement(statement)
        tables.add(name)
        assert "crm_spark." not in sql
    assert "team_goal_effect" in tables


def test_default_spec_path_exists() -> None:
    assert Path(DEFAULT_SPEC).exists()
