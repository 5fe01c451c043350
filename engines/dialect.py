"""The read models' DuckDB SQL as Spark SQL: sqlglot's transpiler plus tested overrides.

One definition (the SQL texts of projections.models, service_models and goals) runs on both
engines. sqlglot translates most of it; the expressions below are rewritten here because
sqlglot's own translation is wrong or approximate for them on Spark, and anything with no
exact Spark form raises UntranslatableError naming the model and the expression (never a
silent change of meaning):

- `quantile_cont(x, p)` / `median(x)` -> Spark's exact `percentile(x, p)` (same linear
  interpolation); an ordered-set or list form, `quantile_disc` and approximate quantiles fail.
- `arg_max(x, (a, b))` -> `max_by(x, struct(a, b))` (Spark orders structs field by field).
- `strftime(t, fmt)` -> `date_format` for %Y %m %d %H %M %S; ISO week `%G-W%V` from
  `extract(YEAROFWEEK ...)` and `weekofyear` (Spark's patterns have no week-based year);
  any other directive fails.
- `payload ->> 'k'` / `payload -> 'k'` -> `get_json_object(payload, '$.k')`; `from_json(...,
  '["VARCHAR"]')` -> `from_json(..., 'array<string>')`.
- `epoch(a - b)` -> the whole days' seconds plus the remaining microseconds' seconds, as
  DuckDB computes the epoch of the interval a difference gives (bit for bit);
  `epoch_ms(t)` of a timestamp -> `unix_millis`, of an integer ->
  `timestamp_millis`; `to_hours(n)` -> `n * INTERVAL '1' HOUR`.
- `HUGEINT` -> `DECIMAL(38, 0)` (exact integer sums).
- Decimal literals (`3.0`) -> doubles: DuckDB divides by them in floating point, Spark
  would keep a decimal with a rounded scale.
- `len(list)` -> `size`; `list(x ORDER BY k)` -> the `x` of the sorted `collect_list` of
  `struct(k, x)`; `string_agg(x, s ORDER BY x)` -> `listagg ... WITHIN GROUP`.
- `ASOF LEFT JOIN r ON l.k = r.k AND l.t >= r.v` -> a left join on the interval
  `[r.v, next r.v)` of each key. Exact when `(k, v)` is unique in `r`, which the models'
  right sides guarantee (team_history keeps one row per employee and moment).
- `SELECT COLUMNS(lambda c: c NOT IN (...)) FROM t` -> the explicit columns of `t`.
- `GROUP BY ALL` with a select item that refers to another item's alias: the alias is
  inlined and the grouping keys listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import sqlglot
from sqlglot import exp

from engines.errors import UntranslatableError

#: DuckDB strftime directives with a Spark date_format pattern of the same output.
_PATTERNS = {"%Y": "yyyy", "%m": "MM", "%d": "dd", "%H": "HH", "%M": "mm", "%S": "ss"}


def _parse(sql: str, read: str) -> exp.Expression:
    tree = sqlglot.parse_one(sql, read=read)
    assert isinstance(tree, exp.Expression)
    return tree


class SparkTranslator:
    """Translates one read model's DuckDB statement to Spark SQL.

    `schema` is the placeholder schema the model SQL was generated with: its tables become
    Spark temporary views of the same name. `columns` gives the columns of the views built
    so far (for `COLUMNS(...)`), `list_columns` the names of list-typed log columns.
    """

    def __init__(
        self,
        schema: str,
        columns: Mapping[str, Sequence[str]] | None = None,
        list_columns: Sequence[str] = (),
    ) -> None:
        self.schema = schema
        self.columns = dict(columns or {})
        self.list_columns = frozenset(list_columns)

    def select(self, sql: str, model: str) -> str:
        """The Spark SQL of one DuckDB query."""
        tree = _parse(sql, read="duckdb")
        return self._generate(tree, model)

    @staticmethod
    def target(sql: str) -> str:
        """The table a `CREATE OR REPLACE TABLE s.t AS q` or `INSERT INTO s.t q` writes."""
        tree = _parse(sql, read="duckdb")
        target = tree.this
        if isinstance(target, exp.Schema):
            target = target.this
        return str(target.name)

    def statement(self, sql: str) -> tuple[str, str, str]:
        """(kind, table, Spark query) of a `CREATE OR REPLACE TABLE s.t AS q` or `INSERT INTO s.t q`."""
        tree = _parse(sql, read="duckdb")
        if isinstance(tree, exp.Create):
            target = tree.this
            query = tree.expression
            kind = "create"
        elif isinstance(tree, exp.Insert):
            target = tree.this
            query = tree.expression
            kind = "insert"
        else:
            raise UntranslatableError("?", sql.strip()[:60], "only CREATE TABLE AS and INSERT INTO are run")
        if isinstance(target, exp.Schema):
            target = target.this
        name = target.name
        return kind, name, self._generate(query, name)

    def _generate(self, tree: exp.Expression, model: str) -> str:
        for select in list(tree.find_all(exp.Select)):
            _inline_aliases_of_group_by_all(select)
        tree = self._walk(tree, model)
        return tree.sql(dialect="spark")

    def _walk(self, node: exp.Expression, model: str) -> exp.Expression:
        """Children first, then the node: a handler sees its arguments already translated."""
        for key, value in list(node.args.items()):
            if isinstance(value, exp.Expression):
                node.set(key, self._walk(value, model))
            elif isinstance(value, list):
                node.set(key, [self._walk(v, model) if isinstance(v, exp.Expression) else v for v in value])
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            return handler(self, node, model)
        return node

    # --- handlers -----------------------------------------------------------------------

    def _table(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.Table)
        if node.db == self.schema:
            return exp.Table(this=exp.to_identifier(node.name), alias=node.args.get("alias"))
        return node

    def _cast(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.Cast)
        if node.to.this == exp.DataType.Type.INT128:
            return exp.Cast(this=node.this, to=exp.DataType.build("DECIMAL(38, 0)"))
        return node

    def _literal(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.Literal)
        if node.is_string or not any(c in node.this for c in ".eE"):
            return node
        if isinstance(node.parent, exp.Interval):
            return node
        return exp.Cast(this=node.copy(), to=exp.DataType.build("DOUBLE"))

    def _percentile(self, node: exp.Expression, model: str) -> exp.Expression:
        fraction = node.expression if isinstance(node, exp.PercentileCont) else exp.Literal.number(0.5)
        if isinstance(fraction, exp.Cast):  # a decimal literal, already made a double
            fraction = fraction.this
        if not isinstance(fraction, exp.Literal) or fraction.is_string:
            raise UntranslatableError(
                model,
                node.sql(dialect="duckdb"),
                "only quantile_cont(x, p) with one constant p has Spark's exact percentile(x, p)",
            )
        return exp.Anonymous(this="percentile", expressions=[node.this, exp.Literal.number(fraction.this)])

    def _approximate(self, node: exp.Expression, model: str) -> exp.Expression:
        raise UntranslatableError(
            model,
            node.sql(dialect="duckdb"),
            "Spark has no identical form (approximate or discrete quantile)",
        )

    def _arg_max(self, node: exp.Expression, model: str) -> exp.Expression:
        key = node.expression
        if isinstance(key, exp.Tuple):
            key = exp.Anonymous(this="struct", expressions=list(key.expressions))
        name = "max_by" if isinstance(node, exp.ArgMax) else "min_by"
        return exp.Anonymous(this=name, expressions=[node.this, key])

    def _strftime(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.TimeToStr)
        fmt = node.args.get("format")
        if not isinstance(fmt, exp.Literal) or not fmt.is_string:
            raise UntranslatableError(model, node.sql(dialect="duckdb"), "the format is not a constant")
        return _format_time(node.this, fmt.this, model, node.sql(dialect="duckdb"))

    def _json(self, node: exp.Expression, model: str) -> exp.Expression:
        path = node.expression
        keys = path.expressions if isinstance(path, exp.JSONPath) else None
        if not keys or not all(isinstance(k, (exp.JSONPathRoot, exp.JSONPathKey)) for k in keys):
            raise UntranslatableError(model, node.sql(dialect="duckdb"), "only object keys are translated")
        text = "$" + "".join(f".{k.this}" for k in keys if isinstance(k, exp.JSONPathKey))
        return exp.Anonymous(this="get_json_object", expressions=[node.this, exp.Literal.string(text)])

    def _lambda(self, node: exp.Expression, model: str) -> exp.Expression:
        # sqlglot reads `payload -> 'key'` inside a function's arguments as a lambda.
        assert isinstance(node, exp.Lambda)
        body, params = node.this, node.expressions
        if isinstance(body, exp.Literal) and body.is_string and len(params) == 1:
            return exp.Anonymous(
                this="get_json_object",
                expressions=[exp.column(params[0].name), exp.Literal.string(f"$.{body.this}")],
            )
        if isinstance(node.parent, exp.Columns):
            return node
        raise UntranslatableError(model, node.sql(dialect="duckdb"), "lambdas are not translated")

    def _from_json(self, node: exp.Expression, model: str) -> exp.Expression:
        shape = node.expression
        if not (isinstance(shape, exp.Literal) and shape.this.replace(" ", "") == '["VARCHAR"]'):
            raise UntranslatableError(model, node.sql(dialect="duckdb"), "only a list of text is translated")
        return exp.Anonymous(this="from_json", expressions=[node.this, exp.Literal.string("array<string>")])

    def _epoch(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.TimeToUnix)
        arg = node.this
        if isinstance(arg, exp.Paren):
            arg = arg.this
        if not isinstance(arg, exp.Sub):
            raise UntranslatableError(
                model, node.sql(dialect="duckdb"), "only epoch of a difference of two timestamps"
            )
        # DuckDB's interval of a difference holds whole days and the microseconds left over;
        # its epoch adds the days' seconds and the rest's seconds as two doubles (Java's DIV
        # and % truncate toward zero like DuckDB's C++).
        micros = exp.Paren(
            this=exp.Sub(this=_unix("unix_micros", arg.this), expression=_unix("unix_micros", arg.expression))
        )
        return _parse(
            f"(CAST(({micros.sql(dialect='spark')} DIV 86400000000) * 86400 AS DOUBLE) "
            f"+ CAST({micros.sql(dialect='spark')} % 86400000000 AS DOUBLE) / CAST(1000000 AS DOUBLE))",
            read="spark",
        )

    def _epoch_ms(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.UnixToTime)
        scale = node.args.get("scale")
        arg = node.this
        if scale is None or scale.name != "3":
            raise UntranslatableError(model, node.sql(dialect="duckdb"), "only epoch_ms is translated")
        if isinstance(arg, exp.Cast) and arg.to.is_type(*exp.DataType.INTEGER_TYPES):
            return exp.Anonymous(this="timestamp_millis", expressions=[arg])
        if isinstance(arg, exp.Column):
            # DuckDB's epoch_ms of a timestamp column: milliseconds since the epoch.
            return _unix("unix_millis", arg)
        raise UntranslatableError(
            model, node.sql(dialect="duckdb"), "epoch_ms needs a timestamp column or an integer cast"
        )

    def _any_value(self, node: exp.Expression, model: str) -> exp.Expression:
        # DuckDB's any_value skips NULLs; Spark's does with its second argument.
        if isinstance(node, exp.IgnoreNulls):
            inner = node.this
            if isinstance(inner, exp.Anonymous) and str(inner.this) == "any_value":
                return inner  # already skips NULLs (below)
            return node
        assert isinstance(node, exp.AnyValue)
        return exp.Anonymous(this="any_value", expressions=[node.this, exp.true()])

    def _anonymous(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.Anonymous)
        name = str(node.this).lower()
        if name == "to_hours" and len(node.expressions) == 1:
            return exp.Paren(
                this=exp.Mul(
                    this=exp.Paren(this=node.expressions[0]),
                    expression=exp.Interval(this=exp.Literal.string("1"), unit=exp.var("HOUR")),
                )
            )
        if name in {"list_sort", "array_sort"} and len(node.expressions) == 1:
            return exp.Anonymous(this="array_sort", expressions=node.expressions)
        return node

    def _sort_array(self, node: exp.Expression, model: str) -> exp.Expression:
        # DuckDB's list_sort: ascending, NULLs last, as Spark's array_sort.
        nulls_first = node.args.get("nulls_first")
        if node.expression is not None or (nulls_first is not None and nulls_first.this is not False):
            raise UntranslatableError(model, node.sql(dialect="duckdb"), "only an ascending sort, NULLs last")
        return exp.Anonymous(this="array_sort", expressions=[node.this])

    def _length(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.Length)
        if isinstance(node.this, exp.Column) and node.this.name in self.list_columns:
            return exp.Anonymous(this="size", expressions=[node.this])
        return node

    def _array_agg(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.ArrayAgg)
        order = node.this
        if not isinstance(order, exp.Order):
            return exp.Anonymous(this="collect_list", expressions=[node.this])
        value = order.this
        keys = []
        for ordered in order.expressions:
            if ordered.args.get("desc"):
                raise UntranslatableError(model, node.sql(dialect="duckdb"), "only ascending list order")
            keys.append(ordered.this)
        # Sort structs (keys..., value) and keep the values: the list's order without a
        # Spark ordered aggregate. collect_list keeps the rows (a struct is never NULL).
        fields = [exp.PropertyEQ(this=exp.to_identifier(f"k{i}"), expression=k) for i, k in enumerate(keys)]
        fields.append(exp.PropertyEQ(this=exp.to_identifier("v"), expression=value))
        sorted_ = exp.Anonymous(
            this="array_sort",
            expressions=[exp.Anonymous(this="collect_list", expressions=[exp.Struct(expressions=fields)])],
        )
        return _parse(f"transform({sorted_.sql(dialect='spark')}, s -> s.v)", read="spark")

    def _group_concat(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.GroupConcat)
        order = node.this
        separator = node.args.get("separator") or exp.Literal.string(",")
        if isinstance(order, exp.Order):
            value = order.this
            keys = order.expressions
            if len(keys) != 1 or keys[0].this != value or keys[0].args.get("desc"):
                raise UntranslatableError(
                    model, node.sql(dialect="duckdb"), "only string_agg ordered by its own value"
                )
        else:
            value = order
        # Spark's array_sort puts NULLs last, like DuckDB's default; collect_list drops
        # NULLs, like string_agg.
        return exp.Anonymous(
            this="array_join",
            expressions=[
                exp.Anonymous(
                    this="array_sort", expressions=[exp.Anonymous(this="collect_list", expressions=[value])]
                ),
                separator,
            ],
        )

    def _select(self, node: exp.Expression, model: str) -> exp.Expression:
        assert isinstance(node, exp.Select)
        for join in node.args.get("joins") or []:
            if str(join.args.get("method") or "").upper() == "ASOF":
                _asof_to_interval_join(join, model)
        items = []
        changed = False
        for item in node.expressions:
            if isinstance(item, exp.Columns):
                items.extend(self._expand_columns(node, item, model))
                changed = True
            elif isinstance(item, exp.Star) and (item.args.get("replace") or item.args.get("except")):
                raise UntranslatableError(model, item.sql(dialect="duckdb"), "* REPLACE / EXCLUDE")
            else:
                items.append(item)
        if changed:
            node.set("expressions", items)
        return node

    def _expand_columns(self, select: exp.Select, item: exp.Columns, model: str) -> list[exp.Expression]:
        lam = item.this
        source = select.args.get("from_")
        table = source.this if source is not None else None
        if not isinstance(table, exp.Table) or not isinstance(lam, exp.Lambda):
            raise UntranslatableError(model, item.sql(dialect="duckdb"), "COLUMNS needs one table")
        body = lam.this
        names = self.columns.get(table.name)
        if (
            names is None
            or not isinstance(body, exp.Not)
            or not isinstance(body.this, exp.In)
            or not all(isinstance(e, exp.Literal) for e in body.this.expressions)
        ):
            raise UntranslatableError(
                model,
                item.sql(dialect="duckdb"),
                "only COLUMNS(lambda c: c NOT IN ('a', ...)) of a known table",
            )
        left_out = {e.this for e in body.this.expressions}
        return [exp.column(n) for n in names if n not in left_out]


def _unix(function: str, value: exp.Expression) -> exp.Expression:
    """`unix_micros`/`unix_millis` of a timestamp; the log's are TIMESTAMP_NTZ, read as UTC."""
    return exp.Anonymous(
        this=function, expressions=[exp.Cast(this=value.copy(), to=exp.DataType.build("TIMESTAMP"))]
    )


