"""pgraft: ``callback_ran``, the outcome of a member's operator script (``[callbacks]``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

A member records how each of its callbacks (on_start, on_stop, on_restart, on_role_change,
on_reload) ended: outcome, exit code, duration and the end of its output. The event is
informational - no projection changes with it - so the SQL fold only has to accept it.

Downgrade removes the recorded ``callback_ran`` events (the older fold does not know the type and
would stop applying at the first one).
"""

from ram.eventstore.schema import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SIGNATURE = "(bigint, integer, text, integer, jsonb, timestamptz)"


def upgrade() -> None:
    execute_script(
        rf"""
        ALTER FUNCTION pgraft._apply_event{_SIGNATURE} RENAME TO _apply_event_0005;

        CREATE FUNCTION pgraft._apply_event(p_position bigint, p_sub integer, p_type text, p_version integer,
                                            p jsonb, p_ts timestamptz) RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            IF p_type = 'callback_ran' THEN
                IF p_version IS DISTINCT FROM 1 THEN
                    RAISE EXCEPTION 'pgraft: event %/% of type % has schema_version %, this schema knows 1',
                        p_position, p_sub, p_type, p_version USING ERRCODE = 'data_exception';
                END IF;
                RETURN;  -- informational: the event row is the whole record
            END IF;
            PERFORM pgraft._apply_event_0005(p_position, p_sub, p_type, p_version, p, p_ts);
        END $$;
        """
    )


def downgrade() -> None:
    execute_script(
        rf"""
        DROP FUNCTION pgraft._apply_event{_SIGNATURE};
        ALTER FUNCTION pgraft._apply_event_0005{_SIGNATURE} RENAME TO _apply_event;
        DELETE FROM pgraft.events WHERE type = 'callback_ran';
        """
    )
