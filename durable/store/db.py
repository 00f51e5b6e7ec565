"""Connections and the one error wrapper every driver call goes through."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from durable.errors import ConflictError, DurableError, class_for_sqlstate

Connection = psycopg.Connection


def resolve_dsn(dsn: str | None) -> str:
    """--dsn, else DURABLE_DSN, else "" (libpq reads the PG* variables)."""
    if dsn:
        return dsn
    return os.environ.get("DURABLE_DSN", "")


def connect(dsn: str | None = None, *, autocommit: bool = False, **kwargs: object) -> psycopg.Connection:
    with wrap_errors():
        return psycopg.connect(resolve_dsn(dsn), autocommit=autocommit, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def wrap_errors() -> Iterator[None]:
    """Turn a psycopg error carrying one of durable's SQLSTATEs into its class, keeping the cause."""
    try:
        yield
    except pg_errors.Error as exc:
        cls = class_for_sqlstate(getattr(exc, "sqlstate", None))
        if cls is None and isinstance(exc, psycopg.OperationalError) and not getattr(exc, "sqlstate", None):
            raise DurableError(" ".join(str(exc).split())) from exc  # cannot connect: no server answer
        if cls is None:
            raise
        message = exc.diag.message_primary or str(exc)
        if cls is ConflictError:
            match = re.search(r"current resource_version: (\d+)", exc.diag.message_detail or "")
            raise ConflictError(message, current_version=int(match[1]) if match else None,
                                sqlstate=exc.sqlstate) from exc
        raise cls(message, sqlstate=exc.sqlstate) from exc


def start_expression_query(expression: str, label: str | None) -> sql.Composed:
    """`SELECT df.start(<expression>, <label>)`: the expression is the caller's own SQL DSL code,
    run with the caller's own rights (as typed in psql); the label is a bound literal."""
    return sql.SQL("SELECT df.start({}, {})").format(sql.SQL(expression), sql.Literal(label))


def dsn_with(dsn: str, **changes: str | None) -> str:
    """The same connection string with some parameters replaced (None removes one)."""
    params = conninfo_to_dict(dsn)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return make_conninfo("", **params)
