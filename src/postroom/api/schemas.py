"""Request and response bodies of the REST API: the only pydantic models outside settings."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from postroom.drafts import Stream
from postroom.messages import MessageStatus


def _one_or_many(value: object) -> object:
    # A lone string is one address; wrapping it here (instead of declaring ``str | list[str]``)
    # keeps validation error locations plain (``to[0]``, not ``to.list[str].0``).
    return [value] if isinstance(value, str) else value


_WHITESPACE = re.compile(r"\s+")


def _from_base64(value: object) -> object:
    # Only strings are base64: the bytes of a multipart file part are taken as they are.
    if not isinstance(value, str):
        return value
    try:
        # validate=True refuses stray characters instead of silently dropping them; whitespace
        # is removed first because MIME tools wrap base64 at 76 columns.
        return base64.b64decode(_WHITESPACE.sub("", value), validate=True)
    except binascii.Error:
        raise ValueError("not valid base64") from None


Base64Content = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    WithJsonSchema(
        {"type": "string", "contentEncoding": "base64", "description": "The file, base64-encoded."}
    ),
]

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


class AttachmentIn(BaseModel):
    """A file sent with a message; an ``inline`` image is shown by the HTML as ``cid:<id>``."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(description="The name the recipient sees; no path, no line breaks.")
    content: Base64Content | None = Field(
        default=None,
        description="The file in base64. In a multipart request, leave it out to take the "
        "content of the file part with the same `filename`.",
    )
    content_type: str | None = Field(
        default=None, description="e.g. `application/pdf`; guessed from the filename when absent."
    )
    inline: bool = Field(default=False, description="An image shown in the HTML body.")
    content_id: str | None = Field(
        default=None, description="The id the HTML refers to (`cid:...`); defaults to the filename."
    )


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
    subject: str | None = Field(
        default=None, description="Subject line; no line breaks. Required without `template`."
    )
    text: str | None = Field(default=None, description="Plain-text body.")
    html: str | None = Field(
        default=None, description="HTML body; a text part is derived from it when `text` is absent."
    )
    template: str | None = Field(
        default=None,
        description="Render this stored template (its newest version) instead of giving "
        "`subject`, `text` and `html`.",
    )
    context: dict[str, Any] | None = Field(default=None, description="The template's variables.")
    locale: str | None = Field(
        default=None,
        description="The template variant to use, e.g. `fr-CA`; falls back to `fr`, then the "
        "default variant.",
    )
    attachments: list[AttachmentIn] = Field(default_factory=list, description="Files to attach.")
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


class TemplateRef(BaseModel):
    """The template version a message was rendered from."""

    name: str
    locale: str
    version: int


class AttachmentOut(BaseModel):
    """An attachment of a stored message (its content is not returned)."""

    filename: str
    content_type: str
    size: int = Field(description="Bytes.")
    inline: bool
    content_id: str | None


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
    template: TemplateRef | None = Field(description="Null when the content was given directly.")


class MessageDetail(MessageOut):
    """A message with its attachments and its event log, oldest event first."""

    attachments: list[AttachmentOut]
    events: list[EventOut]


class MessagePage(BaseModel):
    """A page of messages, newest first."""

    items: list[MessageOut]
    next: str | None = Field(description="Pass as `before` for the next page; null on the last.")


class FieldError(BaseModel):
    """One problem with the request."""

    field: str
    message: str


class TemplateLocation(BaseModel):
    """Where in a template an error happened."""

    name: str
    version: int | None = None
    line: int | None = Field(default=None, description="The line in the failing part.")


class ErrorDetail(BaseModel):
    """What went wrong; ``field`` names the offending input when there is one."""

    type: str = Field(description="The error's class, e.g. InvalidAddress or NotAuthenticated.")
    message: str
    field: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="Every problem found, for request validation errors."
    )
    template: TemplateLocation | None = Field(
        default=None, description="For template errors: which template, version and line."
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


class TemplateIn(BaseModel):
    """The body of ``POST /v1/templates``: the parts of a new template version (Jinja syntax)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Lowercase letters, digits, `_` and `-`; at most 100.")
    locale: str = Field(default="", description="e.g. `fr` or `fr-CA`; empty for the default.")
    subject: str
    text: str | None = None
    html: str | None = Field(default=None, description="Autoescaped; CSS is inlined on render.")


class TemplateOut(BaseModel):
    """One stored version of a template."""

    id: str
    name: str
    locale: str
    version: int
    subject: str
    text: str | None
    html: str | None
    created_at: datetime


class TemplateList(BaseModel):
    """Template versions."""

    items: list[TemplateOut]


class RenderRequest(BaseModel):
    """The body of ``POST /v1/templates/{name}/render``."""

    model_config = ConfigDict(extra="forbid")

    context: dict[str, Any] = Field(default_factory=dict, description="The template's variables.")
    locale: str | None = Field(default=None, description="Falls back as when sending.")
    version: int | None = Field(default=None, ge=1, description="The newest when absent.")


class RenderedOut(BaseModel):
    """A template rendered with a context, as a message would carry it."""

    template: str
    locale: str
    version: int
    subject: str
    text: str
    html: str | None
