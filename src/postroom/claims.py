"""Claiming due messages with a lease, and the sweeps that keep the outbox moving.

Every query here is a single conditional statement, so two workers (or two copies of one task)
racing for the same rows can never both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    String,
    all_,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session, aliased

from postroom.db import UTCDateTime
from postroom.events import MessageEvent, NewEvent, append_events
from postroom.messages import CLAIMABLE, Message, MessageStatus


def claim_due(
    session: Session,
    ids: Sequence[str],
    *,
    lease: timedelta,
    now: datetime,
    stream: str | None = None,
    limit: int | None = None,
) -> list[Message]:
    """Move due, claimable messages to ``sending`` and return them.

    The messages among ``ids`` come first; with ``stream`` and ``limit``, other due messages
    of that stream fill the batch up to ``limit``, so one task drains a backlog in batches
    however the tasks were published. A message already claimed, sent or cancelled is never
    returned: that is what makes a redelivered task harmless.
    """
    limit = len(ids) if limit is None else limit
    if limit <= 0 or (not ids and stream is None):
        return []
    due = (Message.status.in_(CLAIMABLE), Message.next_attempt_at <= now)
    on_postgresql = session.get_bind().dialect.name == "postgresql"
    # Each part locks its rows; PostgreSQL lets concurrent workers skip each other's rows
    # instead of queueing on them. The top-up reads the stream's index in order and stops at
    # the limit: sorting every due row would cost a scan of the whole backlog per batch.
    parts = []
    wanted = None
    if ids:
        wanted = _wanted(ids, due, postgresql=on_postgresql).cte("wanted")
        parts.append(wanted)
    if stream is not None:
        room: int | ColumnElement[int] = limit
        others: ColumnElement[bool] = Message.id.not_in(ids)
        if on_postgresql:
            others = Message.id != all_(_array(ids))
            if wanted is not None:
                # only what the wanted rows leave room for: each row read here is locked too
                room = limit - select(func.count()).select_from(wanted).scalar_subquery()
        oldest = (
            select(Message.id, literal(1).label("rank"))
            .where(Message.stream == stream, *due, others)
            .order_by(Message.next_attempt_at)
            .limit(room)
        )
        parts.append(oldest.with_for_update(skip_locked=True).cte("oldest"))
    both = union_all(*(select(part.c.id, part.c.rank) for part in parts)).subquery()
    # A CTE, evaluated once: as a plain IN (subquery) PostgreSQL may re-run the locking
    # subquery per row, each run skipping the rows just claimed, and so ignore the LIMIT.
    batch = select(both.c.id).order_by(both.c.rank).limit(limit).cte("batch")
    claim = (
        update(Message)
        .where(Message.id.in_(select(batch.c.id)), *due)
        .values(
            status=MessageStatus.SENDING.value,
            lease_until=now + lease,
            attempts=Message.attempts + 1,
            updated_at=now,
        )
    )
    options = {"populate_existing": True, "synchronize_session": False}
    if on_postgresql:
        # One round trip: the claim and its event rows in one statement.
        claimed_rows = claim.returning(*Message.__table__.columns).cte("claimed")
        events = insert(MessageEvent).from_select(
            ["message_id", "status", "detail", "at"],
            select(
                claimed_rows.c.id,
                literal(MessageStatus.SENDING.value),
                literal("attempt ") + cast(claimed_rows.c.attempts, String),
                literal(now, UTCDateTime()),
            ),
        )
        entity = aliased(Message, claimed_rows)
        query = select(entity).add_cte(events.cte("claim_events"))
        return list(session.scalars(query, execution_options=options))
    claimed = list(session.scalars(claim.returning(Message), execution_options=options))
    append_events(
        session,
        (NewEvent(m.id, MessageStatus.SENDING, f"attempt {m.attempts}") for m in claimed),
        at=now,
    )
    return claimed


def _array(ids: Sequence[str]) -> ColumnElement[list[str]]:
    """``ids`` as one PostgreSQL array parameter, not one parameter each."""
    return literal(list(ids), ARRAY(String))


def _wanted(
    ids: Sequence[str], due: tuple[ColumnElement[bool], ...], *, postgresql: bool
) -> Select[str, int]:
    """The due messages among ``ids``, locked (PostgreSQL skips rows others hold)."""
    if not postgresql:
        return select(Message.id, literal(0).label("rank")).where(Message.id.in_(ids), *due)
    # Driven by the ids through the primary key: an IN list lets the planner of a table it
    # has no statistics for yet scan every due row and compare each with every id.
    requested = func.unnest(_array(ids)).table_valued("id").render_derived(name="requested")
    return (
        select(Message.id, literal(0).label("rank"))
        .select_from(requested)
        .join(Message, Message.id == requested.c.id)
        .where(*due)
        .with_for_update(skip_locked=True, of=Message)
    )


@dataclass(frozen=True)
class DueMessage:
    """A message the dispatch sweep is about to publish."""

    id: str
    stream: str


def promote_scheduled(session: Session, *, now: datetime) -> int:
    """Turn scheduled messages whose time has come into queued ones; return how many."""
    promoted = list(
        session.scalars(
            update(Message)
            .where(Message.status == MessageStatus.SCHEDULED.value, Message.next_attempt_at <= now)
            .values(status=MessageStatus.QUEUED.value, updated_at=now)
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        )
    )
    append_events(
        session, (NewEvent(i, MessageStatus.QUEUED, "send_at reached") for i in promoted), at=now
    )
    return len(promoted)


def mark_dispatchable(
    session: Session, *, now: datetime, redispatch_after: timedelta, limit: int
) -> list[DueMessage]:
    """Stamp and return due messages that have no live task: never published, or too long ago."""
    stale = now - redispatch_after
    candidates = (
        select(Message.id)
        .where(
            Message.status.in_(CLAIMABLE),
            Message.next_attempt_at <= now,
            or_(Message.dispatched_at.is_(None), Message.dispatched_at < stale),
        )
        .order_by(Message.next_attempt_at)
        .limit(limit)
    )
    rows = session.execute(
        update(Message)
        .where(
            Message.id.in_(candidates.scalar_subquery()),
            # re-checked here: the row may have been claimed since the subquery saw it
            Message.status.in_(CLAIMABLE),
            or_(Message.dispatched_at.is_(None), Message.dispatched_at < stale),
        )
        .values(dispatched_at=now)
        .returning(Message.id, Message.stream)
        .execution_options(synchronize_session=False)
    )
    return [DueMessage(id=row.id, stream=row.stream) for row in rows]


def recover_expired(session: Session, *, now: datetime, max_attempts: int) -> int:
    """Retake ``sending`` messages whose lease ran out (their worker died); return how many.

    They become ``deferred`` and due now, or ``failed`` when no attempt is left. Only an
    expired lease is retaken, so a slow but living worker is never raced.
    """
    expired = (Message.status == MessageStatus.SENDING.value, Message.lease_until < now)
    detail = "lease expired: the worker handling it stopped before recording an outcome"
    failed = session.scalars(
        update(Message)
        .where(*expired, Message.attempts >= max_attempts)
        .values(
            status=MessageStatus.FAILED.value,
            lease_until=None,
            next_attempt_at=None,
            updated_at=now,
            last_error=detail,
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).all()
    deferred = session.scalars(
        update(Message)
        .where(*expired)
        .values(
            status=MessageStatus.DEFERRED.value,
            lease_until=None,
            next_attempt_at=now,
            dispatched_at=None,
            updated_at=now,
            last_error=detail,
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).all()
    append_events(
        session,
        [NewEvent(i, MessageStatus.FAILED, detail) for i in failed]
        + [NewEvent(i, MessageStatus.DEFERRED, detail) for i in deferred],
        at=now,
    )
    return len(failed) + len(deferred)
