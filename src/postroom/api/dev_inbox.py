"""``/v1/dev/inbox``: read what the dev inbox caught (mounted only when ``dev_inbox`` is on)."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from postroom import devinbox
from postroom.api.auth import require_api_key
from postroom.api.errors import ERROR_RESPONSES, KEYED_RESPONSES
from postroom.api.schemas import CaughtDetail, CaughtPage, CaughtSummary, HeaderOut
from postroom.devinbox import CaughtMessage
from postroom.errors import MessageNotFound
from postroom.settings import Settings

router = APIRouter(
    prefix="/v1/dev/inbox",
    tags=["dev inbox"],
    dependencies=[Depends(require_api_key)],
    responses=KEYED_RESPONSES,
)


async def _settings(request: Request) -> Settings:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _summary_fields(caught: CaughtMessage, parsed: EmailMessage) -> dict[str, object]:
    def header(name: str) -> str | None:
        value = parsed.get(name)
        return None if value is None else str(value)

    return {
        "id": caught.id,
        "received_at": caught.received_at,
        "mail_from": caught.mail_from,
        "rcpt_tos": caught.rcpt_tos,
        "from_": header("From"),
        "to": header("To"),
        "subject": header("Subject"),
    }


def _body(parsed: EmailMessage, subtype: str) -> str | None:
    part = parsed.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    content = part.get_content()
    return content if isinstance(content, str) else None


@router.get("", response_model=CaughtPage, summary="List caught messages, newest first")
def list_caught(
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500, description="How many to return.")] = 100,
) -> CaughtPage:
    """The newest messages the dev inbox caught, with their envelope and main headers."""
    items = [
        CaughtSummary.model_validate(_summary_fields(caught, caught.parsed))
        for caught in devinbox.list_caught(settings.dev_inbox_dir, limit=limit)
    ]
    return CaughtPage(items=items)


@router.get(
    "/{caught_id}",
    response_model=CaughtDetail,
    summary="Get one caught message",
    responses={404: ERROR_RESPONSES[404]},
)
def get_caught(
    caught_id: Annotated[str, Path(description="The id from the inbox listing.")],
    settings: SettingsDep,
) -> CaughtDetail:
    """A caught message's headers (in order), text and HTML bodies, and raw source.

    **404** if the inbox holds no message with this id.
    """
    caught = devinbox.get_caught(settings.dev_inbox_dir, caught_id)
    if caught is None:
        raise MessageNotFound(caught_id)
    parsed = caught.parsed
    return CaughtDetail.model_validate(
        {
            **_summary_fields(caught, parsed),
            "headers": [HeaderOut(name=name, value=str(value)) for name, value in parsed.items()],
            "text": _body(parsed, "plain"),
            "html": _body(parsed, "html"),
            # Mail on the wire is 7-bit or declares its charset per part; replacement keeps a
            # malformed message viewable instead of failing the whole request.
            "raw": caught.raw.decode("utf-8", errors="replace"),
        }
    )
