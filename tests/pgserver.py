"""The test suite's PostgreSQL: the same code `durable dev` uses, with fsync off (throwaway clusters)."""

from __future__ import annotations

from pathlib import Path

from durable.devserver import SUPERUSER, PgServer, destroy
from durable.devserver import start_server as _start

__all__ = ["SUPERUSER", "PgServer", "destroy", "start_server"]


def start_server(base: Path | None = None, port: int | None = None) -> PgServer:
    return _start(base, port, fast=True)
