-- Every statement the worker runs.  Loaded once by durable/store/queries.py.

-- name: register_worker --
-- Announce a worker (for leases and for notifying only when someone listens).
SELECT df._worker_register_v1(%(worker_id)s, %(hostname)s, %(pid)s)

-- name: heartbeat --
-- Keep this worker's leases alive; say whether it is idle.
SELECT df._worker_heartbeat_v1(%(worker_id)s, %(idle)s)

-- name: unregister_worker --
-- Give back every lease this worker holds and forget it.
SELECT df._worker_unregister_v1(%(worker_id)s)

-- name: worker_settings --
-- The owner-only settings, as one JSON object.
SELECT df._worker_settings_v1()

-- name: claim --
-- Lease up to n due instances nobody holds.
SELECT instance_id, lease_token, nudges FROM df._claim_v1(%(worker_id)s, %(limit)s)

-- name: load_instance --
-- The instance row of a claimed instance.
SELECT id, label, root_node, status, execution_count, df._now() AS now,
       (SELECT rolname FROM pg_catalog.pg_roles WHERE oid = submitted_by::oid) AS submitter, database
  FROM df.instances WHERE id = %(instance_id)s

-- name: load_nodes --
-- Every node of an instance, with the state the engine reads.
SELECT id, node_type, query, result_name, left_node, right_node, parent_id, slot,
       status, result_text, wake_at, state, status_details, resource_version
  FROM df.nodes WHERE instance_id = %(instance_id)s

-- name: load_signals --
-- Unconsumed signals of an instance, in send order.
SELECT id, signal_name, data FROM df.signals
 WHERE instance_id = %(instance_id)s AND consumed_at IS NULL ORDER BY id

-- name: load_vars --
-- The variables the instance captured at start.
SELECT name, value FROM df.instance_vars WHERE instance_id = %(instance_id)s

-- name: apply --
-- Apply one engine decision under the lease (CAS on node versions).
SELECT df._apply_v1(%(instance_id)s, %(token)s, %(updates)s, %(consume)s, %(status)s, %(output)s,
                    %(execution_count)s)

-- name: release --
-- Give the instance back, due again at wake_at (or now if nudged meanwhile).
SELECT df._release_v1(%(instance_id)s, %(token)s, %(wake_at)s, %(nudges)s)

-- name: nudges --
-- How often the instance was nudged (cancel, signal) so far.
SELECT df._nudges_v1(%(instance_id)s)

-- name: begin_attempt --
-- Register an attempt of a SQL step: hashed secret and the step's backend.
SELECT df._begin_attempt_v1(%(instance_id)s, %(node_id)s, %(token)s, %(secret_hash)s, %(backend_pid)s)

-- name: submitter_refusal --
-- Why the instance's submitter may not run steps, or NULL.
SELECT df._submitter_refusal_v1(%(instance_id)s)

-- name: end_attempt --
-- Kill the secret of an attempt that did not checkpoint.
SELECT df._end_attempt_v1(%(instance_id)s, %(node_id)s, %(token)s)

-- name: fire_fault --
-- Disarm a test fault point; true if it was armed.
SELECT df._fire_fault_v1(%(name)s)

-- name: step_prepare --
-- On the submitter's connection, first in the step's transaction: its statement timeout, and the
-- string syntax the substitution quoted for (a role or database default could turn it off).
SELECT pg_catalog.set_config('statement_timeout', %(timeout)s, true), pg_catalog.pg_current_xact_id(),
       pg_catalog.set_config('standard_conforming_strings', 'on', true)

-- name: step_prepare_session --
-- On the submitter's connection, for a step run outside a transaction block: its statement timeout
-- and string syntax (session-level; the pool's reset between steps resets them).
SELECT pg_catalog.set_config('statement_timeout', %(timeout)s, false),
       pg_catalog.set_config('standard_conforming_strings', 'on', false)

-- name: step_constraints --
-- Fire the step's deferred constraints and triggers now, under the step's own timeout, not at COMMIT
-- after the checkpoint took its locks.
SET CONSTRAINTS ALL IMMEDIATE

-- name: step_guard --
-- On the submitter's connection, right before the checkpoint: nothing the step left may steer it
-- (a role it SET goes back to the login role, which is the submitter).
SELECT pg_catalog.set_config('role', 'none', true),
       pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),
       pg_catalog.set_config('log_parameter_max_length_on_error', '0', true),
       pg_catalog.set_config('statement_timeout', '0', true),
       pg_catalog.pg_current_xact_id(),
       pg_catalog.set_config('lock_timeout', '0', true)

-- name: checkpoint --
-- Record the step's result in the step's own transaction (secret-checked).
SELECT df._checkpoint_v1(%(instance_id)s, %(node_id)s, %(secret)s, %(result_text)s, %(status_details)s,
                         %(expected_version)s)

-- name: checkpoint_remote --
-- Record the result of a step that ran in another database (at-least-once), under the lease.
SELECT df._checkpoint_remote_v1(%(instance_id)s, %(node_id)s, %(token)s, %(result_text)s, %(status_details)s,
                                %(expected_version)s)

-- name: listen --
-- Wake on new work and on nudges to held instances.
LISTEN durable_work; LISTEN durable_nudge

-- name: claim_v2 --
-- Lease up to n due instances nobody holds; their rows, the time and the worker settings (0.3.0).
SELECT df._claim_v2(%(worker_id)s, %(limit)s)

-- name: load_v2 --
-- Read held instances again, with their leases (0.3.0).
SELECT df._load_v2(%(instance_ids)s)

-- name: nudges_v2 --
-- How often each held instance was nudged (cancel, signal) so far (0.3.0).
SELECT df._nudges_v2(%(instance_ids)s)

-- name: advance_v2 --
-- Write the engine's decisions for many held instances at once (0.3.0).
SELECT df._advance_v2(%(worker_id)s, %(items)s)

-- name: step_begin --
-- On the submitter's connection, first in the step's transaction: step_prepare and bind in one statement.
SELECT pg_catalog.set_config('statement_timeout', %(timeout)s, true), pg_catalog.pg_current_xact_id(),
       pg_catalog.set_config('standard_conforming_strings', 'on', true),
       df._bind_v1(%(instance_ids)b, %(node_ids)b, %(secrets)b, %(autocommit)s)

-- name: bind --
-- On the submitter's connection, first in a step's transaction: bind the attempts to this backend.
SELECT df._bind_v1(%(instance_ids)b, %(node_ids)b, %(secrets)b, %(autocommit)s)

-- name: step_reset --
-- On the submitter's connection, before each later step of a batch: nothing the step before left in
-- the session reaches it; its timeout and string syntax again.
SELECT df._step_reset_v1(%(timeout)s)

-- name: checkpoint_v2 --
-- Record the results of the transaction's steps, all or none (secret-checked, 0.3.0).
SELECT df._checkpoint_v2(%(xid)s, %(instance_ids)b, %(node_ids)b, %(secrets)b, %(results)b, %(details)b,
                         %(versions)b)

-- name: checkpoint_next --
-- Record one step's result and the decision that follows it (the default mode, 0.3.0).
SELECT df._checkpoint_next_v1(%(xid)s, %(instance_id)s, %(node_id)s, %(secret)s, %(result)s, %(details)s,
                              %(version)s, %(next)s)

-- name: checkpoint_next_batch --
-- Record the results of the transaction's steps, all or none, and the decisions that follow them
-- (the batched mode, 0.3.0).
SELECT df._checkpoint_next_v2(%(xid)s, %(instance_ids)b, %(node_ids)b, %(secrets)b, %(results)b, %(details)b,
                              %(versions)b, %(nexts)b)
