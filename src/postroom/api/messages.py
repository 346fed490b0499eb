"""``/v1/messages``: put messages in the outbox, read their status and events, cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from postroom import messages
from postroom.api.auth import ClientDep, require_api_key
from postroom.api.errors import ERROR_RESPONSES, KEYED_RESPONSES
from postroom.api.message_body import OPENAPI_REQUEST_BODY, read_send_request
from postroom.api.schemas import (
    AttachmentOut,
    EventOut,
    MessageDetail,
    MessageOut,
    MessagePage,
    SendRequest,
    TemplateRef,
)
from postroom.attachments import StoredAttachment
from postroom.client import Postroom
from postroom.drafts import Stream
from postroom.events import MessageEvent
from postroom.messages import Message, MessageStatus

router = APIRouter(
    prefix="/v1/messages",
    tags=["messages"],
    dependencies=[Depends(require_api_key)],
    responses=KEYED_RESPONSES,
)

MessageId = Annotated[str, Path(description="The message id returned when it was accepted.")]


def message_out(message: Message) -> MessageOut:
    """The API view of a message row."""
    return MessageOut(
        id=message.id,
        status=MessageStatus(message.status),
        stream=Stream(message.stream),
        from_=message.from_addr,
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
        reply_to=message.reply_to,
        recipients=message.recipients,
        subject=message.subject,
        tags=message.tags,
        metadata=message.metadata_,
        idempotency_key=message.idempotency_key,
        attempts=message.attempts,
        created_at=message.created_at,
        updated_at=message.updated_at,
        next_attempt_at=message.next_attempt_at,
        sent_at=message.sent_at,
        last_error=message.last_error,
        template=_template_ref(message),
    )


def _template_ref(message: Message) -> TemplateRef | None:
    if message.template_name is None or message.template_version is None:
        return None
    return TemplateRef(
        name=message.template_name,
        locale=message.template_locale or "",
        version=message.template_version,
    )


def message_detail(
    message: Message, attachments: list[StoredAttachment], events: list[MessageEvent]
) -> MessageDetail:
    """The API view of a message row with its attachments and events."""
    return MessageDetail(
        **message_out(message).model_dump(),
        attachments=[
            AttachmentOut(
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=attachment.size,
                inline=attachment.inline,
                content_id=attachment.content_id,
            )
            for attachment in attachments
        ],
        events=[
            EventOut(
                at=event.at,
                status=MessageStatus(event.status),
                detail=event.detail,
                code=event.code,
            )
            for event in events
        ],
    )


def _is_stored(client: Postroom, key: str | None) -> bool:
    if key is None:
        return False
    with client.sessions() as session:
        return messages.find_by_idempotency_key(session, key) is not None


@router.post(
    "",
    status_code=202,
    response_model=MessageOut,
    summary="Accept a message for delivery",
    responses={
        200: {"model": MessageOut, "description": "Replay: the message stored under this key"},
        415: ERROR_RESPONSES[415],
        422: ERROR_RESPONSES[422],
    },
    openapi_extra=OPENAPI_REQUEST_BODY,
)
async def send_message(
    body: Annotated[SendRequest, Depends(read_send_request)],
    response: Response,
    client: ClientDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Retry-safe submission; overrides `idempotency_key` in the body.",
        ),
    ] = None,
) -> MessageOut:
    """Validate a message, store it in the outbox and queue it for delivery.

    Answers **202** once the message is committed: it will not be lost. The body names the
    first offending field on **422**, and nothing is stored then. A request repeating an
    idempotency key answers **200** with the message first stored under it, and queues
    nothing; the key can come from the `Idempotency-Key` header (which wins) or the body.

    Give the content as `subject` with `text` and/or `html`, or as a stored `template` with
    its `context` (and `locale`): it is rendered now, so a template error is a **422** naming
    the template, version and line. Attachments come base64-encoded in the JSON, or as file
    parts of a `multipart/form-data` body whose `message` field holds the JSON; file parts
    follow the JSON's attachments in `attachments[i]` error fields.
    """
    key = idempotency_key if idempotency_key is not None else body.idempotency_key
    # One worker thread round trip for all the blocking work; the endpoint itself is async so
    # that FastAPI spends no further ones (a sync endpoint's answer is validated in another).
    replay, out = await run_in_threadpool(_send, client, body, key)
    if replay:
        response.status_code = 200
    return out


def _send(client: Postroom, body: SendRequest, key: str | None) -> tuple[bool, MessageOut]:
    # Checked before sending so a replay can answer 200; the unique key in the table still
    # guarantees one message if two requests race, the later one merely answering 202.
    replay = _is_stored(client, key)
    message = client.send(
        body.to,
        body.subject,
        from_=body.from_,
        text=body.text,
        html=body.html,
        cc=body.cc,
        bcc=body.bcc,
        reply_to=body.reply_to,
        headers=body.headers,
        tags=body.tags,
        metadata=body.metadata,
        idempotency_key=key,
        send_at=body.send_at,
        stream=body.stream,
        template=body.template,
        context=body.context,
        locale=body.locale,
        attachments=[attachment.model_dump() for attachment in body.attachments],
    )
    return replay, message_out(message)


@router.get("", response_model=MessagePage, summary="List messages, newest first")
def list_messages(
    client: ClientDep,
    status: Annotated[
        MessageStatus | None, Query(description="Only messages in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    before: Annotated[
        str | None,
        Query(max_length=26, description="The `next` cursor of the previous page."),
    ] = None,
) -> MessagePage:
    """Page through messages newest first.

    Follow `next` (pass it as `before`) until it is null to walk every message; pages stay
    stable while new messages arrive, because the cursor is a message id and ids sort by
    creation time.
    """
    # One extra row tells whether another page exists without a COUNT query.
    rows = client.list_messages(status=status, before=before, limit=limit + 1)
    page = rows[:limit]
    cursor = page[-1].id if len(rows) > limit else None
    return MessagePage(items=[message_out(row) for row in page], next=cursor)


@router.get(
    "/{message_id}",
    response_model=MessageDetail,
    summary="Get a message and its events",
    responses={404: ERROR_RESPONSES[404]},
)
def get_message(message_id: MessageId, client: ClientDep) -> MessageDetail:
    """The message's status, attempts, times, recipients, last error and every event.

    Events are the status transitions, oldest first, each with the time, the new status, a
    detail such as the SMTP reply, and the reply code when there was one. `template` names
    the template version the content was rendered from; `attachments` describes each file
    (not its content). **404** if no message has this id.
    """
    message = client.get_message(message_id)
    # most messages carry none: skip the query
    attachments = client.list_attachments(message_id) if message.attachment_count else []
    return message_detail(message, attachments, client.get_events(message_id))


@router.post(
    "/{message_id}/cancel",
    response_model=MessageOut,
    summary="Cancel a message not yet being sent",
    responses={404: ERROR_RESPONSES[404], 409: ERROR_RESPONSES[409]},
)
def cancel_message(message_id: MessageId, client: ClientDep) -> MessageOut:
    """Cancel a scheduled, queued or deferred message; it will never be sent.

    **409** if the message is already sending or has reached a final status (sent, failed,
    cancelled, suppressed); **404** if no message has this id.
    """
    return message_out(client.cancel(message_id))
