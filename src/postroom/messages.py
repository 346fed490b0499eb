"""The outbox: the Message table, its statuses, the allowed transitions and the producer queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from postroom.addresses import ascii_domain, split_address
from postroom.attachments import AttachmentStore
from postroom.db import Base, UTCDateTime, new_id, utcnow
from postroom.drafts import Draft
from postroom.errors import InvalidTransition, MessageNotFound
from postroom.events import append_event


class MessageStatus(StrEnum):
    """Where a message is in its life; the value is what the database, JSON and CLI show."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"


S = MessageStatus
FINAL = frozenset({S.SENT, S.FAILED, S.CANCELLED, S.SUPPRESSED})
CLAIMABLE = frozenset({S.QUEUED, S.DEFERRED})
CANCELLABLE = frozenset({S.SCHEDULED, S.QUEUED, S.DEFERRED})
ALLOWED: dict[MessageStatus, frozenset[MessageStatus]] = {
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.SENDING, S.CANCELLED, S.SUPPRESSED}),
    S.SENDING: frozenset({S.SENT, S.DEFERRED, S.FAILED}),
    S.DEFERRED: frozenset({S.SENDING, S.CANCELLED, S.SUPPRESSED}),
    S.SENT: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.SUPPRESSED: frozenset(),
}


class Message(Base):
    """One email in the outbox, from acceptance to its final status."""

    __tablename__ = "postroom_messages"
    __table_args__ = (
        # claim_due and the dispatch sweep: "status IN (...) AND next_attempt_at <= now"
        Index("ix_postroom_messages_due", "status", "next_attempt_at"),
        # recover_expired: "status = 'sending' AND lease_until < now"
        Index("ix_postroom_messages_lease", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    stream: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    from_addr: Mapped[str] = mapped_column(Text)
    to: Mapped[list[str]] = mapped_column(JSON)
    cc: Mapped[list[str]] = mapped_column(JSON)
    bcc: Mapped[list[str]] = mapped_column(JSON)
    reply_to: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    tags: Mapped[list[str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    message_id_header: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When a task carrying this id was last published; the sweep re-publishes due rows whose
    # task is older than the redispatch interval, because the broker may have lost it.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    transport: Mapped[str | None] = mapped_column(String(64))
    # lets delivery skip the attachments query for the (usual) message without any
    attachment_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    template_name: Mapped[str | None] = mapped_column(String(100))
    template_locale: Mapped[str | None] = mapped_column(String(35))
    template_version: Mapped[int | None] = mapped_column(Integer)

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc and bcc), as bare addresses."""
        return [split_address(a)[1] for a in (*self.to, *self.cc, *self.bcc)]


def _insert_ignoring_duplicate_key(session: Session) -> Any:
    # ON CONFLICT DO NOTHING instead of catching IntegrityError: it works inside a caller's
    # transaction on PostgreSQL, where a failed INSERT would poison the whole transaction.
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(Message).on_conflict_do_nothing(index_elements=["idempotency_key"])


def create(
    session: Session,
    draft: Draft,
    *,
    attachment_store: AttachmentStore,
    now: datetime | None = None,
) -> tuple[Message, bool]:
    """Store ``draft`` in ``session``'s transaction; return the message and whether it is new.

    With an idempotency key already used, the existing message is returned and nothing is added.
    """
    now = now or utcnow()
    message_id = new_id()
    scheduled = draft.send_at is not None and draft.send_at > now
    status = S.SCHEDULED if scheduled else S.QUEUED
    domain = ascii_domain(split_address(draft.from_addr)[1].rpartition("@")[2])
    row = {
        "id": message_id,
        "stream": draft.stream.value,
        "status": status.value,
        "from_addr": draft.from_addr,
        "to": draft.to,
        "cc": draft.cc,
        "bcc": draft.bcc,
        "reply_to": draft.reply_to,
        "subject": draft.subject,
        "text": draft.text,
        "html": draft.html,
        "headers": draft.headers,
        "tags": draft.tags,
        "metadata_": draft.metadata,
        "idempotency_key": draft.idempotency_key,
        "message_id_header": f"<{message_id}@{domain}>",
        "attempts": 0,
        "next_attempt_at": draft.send_at if scheduled else now,
        "dispatched_at": None if scheduled else now,
        "created_at": now,
        "updated_at": now,
        "attachment_count": len(draft.attachments),
        "template_name": draft.template_name,
        "template_locale": draft.template_locale,
        "template_version": draft.template_version,
    }
    inserted = session.scalars(
        _insert_ignoring_duplicate_key(session).values(row).returning(Message),
        execution_options={"populate_existing": True},
    ).first()
    if inserted is None:
        existing = session.scalars(
            select(Message).where(Message.idempotency_key == draft.idempotency_key)
        ).one()
        return existing, False
    attachment_store.save(session, message_id, draft.attachments)
    append_event(session, message_id, status, at=now)
    return inserted, True


def get(session: Session, message_id: str) -> Message:
    """The message with ``message_id``, or ``MessageNotFound``."""
    message = session.get(Message, message_id)
    if message is None:
        raise MessageNotFound(message_id)
    return message


def list_messages(
    session: Session,
    *,
    status: MessageStatus | None = None,
    before: str | None = None,
    limit: int = 50,
) -> list[Message]:
    """Newest first; ``before`` is the last id of the previous page (ids sort by creation time)."""
    query = select(Message).order_by(Message.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Message.status == status.value)
    if before is not None:
        query = query.where(Message.id < before)
    return list(session.scalars(query))


def cancel(session: Session, message_id: str, *, now: datetime | None = None) -> Message:
    """Cancel a message that has not started sending; ``InvalidTransition`` otherwise."""
    now = now or utcnow()
    changed = session.execute(
        update(Message)
        .where(Message.id == message_id, Message.status.in_(CANCELLABLE))
        .values(status=S.CANCELLED.value, next_attempt_at=None, dispatched_at=None, updated_at=now)
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).first()
    if changed is None:
        current = get(session, message_id)
        raise InvalidTransition(message_id, current.status, S.CANCELLED)
    append_event(session, message_id, S.CANCELLED, detail="cancelled by request", at=now)
    return refresh(session, message_id)


def refresh(session: Session, message_id: str) -> Message:
    """The message as the database has it now, replacing any stale copy in ``session``."""
    message = session.get(Message, message_id, populate_existing=True)
    if message is None:
        raise MessageNotFound(message_id)
    return message


def count_by_status(session: Session, ids: Sequence[str]) -> dict[str, int]:
    """How many of ``ids`` are in each status (used by tests and the CLI)."""
    counts: dict[str, int] = {}
    for status in session.scalars(select(Message.status).where(Message.id.in_(ids))):
        counts[status] = counts.get(status, 0) + 1
    return counts


def find_by_idempotency_key(session: Session, key: str) -> Message | None:
    """The message stored under idempotency ``key``, or ``None``."""
    return session.scalars(select(Message).where(Message.idempotency_key == key)).first()
