"""Spark and DuckDB build the same read models from the same Delta log: every table, every row.

One Spark session for the module (local[2], started once: 10-20 s), over a small demo with
team goals, CFPB complaints and a closed month (so statements and complaint KPIs have rows).
Both the default spec and a changed spec (another CSAT threshold and weights) are built by
DuckDB (`--full`) and by Spark from the same log version (the default one as `project --engine
spark` rebuilds the promoted version, the changed one by a Spark build of its own); the Spark tables are loaded into a
copy of the projection database as the same versions, and every table is compared as a
multiset of rows. Values must be identical; floats must be identical or within
engines.compare.FLOAT_TOLERANCE (a DOUBLE summed by an aggregate depends on the order its
rows are added in, which differs between the engines).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from crm_cli.demo import run_demo
from crm_ledger.settings import Settings, log_root
from engines.compare import compare_tables
from engines.load import load_version
from engines.replay import project_on_spark
from engines.spark_build import build_on_spark
from engines.spark_session import java_missing, spark_session
from importers.generator import GeneratorConfig
from projections.log import DecodedLog, log_slug
from projections.maintain import Maintainer
from projections.models import MODEL_TABLES
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB
from replay.build import replay
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
# A Spark session and two builds per engine: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.spark, pytest.mark.timeout(1500)]


def _changed_spec(folder: Path) -> Path:
    text = DEFAULT_SPEC.read_text().replace("csat_satisfied_min = 4", "csat_satisfied_min = 5")
    text = text.replace("weight = 0.25", "weight = 0.30", 1).replace("weight = 0.05", "weight = 0.00", 1)
    path = folder / "changed.toml"
    path.write_text(text.replace('name = "default"', 'name = "changed"'))
    return path


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    reason = java_missing()
    if reason is not None:
        pytest.skip(f"Spark cannot run here: {reason}")
    with spark_session() as session:
        yield session


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    """The demo, with complaints and a closed month, and both specs built by DuckDB in full."""
    folder = tmp_path_factory.mktemp("spark")
    settings = run_demo(
        folder / "demo", GeneratorConfig(customers=120, employees=12, months=3, seed=7), lambda _: None
    )
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    imported = run_cli("import", "cfpb", str(ROOT / "tests/data/cfpb_current.csv"), env=env)
    assert "accepted" in imported.stdout, imported.stdout + imported.stderr
    run_cli("project", env=env, check=True)
    run_cli("period", "close", "2025-01", env=env, check=True)
    run_cli("project", env=env, check=True)
    changed = _changed_spec(folder)
    replay(settings, changed, "ledger", full=True)
    with ProjectionDB(settings.projections_db) as db:
        promoted = db.find_version(db.promoted_version() or "")
        Maintainer(db, promoted).update(full=True)  # the default spec's tables from scratch too
    return settings, changed


def _spark_copy(settings: Settings, folder: Path) -> Path:
    """A copy of the projection database and its log, for the Spark-built versions."""
    target = folder / "spark.duckdb"
    shutil.copy(settings.projections_db, target)
    shutil.copytree(log_root(settings.projections_db), log_root(target))
    return target


def _versions(path: Path) -> dict[str, tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT version, name, state, events, position FROM main.crm_versions").fetchall()
    finally:
        con.close()
    return {str(r[0]): tuple(r[1:]) for r in rows}


def test_every_table_of_both_specs_is_equal(spark: Any, demo: tuple[Settings, Path], tmp_path: Path) -> None:
    """`project --engine spark` rebuilds the promoted (default) version, a Spark build the changed one."""
    settings, changed = demo
    copy = _spark_copy(settings, tmp_path)
    log = DecodedLog(log_root(copy) / log_slug("ledger"))
    snapshot = log.version()
    with ProjectionDB(copy) as db:
        versions = {v.name: v for v in db.versions() if v.built_from is None}
        promoted = db.find_version(db.promoted_version() or "")
    assert set(versions) >= {"default", "changed"}
    assert promoted.version == versions["default"].version
    # The module's session is the active one: the one-shot build uses it and leaves it running.
    result = project_on_spark(dataclasses.replace(settings, projections_db=copy), "ledger", None)
    assert not result.interrupted and result.name == "default", result.message()
    assert result.version == promoted.version and result.log_version == snapshot
    assert not spark.sparkContext._jsc.sc().isStopped()
    version = versions["changed"]
    assert version.spec().content_hash == load_spec(changed).content_hash
    built = build_on_spark(spark, log.path, snapshot, load_spec(changed), version.version)
    with ProjectionDB(copy) as db:
        load_version(db, version, built.tables, log=log, log_version=snapshot, events=built.events)

    con = duckdb.connect(str(settings.projections_db), read_only=True)
    try:
        con.execute(f"ATTACH '{copy}' AS spark (READ_ONLY)")
        for version in versions.values():
            for table in MODEL_TABLES:
                count = con.execute(f"SELECT count(*) FROM {version.schema}.{table}").fetchone()
                assert count is not None
            differences, inexact = compare_tables(
                con, version.schema, f"spark.{version.schema}", MODEL_TABLES
            )
            assert not differences, "\n".join(f"{d.table}: {d.detail}" for d in differences)
            print(f"{version.name}: {len(MODEL_TABLES)} tables equal, {inexact} floats within the tolerance")
        # Every model has rows to compare (statements, complaints and goals included).
        empty = [
            t
            for t in MODEL_TABLES
            if con.execute(f"SELECT count(*) FROM {versions['default'].schema}.{t}").fetchone() == (0,)
        ]
        assert not empty, empty
    finally:
        con.close()
    # The same log version, positions and event counts recorded as DuckDB's full builds did.
    duck, spark_built = _versions(settings.projections_db), _versions(copy)
    for version in versions.values():
        assert spark_built[version.version] == duck[version.version]


def test_replay_engine_spark_without_java_is_one_line(demo: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, _ = demo
    copy = _spark_copy(settings, tmp_path)
    env = {
        "CRM_LEDGER_STORE": settings.store,
        "CRM_LEDGER_DB": str(copy),
        "PATH": str(Path(sys.executable).parent),
        "JAVA_HOME": "",
    }
    result = run_cli("replay", "--engine", "spark", "--metrics", str(DEFAULT_SPEC), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: Java not found (Spark needs Java 17 or 21 on PATH or in JAVA_HOME)"
    assert "Traceback" not in result.stderr


def test_project_engine_spark_is_one_shot(demo: tuple[Settings, Path]) -> None:
    settings, _ = demo
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    result = run_cli("project", "--engine", "spark", "--follow", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --engine spark is a one-shot build")
