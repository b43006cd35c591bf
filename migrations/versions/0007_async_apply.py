"""pgraft: ``apply_committed`` and ``seal_applied``, the apply path without an fsync or a SQL fold of its own.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

A committed entry's outcome is a pure function of the log, and the log is durable before anything
is applied from it. So applying (events, projections, applied index) no longer waits for its own
fsync: ``apply_committed`` commits with ``synchronous_commit = off`` (set for its transaction
only). The store's WAL is one sequence, so a crash of the store loses at most a suffix of such
transactions; the function returns the store's applied index, and a caller that finds it lower than
what it wrote applies those entries again, from its log (``seal_applied``, a tiny synchronous write,
is how an idle node finds out, and what makes the applies before it durable).

The projections are written from the node's own fold: the rows it changed, as one JSON document
(``ram.projections.rows``); folding each event again in PL/pgSQL cost ~0.1 ms per event.
``pgraft.apply_events`` and ``pgraft.rebuild_projections()`` stay as the reference, and write the
same rows.
"""

from alembic import op

from ram.eventstore.schema import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(
        r"""
        CREATE FUNCTION pgraft.apply_committed(
            p_first bigint, p_last bigint,
            p_position bigint[], p_sub integer[], p_type text[], p_version integer[], p_payload jsonb[],
            p_term bigint[], p_proposer integer[], p_ts timestamptz[], p_rows jsonb) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            current bigint;
        BEGIN
            SELECT applied_index INTO current FROM pgraft.applied FOR UPDATE;
            IF p_last <= current OR p_first > current + 1 THEN
                -- Applied already (a retry), or a gap (the store lost earlier applies): write nothing,
                -- say where the store is.
                RETURN current;
            END IF;
            PERFORM set_config('synchronous_commit', 'off', true);
            INSERT INTO pgraft.events (position, sub, type, schema_version, payload, term, proposer, ts)
            SELECT * FROM unnest(p_position, p_sub, p_type, p_version, p_payload, p_term, p_proposer, p_ts)
                AS e(position, sub, type, schema_version, payload, term, proposer, ts)
            WHERE e.position > current;

            -- The projection rows the fold changed (ram.projections.rows), each written whole.
            IF p_rows ? 'cluster' THEN
                UPDATE pgraft.cluster c
                   SET cluster_id = r.cluster_id, cluster_name = r.cluster_name,
                       bootstrapped_position = r.bootstrapped_position, primary_name = r.primary_name,
                       timeline = r.timeline, raft_leader = r.raft_leader,
                       raft_leader_node_id = r.raft_leader_node_id, raft_term = r.raft_term,
                       sync_mode = r.sync_mode, num_sync = r.num_sync, sync_standbys = r.sync_standbys,
                       maintenance = r.maintenance, maintenance_reason = r.maintenance_reason,
                       maintenance_by = r.maintenance_by, pending_restart = r.pending_restart
                  FROM jsonb_populate_record(NULL::pgraft.cluster, p_rows -> 'cluster') r;
            END IF;
            IF p_rows ? 'members' OR p_rows ? 'members_removed' THEN
                DELETE FROM pgraft.member
                 WHERE name IN (SELECT jsonb_array_elements_text(coalesce(p_rows -> 'members_removed', '[]')))
                    OR name IN (SELECT m ->> 'name' FROM jsonb_array_elements(coalesce(p_rows -> 'members', '[]')) m);
                INSERT INTO pgraft.member
                SELECT * FROM jsonb_populate_recordset(NULL::pgraft.member, coalesce(p_rows -> 'members', '[]'));
            END IF;
            IF p_rows ? 'timelines' OR p_rows ? 'timelines_keep' THEN
                DELETE FROM pgraft.timeline_history
                 WHERE seq > coalesce((p_rows ->> 'timelines_keep')::integer, 2147483647)
                    OR seq IN (SELECT (t ->> 'seq')::integer
                                 FROM jsonb_array_elements(coalesce(p_rows -> 'timelines', '[]')) t);
                INSERT INTO pgraft.timeline_history
                SELECT * FROM jsonb_populate_recordset(NULL::pgraft.timeline_history,
                                                       coalesce(p_rows -> 'timelines', '[]'));
            END IF;
            IF p_rows ? 'operations' OR p_rows ? 'operations_keep' THEN
                DELETE FROM pgraft.operation_history
                 WHERE seq > coalesce((p_rows ->> 'operations_keep')::integer, 2147483647)
                    OR seq IN (SELECT (o ->> 'seq')::integer
                                 FROM jsonb_array_elements(coalesce(p_rows -> 'operations', '[]')) o);
                INSERT INTO pgraft.operation_history
                SELECT * FROM jsonb_populate_recordset(NULL::pgraft.operation_history,
                                                       coalesce(p_rows -> 'operations', '[]'));
            END IF;
            IF p_rows ? 'config_removed' THEN
                DELETE FROM pgraft.dynamic_config
                 WHERE key IN (SELECT jsonb_array_elements_text(p_rows -> 'config_removed'));
            END IF;
            IF p_rows ? 'config' THEN
                INSERT INTO pgraft.dynamic_config (key, value)
                SELECT key, value FROM jsonb_each(p_rows -> 'config')
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
            END IF;
            UPDATE pgraft.projection_state
               SET applied_position = p_last,
                   last_event_position = (p_rows ->> 'last_event_position')::bigint,
                   events_applied = (p_rows ->> 'events_applied')::bigint;
            UPDATE pgraft.applied SET applied_index = p_last;
            RETURN p_last;
        END $$;
        COMMENT ON FUNCTION pgraft.apply_committed IS
            'Apply committed entries (first..last) exactly once with an asynchronous commit: their events, '
            'the projection rows the node''s fold changed (p_rows) and the applied index. Returns the '
            'store''s applied index (below p_last: nothing written, the store lost earlier applies).';

        CREATE FUNCTION pgraft.seal_applied() RETURNS bigint
        LANGUAGE sql AS $$
            UPDATE pgraft.applied SET applied_index = applied_index RETURNING applied_index
        $$;
        COMMENT ON FUNCTION pgraft.seal_applied IS
            'A synchronous write that makes every earlier asynchronous apply durable; returns the applied index.';
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS pgraft.seal_applied()")
    op.execute("DROP FUNCTION IF EXISTS pgraft.apply_committed(bigint, bigint, bigint[], integer[], text[], "
               "integer[], jsonb[], bigint[], integer[], timestamptz[], jsonb)")
