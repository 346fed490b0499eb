"""Many messages at once: validated, stored and published a chunk at a time.

``Postroom.send_batch`` reads its input lazily, ``chunk_size`` items at a time, so a generator
of any length is stored in constant memory. Each chunk is one INSERT of all its rows (on
PostgreSQL, with their first events in the same statement) and, outside a caller's session,
one transaction whose ids are published once it has committed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, Text, bindparam, column, func, insert, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from postroom.attachments import AttachmentStore
from postroom.database_errors import database_errors
from postroom.db import UTCDateTime, publish_after_commit
from postroom.drafts import Draft, Stream
from postroom.errors import DatabaseUnavailable, MessageRejected
from postroom.events import MessageEvent, NewEvent, append_events
from postroom.messages import Message, MessageStatus, ids_by_idempotency_key, new_row
from postroom.publishing import Publish

CHUNK_SIZE = 500
# A chunk is one statement, one transaction and one publication held in memory: the cap keeps
# them bounded whatever the caller asks for.
MAX_CHUNK_SIZE = 5000

# What each item of a batch may hold: the keyword arguments of ``send()``, except the ones that
# belong to the whole batch (``stream``, ``session``). The plain ones go to ``build_draft`` as is.
PLAIN_FIELDS = (
    "to", "cc", "bcc", "reply_to", "headers", "tags", "metadata", "send_at", "idempotency_key",
    "attachments",
)  # fmt: skip
# ...the others, the client turns into content, a default sender or a checked transport first
_OTHER_FIELDS = ("from_", "subject", "text", "html", "template", "context", "locale", "transport")
ITEM_FIELDS = frozenset({*PLAIN_FIELDS, *_OTHER_FIELDS})
_BATCH_FIELDS = frozenset({"stream", "session"})

PrepareItem = Callable[[Session, Mapping[str, Any]], Draft]


@dataclass(frozen=True)
class BatchResult:
    """What a batch stored: how many messages are new, how many were already stored.

    ``ids`` holds, in input order, the id of the message stored for each item (a new one, or
    the one already stored under its idempotency key); ``None`` when ids were not kept.
    """

    created: int
    duplicates: int
    ids: list[str] | None = None

    @property
    def accepted(self) -> int:
        """Items stored or found stored: where to resume after a ``BatchItemRejected``."""
        return self.created + self.duplicates


class BatchItemRejected(MessageRejected):
    """Item ``index`` of a batch was refused (``error`` says why); the items before it were not.

    ``result`` describes those earlier items, which were stored: committed and published, or,
    in a caller's session, added to its transaction. Nothing from ``index`` on was stored.
    """

    def __init__(self, index: int, error: MessageRejected, result: BatchResult) -> None:
        where = f"messages[{index}]"
        super().__init__(error.detail, field=f"{where}.{error.field}" if error.field else where)
        self.index = index
        self.error = error
        self.result = result


class BatchInterrupted(DatabaseUnavailable):
    """The database failed while storing the chunk that starts at item ``index``.

    ``result`` describes the items before ``index``: committed and published. The chunk from
    ``index`` may have been stored as well (its commit can land before the connection drops),
    so resume from ``index`` with the same idempotency keys: each message is stored once.
    """

    def __init__(self, index: int, error: DatabaseUnavailable, result: BatchResult) -> None:
        super().__init__(f"messages[{index}:]: {error.detail}", driver_error=error.driver_error)
        self.index = index
        self.result = result


def check_item(item: object) -> Mapping[str, Any]:
    """``item`` if it maps message fields to values; ``MessageRejected`` naming the field if not."""
    if not isinstance(item, Mapping):
        raise MessageRejected("each message is a mapping of send() keyword arguments")
    for name in item:
        if name in ITEM_FIELDS:
            continue
        if name in _BATCH_FIELDS:
            raise MessageRejected("give it once, to send_batch()", field=str(name))
        raise MessageRejected("not a field of a message", field=str(name))
    return item


def check_stream(stream: str) -> Stream:
    """``stream`` as a ``Stream``; ``MessageRejected`` if there is no such stream."""
    try:
        return Stream(stream)
    except ValueError:
        choices = ", ".join(s.value for s in Stream)
        detail = f"unknown stream {stream!r}; use one of {choices}"
        raise MessageRejected(detail, field="stream") from None


@dataclass(frozen=True)
class StoredChunk:
    """What ``create_many`` did with its drafts."""

    ids: list[str]  # per draft, in order: the message stored under it
    created: int
    due: dict[str, list[str]]  # stream -> new queued ids, to publish after the commit


def create_many(
    session: Session,
    drafts: Sequence[Draft],
    *,
    attachment_store: AttachmentStore,
    now: datetime,
) -> StoredChunk:
    """Store ``drafts`` in ``session``'s transaction with one INSERT, each with its first event.

    A draft whose idempotency key is in use (in the database, or by an earlier draft here)
    stores nothing: its id is the one of the message already stored under that key.
    """
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    new: dict[str, Draft] = {}
    first_with_key: dict[str, str] = {}
    for draft in drafts:
        key = draft.idempotency_key
        if key is not None and key in first_with_key:
            ids.append(first_with_key[key])
            continue
        row = new_row(draft, now)
        if key is not None:
            first_with_key[key] = row["id"]
        ids.append(row["id"])
        rows.append(row)
        new[row["id"]] = draft
    inserted = _insert(session, rows, now)
    _resolve_conflicts(session, ids, rows, inserted)
    due: dict[str, list[str]] = {}
    for row in rows:
        if row["id"] not in inserted:
            continue
        attachment_store.save(session, row["id"], new[row["id"]].attachments)
        if row["status"] == MessageStatus.QUEUED:
            due.setdefault(row["stream"], []).append(row["id"])
    return StoredChunk(ids=ids, created=len(inserted), due=due)


def _insert(session: Session, rows: list[dict[str, Any]], now: datetime) -> set[str]:
    """Insert ``rows`` (skipping used idempotency keys) and their events; the ids inserted."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        # one parameter whatever the chunk's size: a multi-row VALUES list of 30 columns a
        # row costs more to build and parse, client side, than the rows cost to store
        params = {"rows": json.dumps(rows, default=_isoformat), "event_at": now}
        return set(session.scalars(_postgresql_statement(), params))
    inserted = set(session.scalars(_sqlite_statement(), rows))
    events = [NewEvent(row["id"], row["status"]) for row in rows if row["id"] in inserted]
    append_events(session, events, at=now)
    return inserted


