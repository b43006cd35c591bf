"""pgraft: ``member_lease_announced`` and ``member.lease_s``, each member's committed lease length.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

A new Raft leader does not know the lease lengths of the grants its predecessors made, so it
presumes one. It used to presume 2 s (or its own ``lease_s`` when longer), which a primary whose
own ``lease_s`` is longer - set on that node only, or during a rolling change of ``lease_s`` - could
outlive. Now a node commits its lease length (``member_lease_announced``) before it uses a lease
longer than 2 s, and a new leader presumes the longest committed one (``ram.ha.lease``).

Also drops ``pgraft.save_ready`` (revision 0003), which nothing has called since the apply path
moved to ``apply_committed`` (0007).

Downgrade removes the column and the recorded events (the older fold does not know the type and
would stop applying at the first one), and puts ``save_ready`` back.
"""

from ram.eventstore.schema import execute_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SIGNATURE = "(bigint, integer, text, integer, jsonb, timestamptz)"
_SAVE_READY = (
    "(bigint[], bigint[], smallint[], bytea[], bigint, integer, bigint, bigint, bigint, bigint[], integer[], "
    "text[], integer[], jsonb[], bigint[], integer[], timestamptz[])"
)


def upgrade() -> None:
    execute_script(
        rf"""
        ALTER TABLE pgraft.member ADD COLUMN lease_s double precision;
        DROP FUNCTION IF EXISTS pgraft.save_ready{_SAVE_READY};

        ALTER FUNCTION pgraft._apply_event{_SIGNATURE} RENAME TO _apply_event_0007;

        CREATE FUNCTION pgraft._apply_event(p_position bigint, p_sub integer, p_type text, p_version integer,
                                            p jsonb, p_ts timestamptz) RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            IF p_type = 'member_lease_announced' THEN
                IF p_version IS DISTINCT FROM 1 THEN
                    RAISE EXCEPTION 'pgraft: event %/% of type % has schema_version %, this schema knows 1',
                        p_position, p_sub, p_type, p_version USING ERRCODE = 'data_exception';
                END IF;
                UPDATE pgraft.member SET lease_s = (p ->> 'lease_s')::double precision WHERE name = p ->> 'name';
                RETURN;
            END IF;
            PERFORM pgraft._apply_event_0007(p_position, p_sub, p_type, p_version, p, p_ts);
        END $$;
        """
    )


def downgrade() -> None:
    execute_script(
        rf"""
        DROP FUNCTION pgraft._apply_event{_SIGNATURE};
        ALTER FUNCTION pgraft._apply_event_0007{_SIGNATURE} RENAME TO _apply_event;
        DELETE FROM pgraft.events WHERE type = 'member_lease_announced';
        ALTER TABLE pgraft.member DROP COLUMN lease_s;

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
        """
    )
