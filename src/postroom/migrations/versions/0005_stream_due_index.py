"""an index for claiming the oldest due messages of one stream without sorting every due row

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_postroom_messages_stream_due", "postroom_messages", ["stream", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_postroom_messages_stream_due", table_name="postroom_messages")
