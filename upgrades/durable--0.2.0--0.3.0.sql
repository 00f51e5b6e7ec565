-- durable 0.2.0 -> 0.3.0: df.cancel, df.signal, df.set_metadata and df.delete_instance lock the
-- instance's queue row before the instance row, the order the worker uses (a signal could deadlock
-- with the worker applying a decision).  Applied by `durable upgrade` in one transaction.

SET LOCAL ROLE durable_owner;

CREATE OR REPLACE FUNCTION df._own_instance(p_caller regrole, p_instance_id text) RETURNS df.instances
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r df.instances;
BEGIN
    -- Lock order is the worker's: the queue row, then the instance row (else a
    -- signal and the worker's apply deadlock).  Only the caller's own queue
    -- row is ever locked here.
    PERFORM 1 FROM df.instances AS i WHERE i.id = p_instance_id AND i.submitted_by = p_caller;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'DF003';
    END IF;
    PERFORM 1 FROM df.instance_queue AS q WHERE q.instance_id = p_instance_id FOR NO KEY UPDATE;
    SELECT * INTO r FROM df.instances AS i
     WHERE i.id = p_instance_id AND i.submitted_by = p_caller
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Instance not found or access denied: %', p_instance_id USING ERRCODE = 'DF003';
    END IF;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION df.version() RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '0.3.0 (built 2026-11-23T00:00:00Z)'::text $$;

RESET ROLE;
