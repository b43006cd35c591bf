"""pgraft: one-round-trip functions for the hot path (persisting a Ready together with its applies).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

A Raft commit waits for a store write on the leader and on a follower, then for the apply; each
extra round trip to the store is latency on every proposal. These functions make each path one
statement (and so one implicit transaction when the caller has none).
"""

from alembic import op

from ram.eventstore.schema import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(
        r"""
        CREATE FUNCTION pgraft.save_log(
            p_idx bigint[], p_term bigint[], p_type smallint[], p_data bytea[],
            p_hs_term bigint, p_hs_vote integer, p_hs_commit bigint) RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Entries may replace a conflicting suffix: everything from the first new index goes.
            IF cardinality(p_idx) > 0 THEN
                DELETE FROM pgraft.log WHERE idx >= p_idx[1];
                INSERT INTO pgraft.log (idx, term, entry_type, data)
                SELECT * FROM unnest(p_idx, p_term, p_type, p_data);
            END IF;
            IF p_hs_term IS NOT NULL THEN
                INSERT INTO pgraft.hard_state (id, term, vote, commit_index)
                VALUES (true, p_hs_term, p_hs_vote, p_hs_commit)
                ON CONFLICT (id) DO UPDATE SET term = EXCLUDED.term, vote = EXCLUDED.vote,
                    commit_index = EXCLUDED.commit_index;
            END IF;
        END $$;
        COMMENT ON FUNCTION pgraft.save_log IS
            'Persist one Raft Ready (entries replacing any conflicting suffix, then hard state) atomically.';

        CREATE FUNCTION pgraft.append_entries(
            p_first bigint, p_last bigint,
            p_position bigint[], p_sub integer[], p_type text[], p_version integer[], p_payload jsonb[],
            p_term bigint[], p_proposer integer[], p_ts timestamptz[]) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            current bigint;
        BEGIN
            SELECT applied_index INTO current FROM pgraft.applied FOR UPDATE;
            IF p_last <= current THEN
                RETURN current;  -- already applied: re-applying after a crash writes nothing
            END IF;
            IF p_first > current + 1 THEN
                RAISE EXCEPTION 'entries start at %, but the applied index is % (gap)', p_first, current;
            END IF;
            INSERT INTO pgraft.events (position, sub, type, schema_version, payload, term, proposer, ts)
            SELECT * FROM unnest(p_position, p_sub, p_type, p_version, p_payload, p_term, p_proposer, p_ts)
                AS e(position, sub, type, schema_version, payload, term, proposer, ts)
            WHERE e.position > current;
            PERFORM pgraft.apply_events(current, p_last);
            UPDATE pgraft.applied SET applied_index = p_last;
            RETURN p_last;
        END $$;
        COMMENT ON FUNCTION pgraft.append_entries IS
            'Apply committed entries (first..last): their events, the projections and the applied index, '
            'exactly once.';

        CREATE FUNCTION pgraft.save_ready(
            p_idx bigint[], p_term bigint[], p_type smallint[], p_data bytea[],
            p_hs_term bigint, p_hs_vote integer, p_hs_commit bigint,
            p_first bigint, p_last bigint,
            p_position bigint[], p_sub integer[], p_etype text[], p_version integer[], p_payload jsonb[],
            p_eterm bigint[], p_proposer integer[], p_ts timestamptz[]) RETURNS bigint
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pgraft.save_log(p_idx, p_term, p_type, p_data, p_hs_term, p_hs_vote, p_hs_commit);
            IF p_last IS NULL THEN
                RETURN NULL;
            END IF;
            RETURN pgraft.append_entries(p_first, p_last, p_position, p_sub, p_etype, p_version, p_payload,
                                         p_eterm, p_proposer, p_ts);
        END $$;
        COMMENT ON FUNCTION pgraft.save_ready IS
            'One Raft Ready in one transaction: log entries, hard state, and the committed entries applied.';
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS pgraft.save_ready(bigint[], bigint[], smallint[], bytea[], bigint, integer, "
               "bigint, bigint, bigint, bigint[], integer[], text[], integer[], jsonb[], bigint[], integer[], "
               "timestamptz[])")
    op.execute("DROP FUNCTION IF EXISTS pgraft.append_entries(bigint, bigint, bigint[], integer[], text[], "
               "integer[], jsonb[], bigint[], integer[], timestamptz[])")
    op.execute("DROP FUNCTION IF EXISTS pgraft.save_log(bigint[], bigint[], smallint[], bytea[], bigint, integer, "
               "bigint)")
