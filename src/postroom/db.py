"""Engines, sessions and the hook that publishes tasks only after their rows are committed."""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from postroom.publishing import Publish, publish_or_leave_to_sweep

logger = logging.getLogger(__name__)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_last_id_lock = threading.Lock()
_last_id = 0


def new_id() -> str:
    """A 26-character id that sorts by creation time (48-bit milliseconds, 80 random bits).

    Within one process ids are strictly increasing even inside one millisecond (the random
    part is incremented instead of redrawn), so "newest first" and id cursors stay exact.
    """
    global _last_id
    # drawn outside the lock: os.urandom releases the GIL, and other threads would queue
    random_bits = secrets.randbits(80)
    with _last_id_lock:
        value = (time.time_ns() // 1_000_000) << 80 | random_bits
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def id_created_at(identifier: str) -> datetime:
    """The creation time encoded in the first 10 characters of an id from ``new_id``."""
    milliseconds = 0
    for char in identifier[:10]:
        milliseconds = milliseconds * 32 + _CROCKFORD.index(char)
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database.

    SQLite has no time zones, so values are stored as naive UTC there; the same conversion on
    bound parameters keeps its text comparisons (``next_attempt_at <= :now``) correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware one is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every postroom table."""


def normalize_database_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout makes writers queue instead of
    # failing with "database is locked" when several worker processes commit at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# Most JSON columns of a message hold an empty list or object (no cc, no tags, no headers):
# building those directly skips json.loads, which cost about a third of claiming a batch.
_EMPTY_JSON: dict[str | bytes, Callable[[], object]] = {
    "[]": list,
    "{}": dict,
    b"[]": list,
    b"{}": dict,
}


def load_json(document: str | bytes) -> Any:
    """``json.loads``, without parsing the empty list and object that most columns hold."""
    empty = _EMPTY_JSON.get(document)
    return empty() if empty is not None else json.loads(document)


def create_db_engine(database_url: str) -> Engine:
    """An engine for ``database_url`` tuned for postroom's access pattern."""
    url = normalize_database_url(database_url)
    # A statement's parameters are message bodies and addresses: a password-reset link in an
    # error or a log line is a secret leaked, so SQLAlchemy's errors show the SQL alone.
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30}, json_deserializer=load_json, hide_parameters=True
        )
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    engine = create_engine(
        url, pool_size=5, max_overflow=10, json_deserializer=load_json, hide_parameters=True
    )
    event.listen(engine, "connect", _note_idle_since)
    event.listen(engine, "checkin", _note_idle_since)
    event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    return engine


# A connection back from use less than this long ago is trusted without a round trip: a ping
# on every checkout would double the cost of a one-statement send(). One idle for longer is
# pinged first, so a database restart or an idle timeout is noticed before a statement fails.
POOL_PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "postroom.idle_since"


def _note_idle_since(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(
    dialect: Dialect, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any
) -> None:
    idle_since = record.info.get(_IDLE_SINCE, 0.0)
    if time.monotonic() - idle_since < POOL_PING_AFTER_IDLE_SECONDS:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as error:
        # the pool then discards this connection and checks out another, fresh if need be
        raise DisconnectionError(f"pooled connection is gone: {type(error).__name__}") from error


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


class EngineCache:
    """One engine per process: a forked worker child must never reuse its parent's sockets."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        # parsed once: send() asks for it on every call
        self.dialect = make_url(normalize_database_url(database_url)).get_dialect().name
        self._pid: int | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._autocommit: sessionmaker[Session] | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory for this process, created on first use."""
        if self._sessions is None or self._pid != os.getpid():
            engine = create_db_engine(self._database_url)
            self._sessions = create_session_factory(engine)
            # same pool; each statement commits on its own, so a single-statement write
            # costs one round trip instead of three (BEGIN, statement, COMMIT)
            self._autocommit = create_session_factory(
                engine.execution_options(isolation_level="AUTOCOMMIT")
            )
            self._pid = os.getpid()
        return self._sessions

    @property
    def autocommit_sessions(self) -> sessionmaker[Session]:
        """Sessions whose every statement is its own transaction (for one-statement writes)."""
        self.sessions  # noqa: B018 - builds both factories for this process
        assert self._autocommit is not None
        return self._autocommit

    @property
    def engine(self) -> Engine:
        """This process's engine."""
        bind = self.sessions.kw["bind"]
        assert isinstance(bind, Engine)
        return bind

    def dispose(self) -> None:
        """Close this process's pooled connections."""
        if self._sessions is not None and self._pid == os.getpid():
            bind = self._sessions.kw.get("bind")
            if isinstance(bind, Engine):
                bind.dispose()
        self._sessions = self._autocommit = None


@dataclass
class _PendingPublications:
    publish: Publish
    by_stream: dict[str, list[str]] = field(default_factory=dict)

    def flush(self) -> None:
        pending, self.by_stream = self.by_stream, {}
        for stream, ids in pending.items():
            publish_or_leave_to_sweep(self.publish, stream, ids)


_PENDING_KEY = "postroom.pending_publications"


def publish_after_commit(
    session: Session, stream: str, ids: Iterable[str], publish: Publish
) -> None:
    """Publish ``ids`` once ``session``'s transaction commits, and never if it rolls back."""
    pending: _PendingPublications | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = _PendingPublications(publish)
        session.info[_PENDING_KEY] = pending
        event.listen(session, "after_commit", lambda _s: pending.flush())
        event.listen(session, "after_rollback", lambda _s: pending.by_stream.clear())
    pending.by_stream.setdefault(stream, []).extend(ids)
