"""Released install and upgrade scripts are frozen: sql/released.json records their hashes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_released_scripts_never_change():
    recorded = json.loads((ROOT / "sql" / "released.json").read_text())
    assert "0.1.0" in recorded
    for version, files in recorded.items():
        for name, digest in files.items():
            assert hashlib.sha256((ROOT / name).read_bytes()).hexdigest() == digest, \
                f"{name} changed after release {version}: ship the change as a new version with an upgrade script"


def test_released_scripts_match_their_git_tags():
    """Where the release tags are present (a full clone), the files equal the tagged ones too."""
    recorded = json.loads((ROOT / "sql" / "released.json").read_text())
    for version, files in recorded.items():
        tag = f"v{version}"
        if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "-q", "--verify", f"refs/tags/{tag}"],
                          capture_output=True).returncode != 0:
            continue
        for name in files:
            tagged = subprocess.run(["git", "-C", str(ROOT), "show", f"{tag}:{name}"], capture_output=True,
                                    check=True).stdout
            assert tagged == (ROOT / name).read_bytes(), f"{name} differs from {tag}"


def test_the_newest_install_script_is_built_from_sql_src():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_sql.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
