"""the stream index for claiming holds only claimable messages (a partial index)

A claimed, sent or failed message used to stay in ``ix_postroom_messages_stream_due`` until a
vacuum, and every batch's top-up read past them; with no statistics yet the planner also chose
to sort every due row per batch instead of reading the index in order.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Spelled out rather than imported: a migration must keep meaning what it meant when written.
_CLAIMABLE = sa.text("status IN ('deferred', 'queued')")


def upgrade() -> None:
    op.create_index(
        "ix_postroom_messages_claimable",
        "postroom_messages",
        ["stream", "next_attempt_at"],
        postgresql_where=_CLAIMABLE,
        sqlite_where=_CLAIMABLE,
    )
    op.drop_index("ix_postroom_messages_stream_due", table_name="postroom_messages")


def downgrade() -> None:
    op.create_index(
        "ix_postroom_messages_stream_due", "postroom_messages", ["stream", "next_attempt_at"]
    )
    op.drop_index("ix_postroom_messages_claimable", table_name="postroom_messages")
