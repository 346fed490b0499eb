"""Claiming due messages with a lease, and the sweeps that keep the outbox moving.

Every query here is a single conditional statement, so two workers (or two copies of one task)
racing for the same rows can never both win.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BindParameter,
    ColumnElement,
    Executable,
    Integer,
    Select,
    String,
    all_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from postroom.db import UTCDateTime
from postroom.events import MessageEvent, NewEvent, append_events
from postroom.messages import ClaimedMessage, Message, MessageStatus, is_claimable


def claim_due(
    session: Session,
    ids: Sequence[str],
    *,
    lease: timedelta,
    now: datetime,
    stream: str | None = None,
    limit: int | None = None,
) -> list[ClaimedMessage]:
    """Move due, claimable messages to ``sending`` and return what delivering them needs.

    The messages among ``ids`` come first; with ``stream`` and ``limit``, other due messages
    of that stream fill the batch up to ``limit``, so one task drains a backlog in batches
    however the tasks were published. A message already claimed, sent or cancelled is never
    returned: that is what makes a redelivered task harmless.
    """
    limit = len(ids) if limit is None else limit
    if limit <= 0 or (not ids and stream is None):
        return []
    dialect = session.get_bind().dialect.name
    statement = _claim_statement(dialect, with_ids=bool(ids), with_stream=stream is not None)
    params: dict[str, Any] = {"b_now": now, "b_lease_until": now + lease, "b_limit": limit}
    if ids:
        params["b_ids"] = list(ids)
    if stream is not None:
        params["b_stream"] = stream
    # through the connection: the ORM's execution path would cost a third of the claim's CPU
    # and brings nothing to a statement that returns columns, not entities
    rows = session.connection().execute(statement, params)
    claimed = [ClaimedMessage._make(row) for row in rows]
    if dialect != "postgresql":  # on PostgreSQL the statement wrote the events itself
        append_events(
            session,
            (NewEvent(m.id, MessageStatus.SENDING, f"attempt {m.attempts}") for m in claimed),
            at=now,
        )
    return claimed


@functools.cache
def _claim_statement(dialect: str, *, with_ids: bool, with_stream: bool) -> Executable:
    """The claim for one shape of call, built once: building it cost more than running it.

    Its parameters: ``b_now``, ``b_lease_until``, ``b_limit``, and ``b_ids`` and ``b_stream``
    when the shape has them (``b_``: an UPDATE reserves its columns' names).
    """
    postgresql = dialect == "postgresql"
    now = bindparam("b_now", type_=UTCDateTime())
    limit = bindparam("b_limit", type_=Integer())
    due = (is_claimable(Message.status), Message.next_attempt_at <= now)
    # Each part locks its rows; PostgreSQL lets concurrent workers skip each other's rows
    # instead of queueing on them. The top-up reads the stream's index in order and stops at
    # the limit: sorting every due row would cost a scan of the whole backlog per batch.
    parts = []
    wanted = None
    if with_ids:
        wanted = _wanted(due, postgresql=postgresql).cte("wanted")
        parts.append(wanted)
    if with_stream:
        oldest = select(Message.id, literal(1).label("rank")).where(
            Message.stream == bindparam("b_stream", type_=String()), *due
        )
        room: ColumnElement[int] = limit
        if wanted is not None:
            oldest = oldest.where(_not_among_ids(postgresql))
            if postgresql:
                # only what the wanted rows leave room for: each row read here is locked too
                room = limit - select(func.count()).select_from(wanted).scalar_subquery()
        oldest = oldest.order_by(Message.next_attempt_at).limit(room)
        parts.append(oldest.with_for_update(skip_locked=True).cte("oldest"))
    both = union_all(*(select(part.c.id, part.c.rank) for part in parts)).subquery()
    # A CTE, evaluated once: as a plain IN (subquery) PostgreSQL may re-run the locking
    # subquery per row, each run skipping the rows just claimed, and so ignore the LIMIT.
    batch = select(both.c.id).order_by(both.c.rank).limit(limit).cte("batch")
    # On PostgreSQL every row of the batch is already locked by this statement, after its
    # conditions were checked against the row's newest version; checking them again here would
    # only offer the planner a scan of every due row instead of a primary-key lookup per id.
    claim = (
        update(Message)
        .where(Message.id.in_(select(batch.c.id)), *(() if postgresql else due))
        .values(
            status=MessageStatus.SENDING.value,
            lease_until=bindparam("b_lease_until", type_=UTCDateTime()),
            attempts=Message.attempts + 1,
            updated_at=now,
        )
    )
    returned = [Message.__table__.c[name] for name in ClaimedMessage._fields]
    if not postgresql:
        return claim.returning(*returned)
    # One round trip: the claim and its event rows in one statement.
    claimed_rows = claim.returning(*returned).cte("claimed")
    events = insert(MessageEvent).from_select(
        ["message_id", "status", "detail", "at"],
        select(
            claimed_rows.c.id,
            literal(MessageStatus.SENDING.value),
            literal("attempt ") + cast(claimed_rows.c.attempts, String),
            now,
        ),
    )
    return select(claimed_rows).add_cte(events.cte("claim_events"))


def _ids_param(postgresql: bool) -> BindParameter[Any]:
    """The ``ids`` parameter: one array on PostgreSQL, an expanded list elsewhere."""
    if postgresql:
        return bindparam("b_ids", type_=ARRAY(String()))
    return bindparam("b_ids", expanding=True)


def _not_among_ids(postgresql: bool) -> ColumnElement[bool]:
    if postgresql:
        return Message.id != all_(_ids_param(postgresql))
    return Message.id.not_in(_ids_param(postgresql))


def _wanted(due: tuple[ColumnElement[bool], ...], *, postgresql: bool) -> Select[str, int]:
    """The due messages among ``ids``, locked (PostgreSQL skips rows others hold)."""
    ranked = select(Message.id, literal(0).label("rank"))
    if not postgresql:
        return ranked.where(Message.id.in_(_ids_param(postgresql)), *due)
    # One primary-key lookup per id, whatever the statistics say. As a join, a planner with
    # none yet (a fresh table, or a burst after a quiet spell) estimates the due rows at a
    # handful and reads every one of them to match the ids; the locking subquery cannot be
    # flattened into a join, so the lookups are the only plan left.
    requested = (
        func.unnest(_ids_param(postgresql)).table_valued("id").render_derived(name="requested")
    )
    locked = (
        select(Message.id)
        .where(Message.id == requested.c.id, *due)
        .with_for_update(skip_locked=True)
        .lateral("locked")
    )
    return select(locked.c.id, literal(0).label("rank")).select_from(requested).join(locked, true())


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
            is_claimable(Message.status),
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
            is_claimable(Message.status),
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
