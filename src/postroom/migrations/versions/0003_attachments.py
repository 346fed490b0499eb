"""attachments (stored apart from messages) and the template each message used

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "postroom_attachment_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "postroom_attachments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=26), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("inline", sa.Boolean(), nullable=False),
        sa.Column("content_id", sa.String(length=200), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["postroom_messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("postroom_attachments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_postroom_attachments_message", ["message_id", "position"], unique=False
        )
    with op.batch_alter_table("postroom_messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attachment_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("template_name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("template_locale", sa.String(length=35), nullable=True))
        batch_op.add_column(sa.Column("template_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("postroom_messages", schema=None) as batch_op:
        batch_op.drop_column("template_version")
        batch_op.drop_column("template_locale")
        batch_op.drop_column("template_name")
        batch_op.drop_column("attachment_count")
    with op.batch_alter_table("postroom_attachments", schema=None) as batch_op:
        batch_op.drop_index("ix_postroom_attachments_message")
    op.drop_table("postroom_attachments")
    op.drop_table("postroom_attachment_blobs")
