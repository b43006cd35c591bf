"""pgraft projections: current cluster state as tables and operator views, folded in SQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

``pgraft.apply_events(from_exclusive, to_inclusive)`` folds the events with positions in
``(from_exclusive, to_inclusive]`` (ordered by position, sub) into the projection tables, with the
same rules as the Python fold in ``ram/projections/state.py`` (written independently, as a
cross-check; the property tests compare them).  ``pgraft.rebuild_projections()`` empties the
projection tables and re-applies every event.  Upgrading a store that already holds events
rebuilds the projections at the end of the migration.
"""

from ram.eventstore.schema import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


TABLES = r"""
CREATE TABLE pgraft.projection_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    applied_position bigint NOT NULL DEFAULT 0 CHECK (applied_position >= 0),
    last_event_position bigint NOT NULL DEFAULT 0 CHECK (last_event_position >= 0),
    events_applied bigint NOT NULL DEFAULT 0 CHECK (events_applied >= 0)
);
INSERT INTO pgraft.projection_state DEFAULT VALUES;
COMMENT ON TABLE pgraft.projection_state IS
    'How far the projections are: applied_position = to_inclusive of the last apply_events call, '
    'last_event_position = position of the last event folded.';

CREATE TABLE pgraft.cluster (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    cluster_id text,
    cluster_name text,
    bootstrapped_position bigint,
    primary_name text,
    timeline bigint,
    raft_leader text,
    raft_leader_node_id integer,
    raft_term bigint NOT NULL DEFAULT 0,
    sync_mode text NOT NULL DEFAULT 'off' CHECK (sync_mode IN ('off', 'on', 'quorum')),
    num_sync integer NOT NULL DEFAULT 0,
    sync_standbys text[] NOT NULL DEFAULT '{}',
    maintenance boolean NOT NULL DEFAULT false,
    maintenance_reason text NOT NULL DEFAULT '',
    maintenance_by text NOT NULL DEFAULT '',
    pending_restart text[] NOT NULL DEFAULT '{}'
);
INSERT INTO pgraft.cluster DEFAULT VALUES;
COMMENT ON TABLE pgraft.cluster IS 'Projection: the one cluster-wide row (identity, primary, leader, sync set).';

CREATE TABLE pgraft.member (
    name text PRIMARY KEY,
    node_id integer NOT NULL UNIQUE,
    raft_address text NOT NULL,
    api_address text NOT NULL,
    pg_host text NOT NULL,
    pg_port integer NOT NULL,
    nofailover boolean NOT NULL DEFAULT false,
    noloadbalance boolean NOT NULL DEFAULT false,
    nosync boolean NOT NULL DEFAULT false,
    failover_priority integer NOT NULL DEFAULT 1,
    is_learner boolean NOT NULL DEFAULT false,
    added_position bigint NOT NULL,
    healthy boolean,
    pg_running boolean,
    reported_role text NOT NULL DEFAULT 'unknown' CHECK (reported_role IN ('primary', 'replica', 'unknown')),
    timeline bigint,
    lsn pg_lsn,
    lag_bytes bigint,
    health_reason text NOT NULL DEFAULT '',
    health_position bigint,
    health_at timestamptz,
    following text,
    fenced boolean NOT NULL DEFAULT false,
    fence_reason text NOT NULL DEFAULT '',
    rejoin_method text CHECK (rejoin_method IN ('rewind', 'clone'))
);
COMMENT ON TABLE pgraft.member IS 'Projection: one row per member (identity, tags, last health report, fencing).';

CREATE TABLE pgraft.timeline_history (
    seq integer PRIMARY KEY,
    timeline bigint NOT NULL,
    primary_name text NOT NULL,
    lsn pg_lsn NOT NULL,
    position bigint NOT NULL,
    at timestamptz NOT NULL
);
COMMENT ON TABLE pgraft.timeline_history IS
    'Projection: each change of (primary, timeline), with the LSN where it began and the event position.';

CREATE TABLE pgraft.operation_history (
    seq integer PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('failover', 'switchover')),
    outcome text NOT NULL CHECK (outcome IN ('in_progress', 'succeeded', 'failed', 'superseded')),
    started_position bigint NOT NULL,
    started_at timestamptz NOT NULL,
    old_primary text,
    new_primary text,
    candidate text,
    candidates jsonb NOT NULL DEFAULT '[]',
    reason text NOT NULL DEFAULT '',
    requested_by text NOT NULL DEFAULT '',
    scheduled_at timestamptz,
    error text NOT NULL DEFAULT '',
    completed_position bigint,
    completed_at timestamptz,
    duration_ms bigint,
    timeline bigint,
    lsn pg_lsn
);
CREATE INDEX operation_history_open_idx ON pgraft.operation_history (kind, seq) WHERE outcome = 'in_progress';
COMMENT ON TABLE pgraft.operation_history IS 'Projection: failovers and switchovers, in the order they started.';

CREATE TABLE pgraft.dynamic_config (
    key text PRIMARY KEY,
    value jsonb NOT NULL
);
COMMENT ON TABLE pgraft.dynamic_config IS 'Projection: the cluster-wide dynamic configuration.';
"""

