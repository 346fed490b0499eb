"""outbox: messages, events, api keys

Revision ID: 0001
Revises:
Create Date: 2026-11-23 15:21:46.893284
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import postroom.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "postroom_api_keys",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("created_at", postroom.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", postroom.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_table(
        "postroom_messages",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("stream", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("from_addr", sa.Text(), nullable=False),
        sa.Column("to", sa.JSON(), nullable=False),
        sa.Column("cc", sa.JSON(), nullable=False),
        sa.Column("bcc", sa.JSON(), nullable=False),
        sa.Column("reply_to", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("message_id_header", sa.String(length=255), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", postroom.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", postroom.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lease_until", postroom.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", postroom.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", postroom.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", postroom.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("transport", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("postroom_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_postroom_messages_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index("ix_postroom_messages_lease", ["status", "lease_until"], unique=False)

    op.create_table(
        "postroom_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=26), nullable=False),
        sa.Column("at", postroom.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["postroom_messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("postroom_events", schema=None) as batch_op:
        batch_op.create_index("ix_postroom_events_message", ["message_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("postroom_events", schema=None) as batch_op:
        batch_op.drop_index("ix_postroom_events_message")

    op.drop_table("postroom_events")
    with op.batch_alter_table("postroom_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_postroom_messages_lease")
        batch_op.drop_index("ix_postroom_messages_due")

    op.drop_table("postroom_messages")
    op.drop_table("postroom_api_keys")
