"""A full snapshot of durable's catalog footprint, for comparing an upgraded database with a fresh one.

Columns (order, type, default, nullability), constraints with definitions and
validation state, indexes, policies, grants and ACLs, functions with a hash of
their bodies and their settings, operators, triggers, sequences, roles' grants.
OIDs and anything else that differs between two equal schemas are left out.
"""

from __future__ import annotations

from typing import Any

import psycopg

QUERIES: dict[str, str] = {
    "tables": """
        SELECT c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
               pg_catalog.array_to_string(c.relacl, ',') AS acl, c.reloptions
          FROM pg_class c WHERE c.relnamespace = 'df'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v')
         ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity, a.attgenerated,
               pg_catalog.array_to_string(a.attacl, ',') AS acl,
               pg_catalog.row_number() OVER (PARTITION BY c.relname ORDER BY a.attnum) AS position
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'df'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
         ORDER BY 1, 9""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_catalog.pg_get_constraintdef(k.oid), k.convalidated,
               k.condeferrable, k.condeferred
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace = 'df'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indexrelid::regclass::text, pg_catalog.pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace = 'df'::regnamespace ORDER BY 1""",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
          FROM pg_policies WHERE schemaname = 'df' ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_catalog.pg_get_function_result(p.oid),
               pg_catalog.pg_get_function_arguments(p.oid), p.prokind, p.prosecdef, p.provolatile,
               p.proisstrict, p.proparallel, p.proconfig, pg_catalog.md5(p.prosrc),
               pg_catalog.array_to_string(p.proacl, ','), pg_catalog.pg_get_userbyid(p.proowner), l.lanname
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'df'::regnamespace ORDER BY 1""",
    "operators": """
        SELECT o.oprnamespace::regnamespace::text, o.oprname, o.oprleft::regtype::text, o.oprright::regtype::text,
               o.oprcode::regprocedure::text
          FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
         WHERE p.pronamespace = 'df'::regnamespace ORDER BY 2, 3""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'df'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "sequences": """
        SELECT s.seqrelid::regclass::text, s.seqtypid::regtype::text, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'df'::regnamespace ORDER BY 1""",
    "schema": """
        SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner), pg_catalog.array_to_string(n.nspacl, ',')
          FROM pg_namespace n WHERE n.nspname = 'df'""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t
         WHERE t.typnamespace = 'df'::regnamespace AND t.typtype NOT IN ('c', 'b') ORDER BY 1""",
    "settings_keys": "SELECT key FROM df.settings ORDER BY 1",
}


def snapshot(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: [tuple(r) for r in conn.execute(q).fetchall()] for name, q in QUERIES.items()}


def diff(a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    out: list[str] = []
    for name in QUERIES:
        only_a = [r for r in a[name] if r not in b[name]]
        only_b = [r for r in b[name] if r not in a[name]]
        out += [f"{name}: only in upgraded: {r}" for r in only_a]
        out += [f"{name}: only in fresh:    {r}" for r in only_b]
    return out