FUNCTIONS = r"""
CREATE FUNCTION pgraft._lsn(v jsonb) RETURNS pg_lsn
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v IS NULL OR jsonb_typeof(v) = 'null' THEN NULL
                ELSE '0/0'::pg_lsn + (v #>> '{}')::numeric END
$$;

CREATE FUNCTION pgraft._sorted_set(v jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(s ORDER BY s COLLATE "C"), '{}')
    FROM (SELECT DISTINCT e AS s FROM jsonb_array_elements_text(coalesce(v, '[]'::jsonb)) AS e) d
$$;

CREATE FUNCTION pgraft._add_member(m jsonb, p_learner boolean, p_position bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Ignored when the name or the node id is already taken (both are unique).
    INSERT INTO pgraft.member (name, node_id, raft_address, api_address, pg_host, pg_port,
                               nofailover, noloadbalance, nosync, failover_priority,
                               is_learner, added_position)
    VALUES (m ->> 'name', (m ->> 'node_id')::integer, m ->> 'raft_address', m ->> 'api_address',
            m ->> 'pg_host', (m ->> 'pg_port')::integer,
            coalesce((m #>> '{tags,nofailover}')::boolean, false),
            coalesce((m #>> '{tags,noloadbalance}')::boolean, false),
            coalesce((m #>> '{tags,nosync}')::boolean, false),
            coalesce((m #>> '{tags,failover_priority}')::integer, 1),
            p_learner, p_position)
    ON CONFLICT DO NOTHING;
END $$;

CREATE FUNCTION pgraft._set_primary(p_name text, p_timeline bigint, p_lsn pg_lsn, p_position bigint,
                                    p_ts timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgraft.cluster c
                   WHERE c.primary_name IS NOT DISTINCT FROM p_name
                     AND c.timeline IS NOT DISTINCT FROM p_timeline) THEN
        INSERT INTO pgraft.timeline_history (seq, timeline, primary_name, lsn, position, at)
        SELECT coalesce(max(h.seq), 0) + 1, p_timeline, p_name, p_lsn, p_position, p_ts
        FROM pgraft.timeline_history h;
    END IF;
    UPDATE pgraft.cluster SET primary_name = p_name, timeline = p_timeline;
    UPDATE pgraft.member SET fenced = false, fence_reason = '', following = NULL WHERE name = p_name;
END $$;

CREATE FUNCTION pgraft._start_operation(p_kind text, p_position bigint, p_ts timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_seq integer;
BEGIN
    UPDATE pgraft.operation_history
       SET outcome = 'superseded', completed_position = p_position, completed_at = p_ts
     WHERE kind = p_kind AND outcome = 'in_progress';
    SELECT coalesce(max(seq), 0) + 1 INTO v_seq FROM pgraft.operation_history;
    INSERT INTO pgraft.operation_history (seq, kind, outcome, started_position, started_at)
    VALUES (v_seq, p_kind, 'in_progress', p_position, p_ts);
    RETURN v_seq;
END $$;

CREATE FUNCTION pgraft._close_operation(p_kind text, p_outcome text, p_position bigint, p_ts timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_seq integer;
BEGIN
    SELECT seq INTO v_seq FROM pgraft.operation_history
     WHERE kind = p_kind AND outcome = 'in_progress' ORDER BY seq DESC LIMIT 1;
    IF v_seq IS NULL THEN
        SELECT coalesce(max(seq), 0) + 1 INTO v_seq FROM pgraft.operation_history;
        INSERT INTO pgraft.operation_history (seq, kind, outcome, started_position, started_at)
        VALUES (v_seq, p_kind, 'in_progress', p_position, p_ts);
    END IF;
    UPDATE pgraft.operation_history
       SET outcome = p_outcome, completed_position = p_position, completed_at = p_ts
     WHERE seq = v_seq;
    RETURN v_seq;
END $$;

CREATE FUNCTION pgraft._apply_event(p_position bigint, p_sub integer, p_type text, p_version integer,
                                    p jsonb, p_ts timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_seq integer;
    v_member jsonb;
    v_key text;
    v_change jsonb;
BEGIN
    IF p_version IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'pgraft: event %/% of type % has schema_version %, this schema knows 1',
            p_position, p_sub, p_type, p_version USING ERRCODE = 'data_exception';
    END IF;

    IF p_type = 'cluster_bootstrapped' THEN
        IF (SELECT cluster_id FROM pgraft.cluster) IS NULL THEN
            UPDATE pgraft.cluster SET cluster_id = p ->> 'cluster_id', cluster_name = p ->> 'cluster_name',
                                      bootstrapped_position = p_position;
            DELETE FROM pgraft.dynamic_config;
            INSERT INTO pgraft.dynamic_config (key, value)
            SELECT e.key, e.value FROM jsonb_each(coalesce(p -> 'dynamic_config', '{}'::jsonb)) AS e;
            FOR v_member IN
                SELECT e.value FROM jsonb_array_elements(p -> 'members') WITH ORDINALITY AS e(value, n)
                ORDER BY e.n
            LOOP
                PERFORM pgraft._add_member(v_member, false, p_position);
            END LOOP;
        END IF;

    ELSIF p_type = 'member_added' THEN
        PERFORM pgraft._add_member(p, coalesce((p ->> 'as_learner')::boolean, false), p_position);

    ELSIF p_type = 'learner_promoted' THEN
        UPDATE pgraft.member SET is_learner = false
         WHERE name = p ->> 'name' AND node_id = (p ->> 'node_id')::integer;

    ELSIF p_type = 'member_removed' THEN
        DELETE FROM pgraft.member WHERE name = p ->> 'name' AND node_id = (p ->> 'node_id')::integer;
        IF FOUND THEN
            UPDATE pgraft.cluster
               SET primary_name = CASE WHEN primary_name = p ->> 'name' THEN NULL ELSE primary_name END,
                   sync_standbys = array_remove(sync_standbys, p ->> 'name');
        END IF;

    ELSIF p_type = 'member_tags_changed' THEN
        UPDATE pgraft.member
           SET nofailover = coalesce((p #>> '{tags,nofailover}')::boolean, false),
               noloadbalance = coalesce((p #>> '{tags,noloadbalance}')::boolean, false),
               nosync = coalesce((p #>> '{tags,nosync}')::boolean, false),
               failover_priority = coalesce((p #>> '{tags,failover_priority}')::integer, 1)
         WHERE name = p ->> 'name';

    ELSIF p_type = 'raft_leader_elected' THEN
        UPDATE pgraft.cluster
           SET raft_term = (p ->> 'term')::bigint, raft_leader = p ->> 'leader_name',
               raft_leader_node_id = (p ->> 'leader_node_id')::integer
         WHERE raft_term <= (p ->> 'term')::bigint;

    ELSIF p_type = 'member_health_changed' THEN
        UPDATE pgraft.member
           SET healthy = (p ->> 'healthy')::boolean,
               pg_running = (p ->> 'pg_running')::boolean,
               reported_role = coalesce(p ->> 'role', 'unknown'),
               timeline = (p ->> 'timeline')::bigint,
               lsn = pgraft._lsn(p -> 'lsn'),
               lag_bytes = (p ->> 'lag_bytes')::bigint,
               health_reason = coalesce(p ->> 'reason', ''),
               health_position = p_position,
               health_at = p_ts
         WHERE name = p ->> 'name';

    ELSIF p_type = 'failover_started' THEN
        v_seq := pgraft._start_operation('failover', p_position, p_ts);
        UPDATE pgraft.operation_history
           SET old_primary = p ->> 'old_primary', candidate = p ->> 'chosen',
               candidates = coalesce(p -> 'candidates', '[]'::jsonb), reason = coalesce(p ->> 'reason', '')
         WHERE seq = v_seq;

    ELSIF p_type IN ('failover_completed', 'switchover_completed') THEN
        v_seq := pgraft._close_operation(split_part(p_type, '_', 1), 'succeeded', p_position, p_ts);
        UPDATE pgraft.operation_history
           SET old_primary = p ->> 'old_primary', new_primary = p ->> 'new_primary',
               duration_ms = (p ->> 'duration_ms')::bigint, timeline = (p ->> 'timeline')::bigint,
               lsn = pgraft._lsn(p -> 'lsn')
         WHERE seq = v_seq;
        PERFORM pgraft._set_primary(p ->> 'new_primary', (p ->> 'timeline')::bigint, pgraft._lsn(p -> 'lsn'),
                                    p_position, p_ts);

    ELSIF p_type = 'failover_failed' THEN
        v_seq := pgraft._close_operation('failover', 'failed', p_position, p_ts);
        UPDATE pgraft.operation_history
           SET old_primary = p ->> 'old_primary', error = coalesce(p ->> 'reason', '')
         WHERE seq = v_seq;

    ELSIF p_type = 'switchover_requested' THEN
        v_seq := pgraft._start_operation('switchover', p_position, p_ts);
        UPDATE pgraft.operation_history
           SET old_primary = p ->> 'primary', candidate = p ->> 'candidate',
               reason = coalesce(p ->> 'reason', ''), requested_by = coalesce(p ->> 'requested_by', ''),
               scheduled_at = (p ->> 'scheduled_at')::timestamptz
         WHERE seq = v_seq;

    ELSIF p_type = 'switchover_failed' THEN
        v_seq := pgraft._close_operation('switchover', 'failed', p_position, p_ts);
        UPDATE pgraft.operation_history
           SET old_primary = p ->> 'primary', candidate = coalesce(p ->> 'candidate', candidate),
               error = coalesce(p ->> 'reason', '')
         WHERE seq = v_seq;

    ELSIF p_type = 'primary_promoted' THEN
        PERFORM pgraft._set_primary(p ->> 'name', (p ->> 'timeline')::bigint, pgraft._lsn(p -> 'lsn'),
                                    p_position, p_ts);

    ELSIF p_type = 'replica_following' THEN
        UPDATE pgraft.member SET following = p ->> 'primary', fenced = false, fence_reason = ''
         WHERE name = p ->> 'name';

    ELSIF p_type = 'replica_rejoined' THEN
        UPDATE pgraft.member
           SET following = p ->> 'primary', fenced = false, fence_reason = '', rejoin_method = p ->> 'method'
         WHERE name = p ->> 'name';

    ELSIF p_type = 'synchronous_standbys_changed' THEN
        UPDATE pgraft.cluster
           SET sync_mode = p ->> 'mode', num_sync = (p ->> 'num_sync')::integer,
               sync_standbys = pgraft._sorted_set(p -> 'standbys');

    ELSIF p_type = 'maintenance_mode_changed' THEN
        UPDATE pgraft.cluster
           SET maintenance = (p ->> 'enabled')::boolean, maintenance_reason = coalesce(p ->> 'reason', ''),
               maintenance_by = coalesce(p ->> 'by', '');

    ELSIF p_type = 'dynamic_config_changed' THEN
        FOR v_key, v_change IN SELECT e.key, e.value FROM jsonb_each(p -> 'changes') AS e LOOP
            IF v_change -> 'new' IS NULL OR jsonb_typeof(v_change -> 'new') = 'null' THEN
                DELETE FROM pgraft.dynamic_config WHERE key = v_key;
            ELSE
                INSERT INTO pgraft.dynamic_config (key, value) VALUES (v_key, v_change -> 'new')
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
            END IF;
        END LOOP;
        UPDATE pgraft.cluster SET pending_restart = pgraft._sorted_set(p -> 'pending_restart');

    ELSIF p_type = 'node_fenced' THEN
        UPDATE pgraft.member SET fenced = true, fence_reason = coalesce(p ->> 'reason', '')
         WHERE name = p ->> 'name';

    ELSIF p_type = 'command_rejected' THEN
        NULL;  -- recorded in pgraft.events; no projection change

    ELSE
        RAISE EXCEPTION 'pgraft: unknown event type % at position %/%', p_type, p_position, p_sub
            USING ERRCODE = 'data_exception';
    END IF;
END $$;

CREATE FUNCTION pgraft.apply_events(from_exclusive bigint, to_inclusive bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_state pgraft.projection_state%ROWTYPE;
    v_missed bigint;
    v_ev record;
    v_n integer := 0;
    v_last bigint;
BEGIN
    IF to_inclusive IS NULL OR from_exclusive IS NULL OR to_inclusive <= from_exclusive THEN
        RETURN 0;
    END IF;
    SELECT * INTO v_state FROM pgraft.projection_state FOR UPDATE;
    IF from_exclusive < v_state.applied_position THEN
        RAISE EXCEPTION 'pgraft.apply_events(%, %): positions up to % are already applied to the projections',
            from_exclusive, to_inclusive, v_state.applied_position USING ERRCODE = 'data_exception';
    END IF;
    SELECT min(position) INTO v_missed FROM pgraft.events
     WHERE position > v_state.applied_position AND position <= from_exclusive;
    IF v_missed IS NOT NULL THEN
        RAISE EXCEPTION 'pgraft.apply_events(%, %): the event at position % was never applied (projections at %)',
            from_exclusive, to_inclusive, v_missed, v_state.applied_position USING ERRCODE = 'data_exception';
    END IF;
    FOR v_ev IN
        SELECT e.position, e.sub, e.type, e.schema_version, e.payload, e.ts FROM pgraft.events e
         WHERE e.position > from_exclusive AND e.position <= to_inclusive
         ORDER BY e.position, e.sub
    LOOP
        PERFORM pgraft._apply_event(v_ev.position, v_ev.sub, v_ev.type, v_ev.schema_version, v_ev.payload, v_ev.ts);
        v_n := v_n + 1;
        v_last := v_ev.position;
    END LOOP;
    UPDATE pgraft.projection_state
       SET applied_position = to_inclusive,
           last_event_position = coalesce(v_last, last_event_position),
           events_applied = events_applied + v_n;
    RETURN v_n;
END $$;
COMMENT ON FUNCTION pgraft.apply_events(bigint, bigint) IS
    'Fold the events with from_exclusive < position <= to_inclusive into the projections; returns how many. '
    'Refuses to re-apply (from_exclusive below the applied position) or to skip unapplied events.';

CREATE FUNCTION pgraft.rebuild_projections() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_applied bigint;
    v_n integer;
BEGIN
    PERFORM 1 FROM pgraft.projection_state FOR UPDATE;
    DELETE FROM pgraft.member;
    DELETE FROM pgraft.timeline_history;
    DELETE FROM pgraft.operation_history;
    DELETE FROM pgraft.dynamic_config;
    DELETE FROM pgraft.cluster;
    INSERT INTO pgraft.cluster DEFAULT VALUES;
    UPDATE pgraft.projection_state SET applied_position = 0, last_event_position = 0, events_applied = 0;
    SELECT max(position) INTO v_last FROM pgraft.events;
    v_n := pgraft.apply_events(0, coalesce(v_last, 0));
    SELECT applied_index INTO v_applied FROM pgraft.applied;
    UPDATE pgraft.projection_state SET applied_position = greatest(applied_position, coalesce(v_applied, 0));
    RETURN v_n;
END $$;
COMMENT ON FUNCTION pgraft.rebuild_projections() IS
    'Empty the projection tables and fold every event again; returns the number of events applied.';
"""

