"""Transaction-control statements are recognised before they run, however they are dressed."""

from __future__ import annotations

import pytest

from durable.store.steps import transaction_control


@pytest.mark.parametrize("text", [
    "COMMIT", "commit", "  COMMIT;", "-- c\nCOMMIT", "/* x */ ROLLBACK", "/* /* nested */ */ COMMIT",
    "(COMMIT)", "BEGIN", "START TRANSACTION", "SAVEPOINT s", "RELEASE s", "PREPARE TRANSACTION 'x'", "END",
    "ABORT", "/* a */ -- b\n /* c /* d */ */ prepare transaction 'x'",
])
def test_refused(text):
    assert transaction_control(text)


@pytest.mark.parametrize("text", [
    "SELECT 1", "SELECT 'COMMIT'", "-- COMMIT\nSELECT 1", "/* COMMIT */ SELECT 1", "PREPARE p AS SELECT 1",
    "DO $$ BEGIN NULL; END $$", "/* unterminated COMMIT", "",
])
def test_allowed(text):
    assert not transaction_control(text)
