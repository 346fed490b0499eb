"""deliver(ids): claim → build → send → record. The only place a message leaves the outbox."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from postroom.attachments import AttachmentStore, CheckedAttachment
from postroom.claims import claim_due
from postroom.errors import DeliveryError, PermanentFailure, TemporaryFailure
from postroom.events import NewEvent, append_events
from postroom.messages import Message, MessageStatus
from postroom.mime import Sign, build_envelope
from postroom.retry import RetryPolicy
from postroom.transports.base import SendResult, Transport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed message, ready to be written."""

    message_id: str
    status: MessageStatus
    detail: str
    code: int | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """Counts of one ``deliver`` call, by final status of this attempt."""

    claimed: int
    sent: int
    deferred: int
    failed: int


@dataclass
class Deliverer:
    """Delivers messages by id through one transport, with one retry policy."""

    sessions: sessionmaker[Session]
    transport: Transport
    policy: RetryPolicy
    lease: timedelta
    clock: Callable[[], datetime]
    attachments: AttachmentStore
    sign: Sign | None = None
    batch_size: int = 100

    def deliver(self, ids: Sequence[str], *, stream: str | None = None) -> DeliveryReport:
        """Claim the due messages among ``ids`` (topped up from ``stream``), send, record."""
        with self.sessions.begin() as session:
            # claim before anything else: a redelivered task must find nothing left to do
            claimed = claim_due(
                session,
                ids,
                lease=self.lease,
                now=self.clock(),
                stream=stream,
                limit=max(self.batch_size, len(ids)) if stream else None,
            )
            with_files = [m.id for m in claimed if m.attachment_count]
            files = self.attachments.load(session, with_files) if with_files else {}
        outcomes = [self._attempt(message, files.get(message.id, [])) for message in claimed]
        with self.sessions.begin() as session:
            record_outcomes(session, outcomes, transport=self.transport.name, now=self.clock())
        statuses = [outcome.status for outcome in outcomes]
        return DeliveryReport(
            claimed=len(claimed),
            sent=statuses.count(MessageStatus.SENT),
            deferred=statuses.count(MessageStatus.DEFERRED),
            failed=statuses.count(MessageStatus.FAILED),
        )

    def _attempt(self, message: Message, attachments: list[CheckedAttachment]) -> Outcome:
        try:
            envelope = build_envelope(message, attachments, now=self.clock(), sign=self.sign)
        except Exception as error:  # stored content that cannot be rendered will never send
            logger.exception("message %s could not be built", message.id)
            return Outcome(
                message.id, MessageStatus.FAILED, f"could not build: {type(error).__name__}"
            )
        try:
            result = self.transport.send(envelope)
        except PermanentFailure as error:
            return Outcome(message.id, MessageStatus.FAILED, str(error), error.code)
        except TemporaryFailure as error:
            return self._retry_or_fail(message, error)
        except Exception as error:
            # An unexpected error may be a bug or a passing fault; retrying loses nothing.
            logger.exception(
                "transport %s raised while sending %s", self.transport.name, message.id
            )
            failure = TemporaryFailure(type(error).__name__, transport=self.transport.name)
            return self._retry_or_fail(message, failure)
        return Outcome(message.id, MessageStatus.SENT, _describe_success(result), result.code)

    def _retry_or_fail(self, message: Message, error: DeliveryError) -> Outcome:
        if self.policy.is_exhausted(message.attempts):
            detail = f"gave up after {message.attempts} attempts: {error}"
            return Outcome(message.id, MessageStatus.FAILED, detail, error.code)
        retry_at = self.clock() + self.policy.delay_after(message.attempts)
        return Outcome(message.id, MessageStatus.DEFERRED, str(error), error.code, retry_at)


def _describe_success(result: SendResult) -> str:
    if not result.refused:
        return result.detail
    refused = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in result.refused.items())
    return f"{result.detail} (refused: {refused})"


_messages = Message.__table__
assert isinstance(_messages, Table)
# Core, not ORM: an executemany with per-row values and an extra WHERE on the status.
_record = (
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"), _messages.c.status == MessageStatus.SENDING.value)
    .values(
        status=bindparam("b_status"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        sent_at=bindparam("b_sent_at"),
        last_error=bindparam("b_last_error"),
        transport=bindparam("b_transport"),
        lease_until=None,
        dispatched_at=None,
        updated_at=bindparam("b_now"),
    )
)


def record_outcomes(
    session: Session, outcomes: Sequence[Outcome], *, transport: str, now: datetime
) -> None:
    """Write every outcome (one executemany) and its event row, in the caller's transaction."""
    if not outcomes:
        return
    params: list[dict[str, Any]] = [
        {
            "b_id": o.message_id,
            "b_status": o.status.value,
            "b_next_attempt_at": o.next_attempt_at,
            "b_sent_at": now if o.status is MessageStatus.SENT else None,
            "b_last_error": None if o.status is MessageStatus.SENT else o.detail,
            "b_transport": transport,
            "b_now": now,
        }
        for o in outcomes
    ]
    session.connection().execute(_record, params)
    append_events(
        session, (NewEvent(o.message_id, o.status, o.detail, o.code) for o in outcomes), at=now
    )