def _resolve_conflicts(
    session: Session, ids: list[str], rows: list[dict[str, Any]], inserted: set[str]
) -> None:
    """Point every draft whose row was skipped at the message stored under its key."""
    skipped = {row["id"]: row["idempotency_key"] for row in rows if row["id"] not in inserted}
    if not skipped:
        return
    # ON CONFLICT skips only rows whose idempotency key is taken, so every skipped key is found
    existing = ids_by_idempotency_key(session, list(skipped.values()))
    for position, message_id in enumerate(ids):
        if message_id in skipped:
            ids[position] = existing[skipped[message_id]]


def _isoformat(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()  # aware: PostgreSQL reads the offset
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_messages = cast(Table, Message.__table__)
_events = cast(Table, MessageEvent.__table__)


@cache
def _postgresql_statement() -> Executable:
    """Rows in from one JSON array, with ON CONFLICT DO NOTHING; their events from RETURNING.

    As for one message (``messages._insert_statement``), the events are written by the same
    statement, and only for the rows that were.
    """
    columns = list(_messages.columns)
    source = (
        func.json_to_recordset(sql_cast(bindparam("rows", type_=Text()), postgresql.JSON))
        .table_valued(*(column(c.key, c.type) for c in columns))
        .render_derived(name="source", with_types=True)
    )
    inserted = (
        postgresql.insert(_messages)
        .from_select([c.key for c in columns], select(*source.c))
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(_messages.c.id, _messages.c.status)
        .cte("inserted")
    )
    first_events = select(
        inserted.c.id, inserted.c.status, bindparam("event_at", type_=UTCDateTime())
    )
    return (
        insert(_events)
        .from_select(["message_id", "status", "at"], first_events)
        .returning(_events.c.message_id)
    )


@cache
def _sqlite_statement() -> Executable:
    # executed with a list of rows: SQLAlchemy sends them as multi-row VALUES statements
    return (
        sqlite.insert(_messages)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(_messages.c.id)
    )


@dataclass
class _Tally:
    keep_ids: bool
    created: int = 0
    duplicates: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, chunk: StoredChunk) -> None:
        self.created += chunk.created
        self.duplicates += len(chunk.ids) - chunk.created
        if self.keep_ids:
            self.ids += chunk.ids

    def result(self) -> BatchResult:
        return BatchResult(self.created, self.duplicates, self.ids if self.keep_ids else None)


@dataclass(frozen=True)
class BatchSender:
    """Stores a batch chunk by chunk: in a transaction of its own per chunk (``sessions``), or
    in the caller's ``session``; publishes each new queued id after its commit."""

    prepare: PrepareItem
    publish: Publish
    attachment_store: AttachmentStore
    clock: Callable[[], datetime]
    sessions: sessionmaker[Session]
    session: Session | None = None
    chunk_size: int = CHUNK_SIZE

    def send(self, items: Iterable[object], *, keep_ids: bool) -> BatchResult:
        """Store every item; ``BatchItemRejected`` for the first invalid one (see the class)."""
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
        tally = _Tally(keep_ids)
        for start, chunk in _chunks(items, self.chunk_size):
            try:
                with self._translating(), self._transaction() as session:
                    drafts, rejected = self._prepare(session, chunk)
                    if drafts:
                        stored = create_many(
                            session,
                            drafts,
                            attachment_store=self.attachment_store,
                            now=self.clock(),
                        )
                        for stream, ids in stored.due.items():
                            publish_after_commit(session, stream, ids, self.publish)
                        tally.add(stored)
            except DatabaseUnavailable as error:
                raise BatchInterrupted(start, error, tally.result()) from error
            # the valid items before a rejected one are committed (above) before it is reported
            if rejected is not None:
                raise BatchItemRejected(start + len(drafts), rejected, tally.result()) from rejected
        return tally.result()

    def _translating(self) -> AbstractContextManager[None]:
        # a caller's session is the caller's: its database errors are not ours to rename
        return nullcontext() if self.session is not None else database_errors()

    def _transaction(self) -> AbstractContextManager[Session]:
        if self.session is not None:
            return nullcontext(self.session)
        return self.sessions.begin()

    def _prepare(
        self, session: Session, chunk: list[object]
    ) -> tuple[list[Draft], MessageRejected | None]:
        """The drafts of ``chunk`` up to its first invalid item, and that item's error."""
        drafts = []
        for item in chunk:
            try:
                drafts.append(self.prepare(session, check_item(item)))
            except MessageRejected as error:
                return drafts, error
        return drafts, None


def _chunks(items: Iterable[object], size: int) -> Iterator[tuple[int, list[object]]]:
    """``(index of the first item, items)`` of consecutive slices of ``items``; lazily."""
    iterator = iter(items)
    start = 0
    while chunk := list(itertools.islice(iterator, size)):
        yield start, chunk
        start += len(chunk)
