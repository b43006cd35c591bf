"""pgraft: ``apply_committed`` and ``seal_applied``, the apply path without an fsync of its own.

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
            p_term bigint[], p_proposer integer[], p_ts timestamptz[]) RETURNS bigint
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
            RETURN pgraft.append_entries(p_first, p_last, p_position, p_sub, p_type, p_version, p_payload,
                                         p_term, p_proposer, p_ts);
        END $$;
        COMMENT ON FUNCTION pgraft.apply_committed IS
            'Apply committed entries (first..last) exactly once with an asynchronous commit; returns the '
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
               "integer[], jsonb[], bigint[], integer[], timestamptz[])")
