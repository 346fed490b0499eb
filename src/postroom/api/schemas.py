"""Request and response bodies of the REST API: the only pydantic models outside settings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from postroom.drafts import Stream
from postroom.messages import MessageStatus


def _one_or_many(value: object) -> object:
    # A lone string is one address; wrapping it here (instead of declaring ``str | list[str]``)
    # keeps validation error locations plain (``to[0]``, not ``to.list[str].0``).
    return [value] if isinstance(value, str) else value


AddressList = Annotated[
    list[str] | None,
    BeforeValidator(_one_or_many),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "null"},
            ],
            "description": "One address (`a@example.com` or `Name <a@example.com>`) or a list.",
        }
    ),
]


class SendRequest(BaseModel):
    """The body of ``POST /v1/messages``."""

    # Unknown fields are refused so that a typo (``subjet``) fails loudly instead of being dropped.
    model_config = ConfigDict(extra="forbid")

    from_: str | None = Field(
        default=None, alias="from", description="Sender; defaults to the configured default_from."
    )
    to: AddressList = None
    cc: AddressList = None
    bcc: AddressList = None
    reply_to: AddressList = None
    subject: str = Field(description="Subject line; no line breaks.")
    text: str | None = Field(default=None, description="Plain-text body.")
    html: str | None = Field(default=None, description="HTML body.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers.")
    tags: list[str] = Field(default_factory=list, description="Labels for filtering and stats.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form JSON object.")
    idempotency_key: str | None = Field(
        default=None, description="Same key, same message; the Idempotency-Key header wins."
    )
    send_at: AwareDatetime | None = Field(
        default=None, description="Deliver no earlier than this ISO 8601 time (with an offset)."
    )
    stream: Stream = Field(default=Stream.TRANSACTIONAL, description="Which queue carries it.")


class EventOut(BaseModel):
    """One status transition of a message."""

    at: datetime
    status: MessageStatus
    detail: str | None
    code: int | None = Field(description="SMTP reply code or HTTP status of the attempt.")


class MessageOut(BaseModel):
    """A message as the outbox holds it."""

    id: str
    status: MessageStatus
    stream: Stream
    from_: str = Field(serialization_alias="from")
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    recipients: list[str] = Field(description="Every envelope recipient, bare addresses.")
    subject: str
    tags: list[str]
    metadata: dict[str, Any]
    idempotency_key: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None
    last_error: str | None


class MessageDetail(MessageOut):
    """A message with its event log, oldest event first."""

    events: list[EventOut]


class MessagePage(BaseModel):
    """A page of messages, newest first."""

    items: list[MessageOut]
    next: str | None = Field(description="Pass as `before` for the next page; null on the last.")


class FieldError(BaseModel):
    """One problem with the request."""

    field: str
    message: str


class ErrorDetail(BaseModel):
    """What went wrong; ``field`` names the offending input when there is one."""

    type: str = Field(description="The error's class, e.g. InvalidAddress or NotAuthenticated.")
    message: str
    field: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="Every problem found, for request validation errors."
    )


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class Health(BaseModel):
    """Whether this API process can reach its database."""

    status: Literal["ok", "unavailable"]


class CaughtSummary(BaseModel):
    """A message caught by the dev inbox."""

    id: str
    received_at: datetime
    mail_from: str = Field(description="Envelope sender (SMTP MAIL FROM).")
    rcpt_tos: list[str] = Field(description="Envelope recipients (SMTP RCPT TO).")
    from_: str | None = Field(serialization_alias="from")
    to: str | None
    subject: str | None


class HeaderOut(BaseModel):
    """One header line, in message order (names may repeat)."""

    name: str
    value: str


class CaughtDetail(CaughtSummary):
    """A caught message with its headers, bodies and raw source."""

    headers: list[HeaderOut]
    text: str | None
    html: str | None
    raw: str


class CaughtPage(BaseModel):
    """The newest caught messages, newest first."""

    items: list[CaughtSummary]
