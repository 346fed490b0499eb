"""The outbox: the Message table, its statuses, the allowed transitions and the producer queries."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy import column as sql_column
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Mapped, QueryableAttribute, Session, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Insert

from postroom.addresses import ascii_domain, split_address
from postroom.attachments import AttachmentStore
from postroom.db import Base, UTCDateTime, new_id, utcnow
from postroom.drafts import Draft
from postroom.errors import InvalidTransition, MessageNotFound
from postroom.events import MessageEvent, append_event


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


def is_claimable(status: ColumnElement[str] | QueryableAttribute[str]) -> ColumnElement[bool]:
    """``status IN ('deferred', 'queued')``: the partial claim index's predicate and the queries'.

    Literal values in a fixed order: a partial index serves only queries whose predicate it can
    prove its own, which a bound parameter (a prepared statement's generic plan) or a set's
    per-process order would defeat.
    """
    return status.in_([literal_column(f"'{value}'") for value in sorted(CLAIMABLE)])


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
        # claim_due's top-up: the oldest claimable messages of one stream, read in index order.
        # Partial, so a row leaves it when claimed: a backlog being drained is not read past
        # again by every batch, and the planner picks the ordered scan even before it has
        # statistics (a fresh table, or a burst after a quiet spell).
        Index(
            "ix_postroom_messages_claimable",
            "stream",
            "next_attempt_at",
            postgresql_where=is_claimable(sql_column("status")),
            sqlite_where=is_claimable(sql_column("status")),
        ),
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
    transport: Mapped[str | None] = mapped_column(String(64))  # the one that delivered it
    requested_transport: Mapped[str | None] = mapped_column(String(64))  # send(transport=…)
    # lets delivery skip the attachments query for the (usual) message without any
    attachment_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    template_name: Mapped[str | None] = mapped_column(String(100))
    template_locale: Mapped[str | None] = mapped_column(String(35))
    template_version: Mapped[int | None] = mapped_column(Integer)

    @property
    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc and bcc), as bare addresses."""
        return [split_address(a)[1] for a in (*self.to, *self.cc, *self.bcc)]


class ClaimedMessage(NamedTuple):
    """A message as a claim hands it to delivery: the columns building and sending it read.

    Not the whole row and not an ORM entity: a worker reads these fifteen columns and writes
    through none of them, and loading all thirty as entities made claiming cost 41 to 47 µs of
    CPU per message instead of 15 to 19. A named tuple, because one is built per message.
    """

    id: str
    stream: str
    from_addr: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str]
    message_id_header: str
    attempts: int
    requested_transport: str | None
    attachment_count: int

    @classmethod
    def of(cls, message: Message) -> ClaimedMessage:
        """The claimed form of a stored ``message``."""
        return cls._make(getattr(message, name) for name in cls._fields)


# (attribute name, column) of every column: "metadata" is the column, "metadata_" the attribute
_COLUMNS = [(prop.key, prop.columns[0]) for prop in sa_inspect(Message).column_attrs]


_MESSAGE_CLASS = sa_inspect(Message).class_manager

_messages = cast(Table, Message.__table__)
_events = cast(Table, MessageEvent.__table__)
_JSON_KEYS = frozenset(column.key for column in _messages.columns if isinstance(column.type, JSON))


@functools.cache
def _insert_statement(dialect: str, *, json_as_text: bool = False) -> Insert:
    """The statement that stores a message and its first event, compiled once per dialect.

    ON CONFLICT DO NOTHING instead of catching IntegrityError: it works inside a caller's
    transaction on PostgreSQL, where a failed INSERT would poison the whole transaction. On
    PostgreSQL the event row is written by the same statement (one round trip), and only when
    the message row was. ``json_as_text``: JSON columns take JSON text, cast in SQL.
    """
    if dialect != "postgresql":
        return sqlite.insert(_messages).on_conflict_do_nothing(index_elements=["idempotency_key"])

    def value(column: Column[Any]) -> ColumnElement[Any]:
        # inside a CTE the values need named parameters, or they are compiled as anonymous ones
        if json_as_text and column.key in _JSON_KEYS:
            return sql_cast(bindparam(column.key, type_=Text()), column.type)
        return bindparam(column.key, type_=column.type)

    named = {column.key: value(column) for column in _messages.columns}
    inserted = (
        postgresql.insert(_messages)
        .values(named)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(_messages.c.id)
        .cte("inserted")
    )
    first_event = select(
        inserted.c.id,
        bindparam("event_status", type_=String()),
        bindparam("event_at", type_=UTCDateTime()),
    )
    return (
        insert(_events)
        .from_select(["message_id", "status", "at"], first_event)
        .returning(_events.c.message_id)
    )


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
    row = new_row(draft, now)
    message = _message_from(row)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        params = {**row, "event_status": message.status, "event_at": now}
        created = session.execute(_insert_statement(dialect), params).first() is not None
    else:
        result = cast(CursorResult[Any], session.execute(_insert_statement(dialect), row))
        created = result.rowcount == 1
        if created:
            append_event(session, message.id, message.status, at=now)
    if not created:
        existing = session.scalars(
            select(Message).where(Message.idempotency_key == draft.idempotency_key)
        ).one()
        return existing, False
    attachment_store.save(session, message.id, draft.attachments)
    return message, True


