"""The event log: one row per status transition of a message, with what caused it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from postroom.db import Base, UTCDateTime, utcnow


class MessageEvent(Base):
    """A transition of one message: when, to which status, and why."""

    __tablename__ = "postroom_events"
    __table_args__ = (Index("ix_postroom_events_message", "message_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    message_id: Mapped[str] = mapped_column(
        String(26), ForeignKey("postroom_messages.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    # SMTP reply code or HTTP status of the attempt, when there was one.
    code: Mapped[int | None] = mapped_column(Integer)


@dataclass(frozen=True)
class NewEvent:
    """An event about to be written."""

    message_id: str
    status: str
    detail: str | None = None
    code: int | None = None


def append_events(
    session: Session, events: Iterable[NewEvent], *, at: datetime | None = None
) -> None:
    """Insert events in one statement; every status transition calls this in its transaction."""
    moment = at or utcnow()
    rows = [
        {
            "message_id": event.message_id,
            "status": event.status,
            "detail": event.detail,
            "code": event.code,
            "at": moment,
        }
        for event in events
    ]
    if rows:
        session.execute(insert(MessageEvent), rows)


def append_event(
    session: Session,
    message_id: str,
    status: str,
    *,
    detail: str | None = None,
    code: int | None = None,
    at: datetime | None = None,
) -> None:
    """Insert one event row."""
    append_events(session, [NewEvent(message_id, status, detail, code)], at=at)


def list_events(session: Session, message_id: str) -> list[MessageEvent]:
    """A message's events, oldest first."""
    query = select(MessageEvent).where(MessageEvent.message_id == message_id)
    return list(session.scalars(query.order_by(MessageEvent.id)))
