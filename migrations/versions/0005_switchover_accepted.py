"""pgraft: a switchover's acceptance is its own event type, ``switchover_accepted``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Until now the arbiter accepted a switchover by proposing a second ``switchover_requested`` whose
reason began with ``'accepted by the arbiter: '``, and every reader (the Python fold, revision
0004's SQL fold, the arbiter, the keeper) recognised an acceptance by that text. Now:

* ``switchover_accepted`` (``primary``, ``candidate``, ``reason``) updates the switchover in
  progress: its started_position (timers restart), old primary, candidate and reason, and marks it
  ``accepted``; with no switchover in progress it opens an accepted one (the fold is total);
* ``switchover_requested`` always opens an operation (handed straight to revision 0002's fold, so
  revision 0004's reason-prefix branch is no longer reached);
* ``pgraft.operation_history.accepted`` says whether the arbiter accepted the switchover;
* the stored events are rewritten: each prefixed ``switchover_requested`` becomes the
  ``switchover_accepted`` it meant (the reason keeps its text after the prefix), and the accepted
  column is filled from the rows' reasons. Downgrade reverses both.

A cluster is upgraded with all its nodes on the new code: an older node would not know the new
event type and stops applying (it never skips an event), rather than folding it differently.
"""

from ram.eventstore.schema import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SIGNATURE = "(bigint, integer, text, integer, jsonb, timestamptz)"
#: The text that meant "accepted" before this revision (written out: it no longer exists in the code).
_PREFIX = "accepted by the arbiter: "


def upgrade() -> None:
    execute_script(
        rf"""
        ALTER TABLE pgraft.operation_history ADD COLUMN accepted boolean NOT NULL DEFAULT false;
        COMMENT ON COLUMN pgraft.operation_history.accepted IS
            'A switchover the arbiter accepted (switchover_accepted): its candidate is final.';
        UPDATE pgraft.operation_history SET accepted = true, reason = substr(reason, {len(_PREFIX) + 1})
         WHERE kind = 'switchover' AND starts_with(reason, '{_PREFIX}');

        UPDATE pgraft.events
           SET type = 'switchover_accepted',
               payload = jsonb_build_object('primary', payload -> 'primary', 'candidate', payload -> 'candidate',
                                            'reason', substr(payload ->> 'reason', {len(_PREFIX) + 1}))
         WHERE type = 'switchover_requested' AND starts_with(coalesce(payload ->> 'reason', ''), '{_PREFIX}')
           AND payload ->> 'candidate' IS NOT NULL;

        ALTER FUNCTION pgraft._apply_event{_SIGNATURE} RENAME TO _apply_event_0004;

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
            IF p_type = 'switchover_accepted' THEN
                SELECT seq, kind INTO v_open, v_open_kind FROM pgraft.operation_history
                 WHERE outcome = 'in_progress' ORDER BY seq DESC LIMIT 1;
                IF v_open_kind = 'switchover' THEN
                    UPDATE pgraft.operation_history
                       SET started_position = p_position, old_primary = p ->> 'primary',
                           candidate = p ->> 'candidate', reason = coalesce(p ->> 'reason', ''), accepted = true
                     WHERE seq = v_open;
                ELSE  -- the fold is total: an acceptance with no request in progress opens an accepted one
                    v_open := pgraft._start_operation('switchover', p_position, p_ts);
                    UPDATE pgraft.operation_history
                       SET old_primary = p ->> 'primary', candidate = p ->> 'candidate',
                           reason = coalesce(p ->> 'reason', ''), accepted = true
                     WHERE seq = v_open;
                END IF;
            ELSIF p_type = 'switchover_requested' THEN
                PERFORM pgraft._apply_event_0002(p_position, p_sub, p_type, p_version, p, p_ts);
            ELSE
                PERFORM pgraft._apply_event_0004(p_position, p_sub, p_type, p_version, p, p_ts);
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    execute_script(
        rf"""
        DROP FUNCTION pgraft._apply_event{_SIGNATURE};
        ALTER FUNCTION pgraft._apply_event_0004{_SIGNATURE} RENAME TO _apply_event;

        UPDATE pgraft.events
           SET type = 'switchover_requested',
               payload = jsonb_build_object('primary', payload -> 'primary', 'candidate', payload -> 'candidate',
                                            'scheduled_at', NULL, 'requested_by', '',
                                            'reason', '{_PREFIX}' || coalesce(payload ->> 'reason', ''))
         WHERE type = 'switchover_accepted';

        UPDATE pgraft.operation_history SET reason = left('{_PREFIX}' || reason, 1000) WHERE accepted;
        ALTER TABLE pgraft.operation_history DROP COLUMN accepted;
        """
    )
