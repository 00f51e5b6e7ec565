"""durable install / upgrade against a real database."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from durable import schema
from durable.errors import DurableError, SchemaVersionError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_db(db, dsn):
    """A database without durable (the template has it: make a fresh one)."""
    name = "durable_empty_test"
    db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    db.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**params)
    db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_install_records_the_version_and_is_idempotent(empty_db):
    assert schema.install(empty_db) == f"installed durable {schema.Scripts.packaged().newest()}"
    with psycopg.connect(empty_db, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'df'::regnamespace").fetchone()
        assert conn.execute("SELECT version, kind FROM df.schema_version").fetchall() == [
            (schema.Scripts.packaged().newest(), "install")]
    assert "already installed" in schema.install(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        after = conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'df'::regnamespace").fetchone()
    assert before == after


def test_reinstall_recreates_operators_dropped_by_a_restore(db, dsn):
    db.execute("DROP OPERATOR pg_catalog.~> (text, text)")
    db.execute("DROP OPERATOR pg_catalog.@> (NONE, text)")
    with pytest.raises(psycopg.Error):
        db.execute("SELECT 'SELECT 1' ~> 'SELECT 2'")
    schema.install(dsn)
    assert db.execute("SELECT 'SELECT 1' ~> 'SELECT 2'").fetchone()[0].startswith('{"node_type":"THEN"')
    assert db.execute("SELECT @> 'SELECT 1'").fetchone()[0].startswith('{"node_type":"LOOP"')


def test_install_refuses_a_newer_database(db, dsn):
    db.execute("INSERT INTO df.schema_version (version, kind) VALUES ('99.0.0', 'upgrade')")
    with pytest.raises(SchemaVersionError, match="newer than this package"):
        schema.install(dsn)


def test_dry_run_prints_the_sql_and_changes_nothing(empty_db):
    text = schema.install(empty_db, dry_run=True)
    assert "CREATE SCHEMA df" in text
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regnamespace('df')").fetchone()[0] is None


def _fixture_scripts(tmp_path: Path) -> schema.Scripts:
    install_dir, upgrade_dir = tmp_path / "sql", tmp_path / "upgrades"
    install_dir.mkdir()
    upgrade_dir.mkdir()
    newest = schema.Scripts.packaged().newest()
    shutil.copy(ROOT / "sql" / f"durable--{newest}.sql", install_dir / f"durable--{newest}.sql")
    (upgrade_dir / f"durable--{newest}--9.1.0.sql").write_text("CREATE TABLE df.step_one (x int);")
    (upgrade_dir / "durable--9.1.0--9.2.0.sql").write_text("CREATE TABLE df.step_two (x int);")
    (upgrade_dir / f"durable--{newest}--9.0.5.sql").write_text("SELECT 1;")  # a dead end
    (upgrade_dir / "durable--9.2.0--9.3.0.sql").write_text("SELECT no_such_function();")
    return schema.Scripts(install_dir, upgrade_dir)


def test_upgrade_applies_the_chain_each_step_recorded(dsn, db, tmp_path):
    scripts = _fixture_scripts(tmp_path)
    newest = schema.Scripts.packaged().newest()
    assert scripts.upgrade_path(newest, "9.2.0") == [(newest, "9.1.0"), ("9.1.0", "9.2.0")]
    with pytest.raises(DurableError, match="no upgrade path"):
        scripts.upgrade_path(newest, "9.9.9")
    done = schema.upgrade(dsn, to="9.2.0", scripts=scripts)
    assert done == [f"upgraded durable {newest} -> 9.1.0", "upgraded durable 9.1.0 -> 9.2.0"]
    assert db.execute("SELECT to_regclass('df.step_two') IS NOT NULL").fetchone()[0]
    # A failing step leaves the previous version intact.
    with pytest.raises(psycopg.Error):
        schema.upgrade(dsn, to="9.3.0", scripts=scripts)
    assert schema.installed_version(db) == "9.2.0"
    assert schema.upgrade(dsn, to="9.2.0", scripts=scripts) == ["durable 9.2.0 is up to date"]


def test_cli_install_from_a_wheel_outside_the_checkout(empty_db, tmp_path):
    """A user installs from a wheel: build one, install it into a fresh venv, run it from elsewhere."""
    if not shutil.which("uv") and subprocess.run([sys.executable, "-m", "pip", "--version"],
                                                 capture_output=True).returncode != 0:
        pytest.skip("pip is not available")
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(wheel_dir.glob("durable_pg-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Dependencies come from the test environment (no network needed); durable itself from the wheel.
    deps = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p, "psycopg").is_dir())
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "test_deps.pth").write_text(str(deps) + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(venv / "bin" / "durable"), "install", "--dsn", empty_db], cwd=elsewhere,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("installed durable ")
    again = subprocess.run([str(venv / "bin" / "durable"), "install", "--dsn", empty_db], cwd=elsewhere,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "already installed" in again.stdout
    bad = subprocess.run([str(venv / "bin" / "durable"), "install", "--dsn", "host=/nonexistent dbname=x"],
                         cwd=elsewhere, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("durable: error:") and "Traceback" not in bad.stderr


def test_install_an_older_release_then_upgrade_with_the_cli(empty_db):
    cli = [sys.executable, "-m", "durable.cli"]
    out = subprocess.run([*cli, "install", "--dsn", empty_db, "--version", "0.1.0"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "installed durable 0.1.0", out.stderr
    refused = subprocess.run([*cli, "install", "--dsn", empty_db], capture_output=True, text=True)
    assert refused.returncode == 1 and "run `durable upgrade`" in refused.stderr
    dry = subprocess.run([*cli, "upgrade", "--dsn", empty_db, "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0 and "ALTER TABLE df.instances" in dry.stdout
    with psycopg.connect(empty_db) as conn:
        assert schema.installed_version(conn) == "0.1.0"
    up = subprocess.run([*cli, "upgrade", "--dsn", empty_db], capture_output=True, text=True)
    newest = schema.Scripts.packaged().newest()
    assert up.returncode == 0 and up.stdout.startswith("upgraded durable 0.1.0 -> ") and \
        up.stdout.rstrip().endswith(f" -> {newest}"), up.stderr
    with psycopg.connect(empty_db) as conn:
        assert schema.installed_version(conn) == newest