def _format_time(value: exp.Expression, fmt: str, model: str, text: str) -> exp.Expression:
    if fmt == "%G-W%V":
        year = _parse("CAST(EXTRACT(YEAROFWEEK FROM x) AS STRING)", read="spark")
        week = _parse("LPAD(CAST(WEEKOFYEAR(x) AS STRING), 2, '0')", read="spark")
        for part in (year, week):
            for column in part.find_all(exp.Column):
                if column.name == "x":
                    column.replace(value.copy())
        return exp.Anonymous(this="concat", expressions=[year, exp.Literal.string("-W"), week])
    pattern = ""
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            directive = fmt[i : i + 2]
            if directive not in _PATTERNS:
                raise UntranslatableError(model, text, f"strftime directive {directive} is not translated")
            pattern += _PATTERNS[directive]
            i += 2
        else:
            if fmt[i].isalpha() or fmt[i] == "'":
                raise UntranslatableError(model, text, f"literal {fmt[i]!r} in a strftime format")
            pattern += fmt[i]
            i += 1
    return exp.Anonymous(this="date_format", expressions=[value, exp.Literal.string(pattern)])


def _asof_to_interval_join(join: exp.Join, model: str) -> None:
    """`ASOF LEFT JOIN r ON eq... AND l.t >= r.v` as a left join on [r.v, next r.v) per key."""
    text = join.sql(dialect="duckdb")
    if str(join.args.get("side") or "").upper() != "LEFT":
        raise UntranslatableError(model, text, "only ASOF LEFT JOIN is translated")
    table = join.this
    condition = join.args.get("on")
    if not isinstance(table, exp.Table) or condition is None:
        raise UntranslatableError(model, text, "ASOF JOIN needs a table and an ON condition")
    alias = table.alias_or_name
    parts = list(condition.flatten()) if isinstance(condition, exp.And) else [condition]
    equal = [p for p in parts if isinstance(p, exp.EQ)]
    bounds = [p for p in parts if isinstance(p, exp.GTE)]
    if len(bounds) != 1 or len(equal) + 1 != len(parts):
        raise UntranslatableError(model, text, "ASOF needs equalities and one `left >= right` bound")
    bound = bounds[0]
    right = bound.expression
    if not isinstance(right, exp.Column) or right.table != alias:
        raise UntranslatableError(
            model, text, "the ASOF bound's right side must be a column of the joined table"
        )
    keys = []
    for eq in equal:
        sides = [s for s in (eq.this, eq.expression) if isinstance(s, exp.Column) and s.table == alias]
        if len(sides) != 1:
            raise UntranslatableError(model, text, "each ASOF equality needs one column of the joined table")
        keys.append(sides[0].name)
    until = "crm_asof_until"
    inner = _parse(
        f"SELECT *, lead({right.name}) OVER (PARTITION BY {', '.join(keys)} ORDER BY {right.name}) "
        f"AS {until} FROM {table.name}",
        read="spark",
    )
    join.set("this", exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias))))
    join.set("method", None)
    upper = exp.or_(
        exp.column(until, table=alias).is_(exp.null()),
        exp.LT(this=bound.this.copy(), expression=exp.column(until, table=alias)),
    )
    join.set("on", exp.and_(condition, exp.Paren(this=upper)))