VIEWS = r"""
CREATE VIEW pgraft.cluster_status AS
SELECT c.cluster_name,
       c.cluster_id,
       c.primary_name,
       c.timeline,
       c.raft_leader,
       c.raft_term,
       c.sync_mode,
       c.num_sync,
       c.sync_standbys,
       c.maintenance,
       nullif(c.maintenance_reason, '') AS maintenance_reason,
       (SELECT count(*) FROM pgraft.member) AS member_count,
       (SELECT count(*) FROM pgraft.member WHERE NOT is_learner) AS voter_count,
       (SELECT count(*) FROM pgraft.member WHERE healthy) AS healthy_count,
       (SELECT o.kind FROM pgraft.operation_history o WHERE o.outcome = 'in_progress'
         ORDER BY o.seq DESC LIMIT 1) AS operation_in_progress,
       c.pending_restart,
       s.applied_position,
       s.last_event_position
FROM pgraft.cluster c CROSS JOIN pgraft.projection_state s;
COMMENT ON VIEW pgraft.cluster_status IS 'One row: the cluster at a glance.';

CREATE VIEW pgraft.members AS
SELECT m.name,
       m.node_id,
       CASE WHEN m.name = c.primary_name THEN 'primary'
            WHEN m.fenced THEN 'fenced'
            ELSE 'replica' END AS role,
       CASE WHEN m.node_id = c.raft_leader_node_id AND m.name = c.raft_leader THEN 'leader'
            WHEN m.is_learner THEN 'learner'
            ELSE 'voter' END AS raft_role,
       m.healthy,
       m.pg_running,
       m.reported_role,
       m.timeline,
       m.lsn,
       m.lag_bytes,
       pg_size_pretty(m.lag_bytes) AS lag,
       m.following,
       m.name = ANY (c.sync_standbys) AS sync_standby,
       m.nofailover,
       m.noloadbalance,
       m.nosync,
       m.failover_priority,
       m.is_learner,
       m.fenced,
       nullif(m.fence_reason, '') AS fence_reason,
       nullif(m.health_reason, '') AS health_reason,
       m.health_at AS last_report_at,
       m.raft_address,
       m.api_address,
       m.pg_host,
       m.pg_port,
       m.rejoin_method,
       m.added_position
FROM pgraft.member m CROSS JOIN pgraft.cluster c
ORDER BY m.name;
COMMENT ON VIEW pgraft.members IS 'One row per member: role, health, lag, tags, addresses.';

CREATE VIEW pgraft.failover_history AS
SELECT o.seq,
       o.kind,
       o.outcome,
       o.old_primary,
       o.new_primary,
       o.candidate,
       nullif(o.reason, '') AS reason,
       nullif(o.error, '') AS error,
       nullif(o.requested_by, '') AS requested_by,
       o.scheduled_at,
       o.started_at,
       o.completed_at,
       o.duration_ms,
       o.timeline,
       o.lsn,
       o.started_position,
       o.completed_position
FROM pgraft.operation_history o
ORDER BY o.seq DESC;
COMMENT ON VIEW pgraft.failover_history IS 'Failovers and switchovers, newest first.';
"""


