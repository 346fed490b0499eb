"""A draft: what a producer asked to send, fully validated before anything is stored."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from postroom.addresses import normalize_address, normalize_addresses, reject_line_breaks
from postroom.attachments import Attachment, CheckedAttachment, check_attachments
from postroom.errors import MessageRejected, MessageTooLarge


class Stream(StrEnum):
    """Which queue a message travels on; bulk never delays transactional."""

    TRANSACTIONAL = "transactional"
    BULK = "bulk"


# Headers postroom writes itself from the message's fields; accepting them as custom headers
# would let a caller contradict the envelope or break the MIME structure.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Sender",
        "Return-Path",
    )
)
MAX_SUBJECT_CHARS = 998
MAX_HEADER_VALUE_CHARS = 4096
MAX_HEADERS = 50
MAX_TAGS = 20
MAX_TAG_CHARS = 64
MAX_METADATA_BYTES = 8192
MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass(frozen=True)
class Limits:
    """Size limits a draft must respect (from settings)."""

    max_message_bytes: int = 10 * 1024 * 1024
    max_recipients: int = 1000
    max_attachment_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class Content:
    """What a message says when it is given directly rather than through a template."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None


@dataclass(frozen=True)
class Draft:
    """A validated message, ready to be stored."""

    from_addr: str
    to: list[str]
    subject: str
    text: str | None = None
    html: str | None = None
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: Stream = Stream.TRANSACTIONAL
    send_at: datetime | None = None
    idempotency_key: str | None = None
    attachments: list[CheckedAttachment] = field(default_factory=list)
    template_name: str | None = None
    template_locale: str | None = None
    template_version: int | None = None
    transport: str | None = None


def build_draft(
    *,
    from_: str,
    to: str | Sequence[str] | None,
    subject: str | None,
    text: str | None = None,
    html: str | None = None,
    cc: str | Sequence[str] | None = None,
    bcc: str | Sequence[str] | None = None,
    reply_to: str | Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    tags: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    stream: str = Stream.TRANSACTIONAL,
    send_at: datetime | None = None,
    idempotency_key: str | None = None,
    attachments: Sequence[Attachment | Mapping[str, Any] | os.PathLike[str]] | None = None,
    template_name: str | None = None,
    template_locale: str | None = None,
    template_version: int | None = None,
    transport: str | None = None,
    limits: Limits = Limits(),
) -> Draft:
    """Validate every field and return a ``Draft``; raise a ``MessageRejected`` subclass if not."""
    recipients = {
        name: normalize_addresses(_as_list(value), field=name)
        for name, value in (("to", to), ("cc", cc), ("bcc", bcc))
    }
    if not any(recipients.values()):
        raise MessageRejected("at least one recipient is required", field="to")
    if sum(map(len, recipients.values())) > limits.max_recipients:
        raise MessageTooLarge(f"at most {limits.max_recipients} recipients", field="to")
    checked = check_attachments(attachments, max_attachment_bytes=limits.max_attachment_bytes)
    _check_size(text, html, checked, limits)
    return Draft(
        from_addr=normalize_address(from_, field="from"),
        subject=_check_subject(subject),
        text=text,
        html=html,
        reply_to=normalize_addresses(_as_list(reply_to), field="reply_to"),
        headers=_check_headers(headers or {}),
        tags=_check_tags(tags or []),
        metadata=_check_metadata(metadata or {}),
        stream=_check_stream(stream),
        send_at=_check_send_at(send_at),
        idempotency_key=_check_idempotency_key(idempotency_key),
        attachments=checked,
        template_name=template_name,
        template_locale=template_locale,
        template_version=template_version,
        transport=transport,
        to=recipients["to"],
        cc=recipients["cc"],
        bcc=recipients["bcc"],
    )


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None or isinstance(value, str):
        return None if value is None else [value]
    if not isinstance(value, Sequence):
        raise MessageRejected("expected an address or a list of addresses")
    return list(value)


def _check_subject(subject: str | None) -> str:
    if subject is None:
        raise MessageRejected("a subject is required", field="subject")
    if not isinstance(subject, str):
        raise MessageRejected("the subject must be a string", field="subject")
    reject_line_breaks(subject, field="subject")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise MessageTooLarge(f"at most {MAX_SUBJECT_CHARS} characters", field="subject")
    return subject


def _check_size(
    text: str | None, html: str | None, attachments: list[CheckedAttachment], limits: Limits
) -> None:
    if not text and not html:
        raise MessageRejected("give a text or an html body (or both)", field="text")
    for name, body in (("text", text), ("html", html)):
        if body is not None and not isinstance(body, str):
            raise MessageRejected("the body must be a string", field=name)
    size = len((text or "").encode()) + len((html or "").encode())
    size += sum(len(a.content) for a in attachments)
    if size > limits.max_message_bytes:
        field_name = "attachments" if attachments else "text"
        raise MessageTooLarge(
            f"the message is {size} bytes; the limit is {limits.max_message_bytes}",
            field=field_name,
        )


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        raise MessageTooLarge(f"at most {MAX_HEADERS} custom headers", field="headers")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        where = f"headers.{name}"
        reject_line_breaks(name, field=where)
        if not name or any(not 33 <= ord(char) <= 126 or char == ":" for char in name):
            raise MessageRejected("header names are printable ASCII without ':'", field=where)
        if name.lower() in RESERVED_HEADERS:
            raise MessageRejected("set this header through its own field", field=where)
        if not isinstance(value, str):
            raise MessageRejected("header values must be strings", field=where)
        reject_line_breaks(value, field=where)
        if len(value) > MAX_HEADER_VALUE_CHARS:
            raise MessageTooLarge(f"at most {MAX_HEADER_VALUE_CHARS} characters", field=where)
        checked[name] = value
    return checked


def _check_tags(tags: Sequence[str]) -> list[str]:
    if isinstance(tags, str) or len(tags) > MAX_TAGS:
        raise MessageRejected(f"give a list of at most {MAX_TAGS} tags", field="tags")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
            raise MessageRejected(f"tags are 1-{MAX_TAG_CHARS} characters", field=f"tags[{i}]")
    return list(tags)


def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    try:
        encoded = json.dumps(dict(metadata))
    except (TypeError, ValueError):
        raise MessageRejected("metadata must be JSON-serialisable", field="metadata") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise MessageTooLarge(f"at most {MAX_METADATA_BYTES} bytes as JSON", field="metadata")
    return dict(metadata)


def _check_stream(stream: str) -> Stream:
    try:
        return Stream(stream)
    except ValueError:
        choices = ", ".join(s.value for s in Stream)
        raise MessageRejected(
            f"unknown stream {stream!r}; use one of {choices}", field="stream"
        ) from None


def _check_send_at(send_at: datetime | None) -> datetime | None:
    if send_at is not None and (not isinstance(send_at, datetime) or send_at.tzinfo is None):
        raise MessageRejected("send_at must be a timezone-aware datetime", field="send_at")
    return send_at


def _check_idempotency_key(key: str | None) -> str | None:
    if key is not None and (
        not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS
    ):
        raise MessageRejected(
            f"an idempotency key is 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters",
            field="idempotency_key",
        )
    return key
