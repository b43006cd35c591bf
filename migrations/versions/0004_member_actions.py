"""pgraft: operator-requested member actions (restart / reinit), and accepted switchovers, in the projections.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Two event types join the catalogue: ``member_action_requested`` and ``member_action_completed``.
Rather than restate the whole ``pgraft._apply_event`` of revision 0002, the old function is kept
under another name and the new one handles the two new types and hands every other type to it, so
the fold of the older types stays exactly the code that revision 0002 tested.

It also changes one rule: a ``switchover_requested`` that is the arbiter accepting the switchover in
progress (reason starting with ``ram.eventstore.events.SWITCHOVER_ACCEPTED_PREFIX``, written out below
as it was when this revision was made) updates that operation instead of
superseding it with a second one, so a switchover is one row of the history, not two.
"""


from ram.eventstore.schema import execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_SIGNATURE = "(bigint, integer, text, integer, jsonb, timestamptz)"


def upgrade() -> None:
    execute_script(
        rf"""
        ALTER TABLE pgraft.member
            ADD COLUMN pending_action text CHECK (pending_action IN ('restart', 'reinit')),
            ADD COLUMN pending_action_position bigint;
        COMMENT ON COLUMN pgraft.member.pending_action IS
            'An operator''s restart / reinit request the member has not carried out yet.';

        ALTER FUNCTION pgraft._apply_event{_SIGNATURE} RENAME TO _apply_event_0002;

        CREATE FUNCTION pgraft._apply_event(p_position bigint, p_sub integer, p_type text, p_version integer,
                                            p jsonb, p_ts timestamptz) RETURNS void
        LANGUAGE plpgsql AS $$
        DECLARE
            v_open integer;
            v_open_kind text;
        BEGIN
            IF p_version IS DISTINCT FROM 1 THEN
                RAISE EXCEPTION 'pgraft: event %/% of type % has schema_version %, this schema knows 1',
                    p_position, p_sub, p_type, p_version USING ERRCODE = 'data_exception';
            END IF;
            IF p_type = 'member_action_requested' THEN
                UPDATE pgraft.member SET pending_action = p ->> 'action', pending_action_position = p_position
                 WHERE name = p ->> 'name';
            ELSIF p_type = 'member_action_completed' THEN
                UPDATE pgraft.member SET pending_action = NULL, pending_action_position = NULL
                 WHERE name = p ->> 'name' AND pending_action = p ->> 'action';
            ELSIF p_type = 'switchover_requested'
                  AND starts_with(coalesce(p ->> 'reason', ''), 'accepted by the arbiter: ') THEN
                SELECT seq, kind INTO v_open, v_open_kind FROM pgraft.operation_history
                 WHERE outcome = 'in_progress' ORDER BY seq DESC LIMIT 1;
                IF v_open_kind = 'switchover' THEN
                    -- The arbiter accepted the request in progress: the same operation, with its candidate.
                    UPDATE pgraft.operation_history
                       SET started_position = p_position, old_primary = p ->> 'primary',
                           candidate = p ->> 'candidate', reason = coalesce(p ->> 'reason', '')
                     WHERE seq = v_open;
                ELSE
                    PERFORM pgraft._apply_event_0002(p_position, p_sub, p_type, p_version, p, p_ts);
                END IF;
            ELSE
                PERFORM pgraft._apply_event_0002(p_position, p_sub, p_type, p_version, p, p_ts);
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    execute_script(
        rf"""
        DROP FUNCTION pgraft._apply_event{_SIGNATURE};
        ALTER FUNCTION pgraft._apply_event_0002{_SIGNATURE} RENAME TO _apply_event;
        ALTER TABLE pgraft.member DROP COLUMN pending_action_position, DROP COLUMN pending_action;
        """
    )