def upgrade() -> None:
    execute_script(TABLES + FUNCTIONS + VIEWS + "SELECT pgraft.rebuild_projections();")


def downgrade() -> None:
    execute_script(
        """
        DROP VIEW IF EXISTS pgraft.failover_history;
        DROP VIEW IF EXISTS pgraft.members;
        DROP VIEW IF EXISTS pgraft.cluster_status;
        DROP FUNCTION IF EXISTS pgraft.rebuild_projections();
        DROP FUNCTION IF EXISTS pgraft.apply_events(bigint, bigint);
        DROP FUNCTION IF EXISTS pgraft._apply_event(bigint, integer, text, integer, jsonb, timestamptz);
        DROP FUNCTION IF EXISTS pgraft._close_operation(text, text, bigint, timestamptz);
        DROP FUNCTION IF EXISTS pgraft._start_operation(text, bigint, timestamptz);
        DROP FUNCTION IF EXISTS pgraft._set_primary(text, bigint, pg_lsn, bigint, timestamptz);
        DROP FUNCTION IF EXISTS pgraft._add_member(jsonb, boolean, bigint);
        DROP FUNCTION IF EXISTS pgraft._sorted_set(jsonb);
        DROP FUNCTION IF EXISTS pgraft._lsn(jsonb);
        DROP TABLE IF EXISTS pgraft.dynamic_config;
        DROP TABLE IF EXISTS pgraft.operation_history;
        DROP TABLE IF EXISTS pgraft.timeline_history;
        DROP TABLE IF EXISTS pgraft.member;
        DROP TABLE IF EXISTS pgraft.cluster;
        DROP TABLE IF EXISTS pgraft.projection_state;
        """
    )