def insert_alone(
    connection: DBAPIConnection, dialect: Dialect, draft: Draft, *, now: datetime
) -> Message | None:
    """Store ``draft`` (no attachments) with one statement on an autocommit PostgreSQL connection.

    The statement is atomic on its own and writes the first event too, so no transaction and
    no ORM session are needed; it runs on the driver's connection, with SQLAlchemy's compiled
    text and type conversions, because SQLAlchemy's execution machinery cost more than the
    database round trip. Returns ``None`` when the idempotency key was used already.
    """
    sql, binds = _compiled_insert(dialect)
    row = new_row(draft, now)
    row["event_status"], row["event_at"] = row["status"], now
    params = {
        name: row[key] if convert is None else convert(row[key]) for key, name, convert in binds
    }
    cursor = connection.cursor()
    try:
        cursor.execute(sql, params)
        created = cursor.fetchone() is not None
    finally:
        cursor.close()
    return _message_from(row) if created else None


@functools.cache
def _compiled_insert(dialect: Dialect) -> tuple[str, tuple[tuple[str, str, Any], ...]]:
    """The insert's SQL text and, per parameter: its key, its name in the text, its converter.

    JSON values are bound as text and cast in SQL: the driver's own JSON adapter costs several
    times what ``json.dumps`` does, and a message has seven JSON columns.
    """
    compiled = _insert_statement(dialect.name, json_as_text=True).compile(dialect=dialect)
    binds = tuple(
        (
            key,
            compiled.bind_names[bind],
            json.dumps
            if key in _JSON_KEYS
            else bind.type.dialect_impl(dialect).bind_processor(dialect),
        )
        for key, bind in compiled.binds.items()
    )
    return str(compiled), binds


def new_row(draft: Draft, now: datetime) -> dict[str, Any]:
    """The column values of a new message for ``draft``, by column name."""
    # Built here rather than read back with RETURNING: every value is known before the insert.
    message_id = new_id()
    scheduled = draft.send_at is not None and draft.send_at > now
    domain = ascii_domain(split_address(draft.from_addr)[1].rpartition("@")[2])
    return {
        "id": message_id,
        "stream": draft.stream.value,
        "status": (S.SCHEDULED if scheduled else S.QUEUED).value,
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
        "metadata": draft.metadata,
        "idempotency_key": draft.idempotency_key,
        "message_id_header": f"<{message_id}@{domain}>",
        "attempts": 0,
        "next_attempt_at": draft.send_at if scheduled else now,
        "dispatched_at": None if scheduled else now,
        "lease_until": None,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
        "last_error": None,
        "transport": None,
        "requested_transport": draft.transport,
        "attachment_count": len(draft.attachments),
        "template_name": draft.template_name,
        "template_locale": draft.template_locale,
        "template_version": draft.template_version,
    }


def _message_from(row: dict[str, Any]) -> Message:
    """A ``Message`` holding ``row``'s values, as if loaded from the database.

    Filled the way SQLAlchemy's own loading does (the instance's dict, no attribute events):
    the ORM constructor's thirty instrumented attribute sets cost more than the insert's
    whole parameter conversion.
    """
    message: Message = _MESSAGE_CLASS.new_instance()
    state = message.__dict__
    for attribute, column in _COLUMNS:
        state[attribute] = row[column.key]
    return message


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


def ids_by_idempotency_key(session: Session, keys: Sequence[str]) -> dict[str, str]:
    """The id of the message stored under each of ``keys`` that is in use."""
    query = select(Message.idempotency_key, Message.id).where(Message.idempotency_key.in_(keys))
    return {key: message_id for key, message_id in session.execute(query) if key is not None}
