"""The body of ``POST /v1/messages``: JSON, or multipart/form-data with files as parts.

Both are read into the same ``SendRequest``, so one handler sends either. A multipart body has
a ``message`` field holding the JSON, file parts named ``attachments`` and ``inline``; a JSON
attachment without ``content`` takes it from the file part of the same filename.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from postroom.api.auth import ClientDep
from postroom.api.schemas import AttachmentIn, SendRequest
from postroom.attachments import MAX_ATTACHMENTS

FILE_FIELDS = ("attachments", "inline")

# How POST /v1/messages is documented: the handler reads the body itself, so FastAPI cannot
# derive this. SendRequest is added to the components by create_app.
OPENAPI_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SendRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {
                            "$ref": "#/components/schemas/SendRequest",
                            "description": "The message as JSON, as in an application/json "
                            "body. An attachment without `content` takes the file part with "
                            "the same filename.",
                        },
                        "attachments": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Files to attach; the part's filename and content "
                            "type are used.",
                        },
                        "inline": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Images the HTML shows as `cid:<filename>`.",
                        },
                    },
                },
                "encoding": {"message": {"contentType": "application/json"}},
            },
        },
    }
}


@dataclass(frozen=True)
class FilePart:
    """A file uploaded as one part of a multipart body."""

    filename: str
    content: bytes
    content_type: str | None
    inline: bool


def _invalid(location: Sequence[int | str], message: str, kind: str = "value_error") -> Exception:
    # The same exception FastAPI raises for its own validation, so the answer has the same shape.
    return RequestValidationError(
        [{"type": kind, "loc": ("body", *location), "msg": message, "input": None}]
    )


async def read_send_request(request: Request, client: ClientDep) -> SendRequest:
    """The request body as a ``SendRequest``; 422 naming the field, or 415 for other media."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    parts: list[FilePart] = []
    if media_type == "multipart/form-data":
        data, parts = await _read_multipart(request, client.settings.max_message_bytes)
    elif media_type in ("", "application/json") or media_type.endswith("+json"):
        data = _parse_json(await request.body())
    else:
        raise HTTPException(415, f"send application/json or multipart/form-data, not {media_type}")
    try:
        body = SendRequest.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**problem, "loc": ("body", *problem["loc"])}
                for problem in error.errors(include_url=False)
            ]
        ) from None
    return _with_parts(body, parts)


def _parse_json(raw: bytes | str, *, field: str | None = None) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        position, reason = error.pos, error.msg
    except UnicodeDecodeError as error:
        position, reason = error.start, error.reason
    if field is not None:
        raise _invalid((field,), f"not valid JSON: {reason} at character {position}")
    # FastAPI's own shape for a body that is not JSON: the error handler names the body.
    raise RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", position),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": reason},
            }
        ]
    )


async def _read_multipart(request: Request, max_message_bytes: int) -> tuple[Any, list[FilePart]]:
    message: str | bytes | None = None
    parts: list[FilePart] = []
    # One file more than a message may carry, so that the count is refused with the domain's
    # 422 rather than the form parser's 400. The message field may carry base64 attachments,
    # which grow by a third, inside its JSON.
    async with request.form(
        max_files=MAX_ATTACHMENTS + 1, max_part_size=2 * max_message_bytes
    ) as form:
        for name, value in form.multi_items():
            if name == "message":
                if message is not None:
                    raise _invalid(("message",), "give the message once")
                message = await value.read() if isinstance(value, UploadFile) else value
            elif name in FILE_FIELDS:
                if not isinstance(value, UploadFile) or not value.filename:
                    raise _invalid((name,), "must be a file part with a filename")
                parts.append(
                    FilePart(
                        filename=value.filename,
                        content=await value.read(),
                        content_type=_part_content_type(value.content_type),
                        inline=name == "inline",
                    )
                )
            else:
                raise _invalid((name,), "unknown form field; use message, attachments and inline")
    if message is None:
        raise _invalid(("message",), "the message JSON is required", kind="missing")
    return _parse_json(message, field="message"), parts


def _part_content_type(content_type: str | None) -> str | None:
    # Parameters (charset) are not part of an attachment's content type here. curl and browsers
    # label files they do not recognise application/octet-stream: a guess from the filename is
    # then no worse, and it is what makes an inline .png display.
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return None if media_type in ("", "application/octet-stream") else media_type


def _with_parts(body: SendRequest, parts: list[FilePart]) -> SendRequest:
    """The JSON's attachments, filled from the parts they name, then the remaining parts."""
    unclaimed = list(parts)
    attachments: list[AttachmentIn] = []
    for i, entry in enumerate(body.attachments):
        if entry.content is not None:
            attachments.append(entry)
            continue
        part = next((part for part in unclaimed if part.filename == entry.filename), None)
        if part is None:
            raise _invalid(
                ("attachments", i, "content"),
                "give the content in base64, or send a file part with this filename",
                kind="missing",
            )
        unclaimed.remove(part)
        attachments.append(
            entry.model_copy(
                update={
                    "content": part.content,
                    "content_type": entry.content_type or part.content_type,
                    "inline": entry.inline or part.inline,
                }
            )
        )
    attachments += [
        AttachmentIn(
            filename=part.filename,
            content=part.content,
            content_type=part.content_type,
            inline=part.inline,
        )
        for part in unclaimed
    ]
    return body.model_copy(update={"attachments": attachments})
