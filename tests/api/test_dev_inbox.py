"""/v1/dev/inbox: mounted only with the dev_inbox setting, reading the inbox folder."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from postroom import devinbox
from tests.api.conftest import sqlite_only

pytestmark = sqlite_only


def catch(directory, subject, *, html=None):
    message = EmailMessage()
    message["From"] = "Shop <shop@example.com>"
    message["To"] = "ada@example.com"
    message["Subject"] = subject
    message["X-Order"] = "42"
    message.set_content(f"text of {subject}")
    if html is not None:
        message.add_alternative(html, subtype="html")
    return devinbox.store(directory, "bounce@example.com", ["ada@example.com"], message.as_bytes())


@pytest.fixture
def inbox_api(make_api):
    return make_api(dev_inbox=True)


def test_dev_inbox_is_not_mounted_by_default(api, settings):
    catch(settings.dev_inbox_dir, "Hello")

    assert api.get("/v1/dev/inbox").status_code == 404
    assert "/v1/dev/inbox" not in api.get("/openapi.json").json()["paths"]


def test_dev_inbox_lists_caught_messages_newest_first(inbox_api, settings):
    first = catch(settings.dev_inbox_dir, "First")
    second = catch(settings.dev_inbox_dir, "Second")

    response = inbox_api.get("/v1/dev/inbox")

    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["id"] for item in items] == sorted([first.id, second.id], reverse=True)
    by_id = {item["id"]: item for item in items}
    assert by_id[first.id]["subject"] == "First"
    assert by_id[first.id]["from"] == "Shop <shop@example.com>"
    assert by_id[first.id]["mail_from"] == "bounce@example.com"
    assert by_id[first.id]["rcpt_tos"] == ["ada@example.com"]


def test_dev_inbox_shows_one_message_in_full(inbox_api, settings):
    caught = catch(settings.dev_inbox_dir, "Receipt", html="<p>Paid</p>")

    response = inbox_api.get(f"/v1/dev/inbox/{caught.id}")

    assert response.status_code == 200
    body = response.json()
    assert body["subject"] == "Receipt"
    assert body["text"].strip() == "text of Receipt"
    assert body["html"].strip() == "<p>Paid</p>"
    assert {"name": "X-Order", "value": "42"} in body["headers"]
    assert "Subject: Receipt" in body["raw"]
    assert "X-Postroom-Envelope-From" not in body["raw"]


def test_dev_inbox_answers_404_for_an_unknown_id(inbox_api, settings):
    catch(settings.dev_inbox_dir, "Hello")

    response = inbox_api.get("/v1/dev/inbox/01NOSUCHMESSAGE0000000000")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "MessageNotFound"


def test_dev_inbox_is_empty_before_anything_is_caught(inbox_api):
    response = inbox_api.get("/v1/dev/inbox")

    assert response.status_code == 200
    assert response.json() == {"items": []}


def test_dev_inbox_needs_a_key(inbox_api, settings):
    caught = catch(settings.dev_inbox_dir, "Hello")
    inbox_api.headers.pop("Authorization")

    for path in ("/v1/dev/inbox", f"/v1/dev/inbox/{caught.id}"):
        response = inbox_api.get(path)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