def _inline_aliases_of_group_by_all(select: exp.Select) -> None:
    """Under GROUP BY ALL, an item naming an earlier aggregate's alias gets its expression inlined.

    DuckDB reads `after - before` as the two aggregates; Spark would take the item for a
    grouping key. The grouping keys are then listed (the items without an aggregate).
    """
    group = select.args.get("group")
    if group is None or not group.args.get("all"):
        return
    aggregates: dict[str, exp.Expression] = {}
    inlined = False
    for item in select.expressions:
        target = item.this if isinstance(item, exp.Alias) else item
        for column in list(target.find_all(exp.Column)):
            if column.table or column.name not in aggregates or column.find_ancestor(exp.AggFunc):
                continue
            column.replace(exp.Paren(this=aggregates[column.name].copy()))
            inlined = True
        if isinstance(item, exp.Alias) and item.this.find(exp.AggFunc):
            aggregates[item.alias] = item.this
    if not inlined:
        return
    keys = [
        (i.this if isinstance(i, exp.Alias) else i).copy()
        for i in select.expressions
        if not (i.this if isinstance(i, exp.Alias) else i).find(exp.AggFunc)
    ]
    select.set("group", exp.Group(expressions=keys))


_Handler = Callable[[SparkTranslator, exp.Expression, str], exp.Expression]
_HANDLERS: dict[type[exp.Expression], _Handler] = {
    exp.Table: SparkTranslator._table,
    exp.Cast: SparkTranslator._cast,
    exp.Literal: SparkTranslator._literal,
    exp.PercentileCont: SparkTranslator._percentile,
    exp.Median: SparkTranslator._percentile,
    exp.PercentileDisc: SparkTranslator._approximate,
    exp.ApproxQuantile: SparkTranslator._approximate,
    exp.ArgMax: SparkTranslator._arg_max,
    exp.ArgMin: SparkTranslator._arg_max,
    exp.TimeToStr: SparkTranslator._strftime,
    exp.JSONExtract: SparkTranslator._json,
    exp.JSONExtractScalar: SparkTranslator._json,
    exp.Lambda: SparkTranslator._lambda,
    exp.FromJson: SparkTranslator._from_json,
    exp.TimeToUnix: SparkTranslator._epoch,
    exp.UnixToTime: SparkTranslator._epoch_ms,
    exp.Anonymous: SparkTranslator._anonymous,
    exp.AnyValue: SparkTranslator._any_value,
    exp.IgnoreNulls: SparkTranslator._any_value,
    exp.Length: SparkTranslator._length,
    exp.ArraySort: SparkTranslator._sort_array,
    exp.ArrayAgg: SparkTranslator._array_agg,
    exp.GroupConcat: SparkTranslator._group_concat,
    exp.Select: SparkTranslator._select,
}
