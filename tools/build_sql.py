"""Assemble sql/durable--<version>.sql from the parts in sql/src/.

The parts are the source of the newest install script only; a released
script is frozen (tests/unit/test_release.py compares it with its tag),
so a later schema change bumps the version and adds an upgrades/ script.

    python tools/build_sql.py          # write the file
    python tools/build_sql.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from durable import __version__  # noqa: E402


def build() -> str:
    parts = sorted((ROOT / "sql" / "src").glob("*.sql"))
    return "\n".join(p.read_text() for p in parts)


def main() -> int:
    target = ROOT / "sql" / f"durable--{__version__}.sql"
    text = build()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            print(f"{target.relative_to(ROOT)} is out of date: run python tools/build_sql.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
