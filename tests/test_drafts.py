from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postroom.drafts import Limits, Stream, build_draft
from postroom.errors import HeaderInjection, InvalidAddress, MessageRejected, MessageTooLarge


def draft(**fields):
    return build_draft(
        **{
            "from_": "app@example.com",
            "to": "a@example.com",
            "subject": "Hi",
            "text": "x",
            **fields,
        }
    )


def test_a_complete_draft_keeps_every_field():
    built = draft(
        cc=["c@example.com"],
        bcc="b@example.com",
        reply_to="Help <help@example.com>",
        html="<p>x</p>",
        headers={"X-Campaign": "spring"},
        tags=["welcome"],
        metadata={"user": 7},
        stream="bulk",
        idempotency_key="k-1",
    )
    assert built.to == ["a@example.com"]
    assert built.cc == ["c@example.com"]
    assert built.bcc == ["b@example.com"]
    assert built.reply_to == ["Help <help@example.com>"]
    assert built.headers == {"X-Campaign": "spring"}
    assert built.stream is Stream.BULK
    assert built.metadata == {"user": 7}


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"to": None}, MessageRejected, "to"),
        ({"to": []}, MessageRejected, "to"),
        ({"to": "nope"}, InvalidAddress, "to[0]"),
        ({"from_": "App\r\n <app@example.com>"}, HeaderInjection, "from"),
        ({"subject": "Hi\r\nBcc: victim@example.com"}, HeaderInjection, "subject"),
        ({"subject": None}, MessageRejected, "subject"),
        ({"subject": "x" * 999}, MessageTooLarge, "subject"),
        ({"text": None}, MessageRejected, "text"),
        ({"text": ""}, MessageRejected, "text"),
        ({"headers": {"X-Tag": "a\nb"}}, HeaderInjection, "headers.X-Tag"),
        ({"headers": {"Bad Name": "v"}}, MessageRejected, "headers.Bad Name"),
        ({"headers": {"Subject": "other"}}, MessageRejected, "headers.Subject"),
        ({"headers": {"X-Long": "v" * 5000}}, MessageTooLarge, "headers.X-Long"),
        ({"stream": "marketing"}, MessageRejected, "stream"),
        ({"tags": ["x" * 65]}, MessageRejected, "tags[0]"),
        ({"metadata": {"when": datetime.now(UTC)}}, MessageRejected, "metadata"),
        ({"send_at": datetime(2030, 1, 1)}, MessageRejected, "send_at"),
        ({"idempotency_key": ""}, MessageRejected, "idempotency_key"),
    ],
)
def test_bad_input_is_rejected_with_a_typed_error_naming_the_field(fields, error, field):
    with pytest.raises(error) as raised:
        draft(**fields)
    assert raised.value.field == field
    assert isinstance(raised.value, ValueError)


def test_size_limits_come_from_settings():
    limits = Limits(max_message_bytes=2048, max_recipients=2)
    with pytest.raises(MessageTooLarge):
        draft(text="é" * 1100, limits=limits)  # 2200 bytes in UTF-8
    with pytest.raises(MessageTooLarge):
        draft(to=["a@example.com", "b@example.com"], cc="c@example.com", limits=limits)
    assert draft(text="é" * 1000, limits=limits).text


def test_html_alone_is_a_body():
    assert draft(text=None, html="<p>hi</p>").html == "<p>hi</p>"
