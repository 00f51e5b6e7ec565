"""The Python enums and models agree with the database."""

from __future__ import annotations

import re

from durable.models import InstanceInfo, InstanceStatus, NodeStatus, NodeType


def _check_values(db, constraint: str) -> set[str]:
    definition = db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                            (constraint,)).fetchone()[0]
    return set(re.findall(r"'([A-Za-z_]+)'::text", definition))


def test_status_enums_match_the_check_constraints(db):
    assert _check_values(db, "instances_status_chk") == {s.value for s in InstanceStatus}
    assert _check_values(db, "nodes_status_chk") == {s.value for s in NodeStatus}
    assert _check_values(db, "nodes_node_type_chk") == {t.value for t in NodeType}


def test_instance_info_model_reads_a_real_row(make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start('SELECT 1', 'm')").fetchone()[0]
    cur = alice.execute("SELECT * FROM df.instance_info(%s)", (iid,))
    row = dict(zip([c.name for c in cur.description], cur.fetchone(), strict=True))
    info = InstanceInfo(**row)
    assert info.instance_id == iid and info.status is InstanceStatus.PENDING and not info.status.terminal
