"""The only package that talks to PostgreSQL (psycopg)."""

from durable.store.db import Connection, connect, wrap_errors

__all__ = ["Connection", "connect", "wrap_errors"]
