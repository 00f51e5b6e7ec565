"""Install and upgrade a database from the packaged, versioned scripts.

`sql/durable--X.Y.Z.sql` is a full install of X.Y.Z and
`upgrades/durable--A--B.sql` one upgrade step; the wheel carries both as
`durable/_sql` and `durable/_upgrades`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from durable.errors import DurableError, SchemaVersionError
from durable.store import connect, wrap_errors

# Serialises installs and upgrades of one database (an arbitrary constant: "durable" in ASCII).
ADVISORY_LOCK_KEY = 0x647572_61626C65

_INSTALL_RE = re.compile(r"^durable--(\d+\.\d+\.\d+)\.sql$")
_UPGRADE_RE = re.compile(r"^durable--(\d+\.\d+\.\d+)--(\d+\.\d+\.\d+)\.sql$")


def parse_version(v: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", v)
    if not m:
        raise DurableError(f"invalid version {v!r}: expected X.Y.Z")
    return int(m[1]), int(m[2]), int(m[3])


def _script_dir(kind: str) -> Path:
    packaged = resources.files("durable") / f"_{kind}"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / kind
    if checkout.is_dir():
        return checkout
    raise DurableError(f"durable's {kind} scripts are missing from this installation")


@dataclass(frozen=True)
class Scripts:
    """The install and upgrade scripts available to this package."""

    install_dir: Path
    upgrade_dir: Path

    @classmethod
    def packaged(cls) -> Scripts:
        return cls(_script_dir("sql"), _script_dir("upgrades"))

    def install_versions(self) -> list[str]:
        found = [m[1] for p in self.install_dir.glob("durable--*.sql") if (m := _INSTALL_RE.match(p.name))]
        return sorted(found, key=parse_version)

    def newest(self) -> str:
        versions = self.install_versions()
        if not versions:
            raise DurableError("no install script found")
        return versions[-1]

    def install_script(self, version: str) -> str:
        path = self.install_dir / f"durable--{version}.sql"
        if not path.exists():
            known = ", ".join(self.install_versions()) or "none"
            raise DurableError(f"no install script for version {version} (available: {known})")
        return path.read_text()

    def upgrade_steps(self) -> dict[str, list[str]]:
        steps: dict[str, list[str]] = {}
        for p in self.upgrade_dir.glob("durable--*--*.sql"):
            if m := _UPGRADE_RE.match(p.name):
                steps.setdefault(m[1], []).append(m[2])
        return steps

    def upgrade_path(self, source: str, target: str) -> list[tuple[str, str]]:
        """The shortest chain of upgrade scripts from source to target (breadth-first)."""
        if source == target:
            return []
        steps = self.upgrade_steps()
        previous: dict[str, str] = {}
        queue = deque([source])
        while queue:
            v = queue.popleft()
            for nxt in sorted(steps.get(v, []), key=parse_version):
                if nxt in previous or nxt == source:
                    continue
                previous[nxt] = v
                if nxt == target:
                    chain = [nxt]
                    while chain[-1] != source:
                        chain.append(previous[chain[-1]])
                    chain.reverse()
                    return list(zip(chain, chain[1:], strict=False))
                queue.append(nxt)
        raise DurableError(f"no upgrade path from {source} to {target}")

    def upgrade_script(self, source: str, target: str) -> str:
        return (self.upgrade_dir / f"durable--{source}--{target}.sql").read_text()


RECREATE_OPERATORS = "SELECT df._create_operators_v1()"


def installed_version(conn: object) -> str | None:
    """The newest version recorded in the database, or None when durable is not installed."""
    with wrap_errors():
        cur = conn.execute("SELECT pg_catalog.to_regclass('df.schema_version') IS NOT NULL")  # type: ignore[attr-defined]
        if not cur.fetchone()[0]:
            return None
        rows = conn.execute("SELECT version FROM df.schema_version").fetchall()  # type: ignore[attr-defined]
    versions = [r[0] for r in rows]
    return max(versions, key=parse_version) if versions else None


def install(dsn: str | None = None, *, version: str | None = None, dry_run: bool = False,
            scripts: Scripts | None = None) -> str:
    """Install durable (the newest version by default) and return what was done, as one line.

    Idempotent: on a database already at that version it only re-creates what a
    pg_dump restore drops (the operators in pg_catalog).
    """
    scripts = scripts or Scripts.packaged()
    target = version or scripts.newest()
    script = scripts.install_script(target)
    if dry_run:
        return script
    with connect(dsn) as conn, wrap_errors():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        current = installed_version(conn)
        if current is None:
            conn.execute(script.encode())
            conn.execute("RESET ROLE")
            conn.execute("INSERT INTO df.schema_version (version, kind) VALUES (%s, 'install')", (target,))
            conn.commit()
            return f"installed durable {target}"
        if parse_version(current) > parse_version(scripts.newest()):
            raise SchemaVersionError(
                f"the database has durable {current}, newer than this package ({scripts.newest()}): "
                "upgrade the durable package"
            )
        if current != target:
            raise SchemaVersionError(
                f"the database has durable {current} installed; run `durable upgrade` to move it to {target}"
            )
        conn.execute(RECREATE_OPERATORS)
        conn.commit()
        return f"durable {current} is already installed (operators checked)"


def upgrade(dsn: str | None = None, *, to: str | None = None, dry_run: bool = False,
            scripts: Scripts | None = None) -> list[str]:
    """Apply the chain of upgrade scripts from the recorded version, each in its own transaction."""
    scripts = scripts or Scripts.packaged()
    target = to or scripts.newest()
    done: list[str] = []
    with connect(dsn) as conn, wrap_errors():
        current = installed_version(conn)
        conn.rollback()
        if current is None:
            raise SchemaVersionError("durable is not installed in this database: run `durable install`")
        if parse_version(current) > parse_version(target):
            raise SchemaVersionError(f"the database has durable {current}, newer than {target}")
        for source, dest in scripts.upgrade_path(current, target):
            text = scripts.upgrade_script(source, dest)
            if dry_run:
                done.append(f"-- durable--{source}--{dest}.sql\n{text}")
                continue
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            if installed_version(conn) != source:
                raise SchemaVersionError(f"the recorded version changed during the upgrade (expected {source})")
            conn.execute(text.encode())
            conn.execute("RESET ROLE")
            conn.execute("INSERT INTO df.schema_version (version, kind) VALUES (%s, 'upgrade')", (dest,))
            conn.commit()
            done.append(f"upgraded durable {source} -> {dest}")
    if not done:
        done.append(f"durable {current} is up to date")
    return done
