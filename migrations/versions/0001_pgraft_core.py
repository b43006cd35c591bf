"""pgraft core: Raft hard state, log, snapshot, events, applied index, node identity.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from ram.eventstore.schema import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS pgraft")
    execute_script(
        """
        CREATE TABLE pgraft.node_identity (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            cluster_id text NOT NULL,
            node_id integer NOT NULL CHECK (node_id > 0),
            node_name text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE pgraft.node_identity IS
            'Which cluster and node this store belongs to; a node refuses to start on another''s store.';

        CREATE TABLE pgraft.hard_state (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            term bigint NOT NULL CHECK (term >= 0),
            vote integer NOT NULL CHECK (vote >= 0),
            commit_index bigint NOT NULL CHECK (commit_index >= 0)
        );
        COMMENT ON TABLE pgraft.hard_state IS 'Raft hard state: current term, vote in that term, commit index.';

        CREATE TABLE pgraft.log (
            idx bigint PRIMARY KEY CHECK (idx > 0),
            term bigint NOT NULL CHECK (term > 0),
            entry_type smallint NOT NULL,
            data bytea NOT NULL
        );
        COMMENT ON TABLE pgraft.log IS
            'Raft log entries after the latest snapshot (compacted below it; pgraft.events is never compacted).';

        CREATE TABLE pgraft.snapshot (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            idx bigint NOT NULL CHECK (idx >= 0),
            term bigint NOT NULL CHECK (term >= 0),
            voters integer[] NOT NULL,
            learners integer[] NOT NULL,
            data bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE pgraft.snapshot IS 'The latest Raft snapshot: index, term, membership and state bytes.';

        CREATE TABLE pgraft.events (
            position bigint NOT NULL CHECK (position > 0),
            sub integer NOT NULL CHECK (sub >= 0),
            type text NOT NULL,
            schema_version integer NOT NULL CHECK (schema_version > 0),
            payload jsonb NOT NULL,
            term bigint NOT NULL,
            proposer integer NOT NULL,
            ts timestamptz NOT NULL,
            PRIMARY KEY (position, sub)
        );
        CREATE INDEX events_type_idx ON pgraft.events (type, position);
        COMMENT ON TABLE pgraft.events IS
            'Every cluster event in commit order; position = Raft index, sub = order within the entry.';

        CREATE TABLE pgraft.applied (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            applied_index bigint NOT NULL CHECK (applied_index >= 0)
        );
        INSERT INTO pgraft.applied (applied_index) VALUES (0);
        COMMENT ON TABLE pgraft.applied IS
            'Highest Raft index whose events and projection rows are written (same transaction).';

        CREATE FUNCTION pgraft.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('pgraft_events', (SELECT max(position)::text FROM new_rows));
            RETURN NULL;
        END $$;
        CREATE TRIGGER events_notify AFTER INSERT ON pgraft.events
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pgraft.notify_events();
        """
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS pgraft CASCADE")
