"""/v1/messages: accept, idempotency, bad input, read, list, cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from postroom.messages import MessageStatus
from tests.api.conftest import MINIMAL, sqlite_only, stored_rows


def test_accepted_message_is_stored_and_published_once(api, client, published):
    response = api.post(
        "/v1/messages",
        json={
            "from": "Shop <shop@example.com>",
            "to": ["Ada <ada@example.com>", "bob@example.com"],
            "cc": "carol@example.com",
            "bcc": ["dan@example.com"],
            "reply_to": "help@example.com",
            "subject": "Your order",
            "text": "Shipped.",
            "html": "<p>Shipped.</p>",
            "headers": {"X-Order": "42"},
            "tags": ["orders"],
            "metadata": {"order": 42},
            "stream": "bulk",
        },
    )

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["from"] == "Shop <shop@example.com>"
    assert body["recipients"] == [
        "ada@example.com",
        "bob@example.com",
        "carol@example.com",
        "dan@example.com",
    ]
    assert published == [("bulk", [body["id"]])]
    stored = client.get_message(body["id"])
    assert stored.subject == "Your order"
    assert stored.headers == {"X-Order": "42"}
    assert stored.metadata_ == {"order": 42}
    assert stored.html == "<p>Shipped.</p>"


def test_message_is_read_back_with_its_events_after_delivery(api, client, outbox):
    message_id = api.post("/v1/messages", json=MINIMAL).json()["id"]
    client.deliver([message_id])

    response = api.get(f"/v1/messages/{message_id}")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "sent"
    assert body["attempts"] == 1
    assert body["sent_at"] is not None
    assert body["last_error"] is None
    assert body["to"] == ["ada@example.com"]
    assert [event["status"] for event in body["events"]] == ["queued", "sending", "sent"]
    assert set(body["events"][0]) == {"at", "status", "detail", "code"}
    assert len(outbox) == 1


@sqlite_only
def test_send_at_in_the_future_schedules_without_publishing(api, published):
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    response = api.post("/v1/messages", json={**MINIMAL, "send_at": later})

    assert response.status_code == 202
    assert response.json()["status"] == "scheduled"
    assert datetime.fromisoformat(response.json()["next_attempt_at"]) > datetime.now(UTC)
    assert published == []


# idempotency -------------------------------------------------------------------------------


def test_idempotency_key_header_replays_the_same_message(api, client, published):
    first = api.post("/v1/messages", json=MINIMAL, headers={"Idempotency-Key": "order-42"})
    again = api.post(
        "/v1/messages",
        json={**MINIMAL, "subject": "Changed"},
        headers={"Idempotency-Key": "order-42"},
    )

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["subject"] == "Hello"
    assert published.ids == [first.json()["id"]]
    assert stored_rows(client)[0] == 1


@sqlite_only
def test_idempotency_key_in_the_body_replays_the_same_message(api, client, published):
    payload = {**MINIMAL, "idempotency_key": "signup-7"}
    first = api.post("/v1/messages", json=payload)
    again = api.post("/v1/messages", json=payload)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["idempotency_key"] == "signup-7"
    assert published.ids == [first.json()["id"]]
    assert stored_rows(client)[0] == 1


@sqlite_only
def test_idempotency_key_header_wins_over_the_body(api, client):
    first = api.post(
        "/v1/messages",
        json={**MINIMAL, "idempotency_key": "from-body"},
        headers={"Idempotency-Key": "from-header"},
    )
    by_header_key = api.post("/v1/messages", json={**MINIMAL, "idempotency_key": "from-header"})
    by_body_key = api.post("/v1/messages", json={**MINIMAL, "idempotency_key": "from-body"})

    assert first.json()["idempotency_key"] == "from-header"
    assert by_header_key.status_code == 200
    assert by_header_key.json()["id"] == first.json()["id"]
    assert by_body_key.status_code == 202
    assert stored_rows(client)[0] == 2


# bad input ---------------------------------------------------------------------------------

BAD_INPUT = {
    "bad address": ({"to": "not-an-address"}, "to[0]", "InvalidAddress"),
    "bad second address": ({"to": ["ok@example.com", "bad@"]}, "to[1]", "InvalidAddress"),
    "bad cc": ({"cc": ["nobody"]}, "cc[0]", "InvalidAddress"),
    "bad from": ({"from": "shop at example"}, "from", "InvalidAddress"),
    "CR/LF in subject": ({"subject": "Hi\r\nBcc: x@evil.test"}, "subject", "HeaderInjection"),
    "LF in header value": (
        {"headers": {"X-Tag": "a\nBcc: x@evil.test"}},
        "headers.X-Tag",
        "HeaderInjection",
    ),
    "CR/LF in display name": (
        {"to": "Ada\r\nBcc: x@evil.test <ada@example.com>"},
        "to[0]",
        "HeaderInjection",
    ),
    "reserved header": ({"headers": {"From": "x@evil.test"}}, "headers.From", "MessageRejected"),
    "no body": ({"text": None}, "text", "MessageRejected"),
    "no recipient": ({"to": []}, "to", "MessageRejected"),
    "unknown stream": ({"stream": "marketing"}, "stream", "InvalidRequest"),
    "unknown field": ({"subjet": "typo"}, "subjet", "InvalidRequest"),
    # optional in the schema (a template gives it), required by the message
    "missing subject": ({"subject": None}, "subject", "MessageRejected"),
    "subject not a string": ({"subject": 5}, "subject", "InvalidRequest"),
    "recipient of the wrong type": ({"to": 5}, "to", "InvalidRequest"),
    "header value not a string": ({"headers": {"X-Count": 3}}, "headers.X-Count", "InvalidRequest"),
    "tags not a list": ({"tags": "orders"}, "tags", "InvalidRequest"),
    "send_at without offset": ({"send_at": "2030-01-01T09:00:00"}, "send_at", "InvalidRequest"),
    "send_at not a time": ({"send_at": "tomorrow"}, "send_at", "InvalidRequest"),
}


@sqlite_only
@pytest.mark.parametrize(("change", "field", "error_type"), BAD_INPUT.values(), ids=BAD_INPUT)
def test_bad_input_answers_422_naming_the_field_and_stores_nothing(
    api, client, published, change, field, error_type
):
    payload = {**MINIMAL, **change}
    payload = {name: value for name, value in payload.items() if value is not None}

    response = api.post("/v1/messages", json=payload)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert field in error["message"]
    assert error["type"] == error_type
    assert stored_rows(client) == (0, 0)
    assert published == []


@sqlite_only
def test_every_validation_problem_is_listed(api, client):
    response = api.post("/v1/messages", json={"to": 5, "subject": 5, "stream": "x", "extra": 1})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "InvalidRequest"
    assert error["field"] == "to"
    assert {problem["field"] for problem in error["errors"]} == {
        "to",
        "subject",
        "stream",
        "extra",
    }
    assert stored_rows(client) == (0, 0)


@sqlite_only
def test_invalid_json_answers_422_naming_the_body(api, client):
    response = api.post(
        "/v1/messages", content=b'{"to": ', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body"
    assert stored_rows(client) == (0, 0)


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "too long"])
def test_bad_idempotency_key_header_is_rejected(api, client, key):
    response = api.post("/v1/messages", json=MINIMAL, headers={"Idempotency-Key": key})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "idempotency_key"
    assert stored_rows(client) == (0, 0)


@sqlite_only
def test_oversize_body_answers_422_and_stores_nothing(make_api, client, published):
    api = make_api(max_message_bytes=2048)

    small = api.post("/v1/messages", json={**MINIMAL, "text": "x" * 1000})
    large = api.post("/v1/messages", json={**MINIMAL, "text": "x" * 1500, "html": "y" * 1500})

    assert small.status_code == 202
    assert large.status_code == 422
    assert large.json()["error"]["type"] == "MessageTooLarge"
    assert large.json()["error"]["field"] == "text"
    assert stored_rows(client)[0] == 1
    assert published.ids == [small.json()["id"]]


# read, list, cancel ------------------------------------------------------------------------


def test_unknown_message_answers_404(api):
    response = api.get("/v1/messages/01NOSUCHMESSAGE0000000000")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "MessageNotFound"
    assert "01NOSUCHMESSAGE0000000000" in response.json()["error"]["message"]


def test_pages_walk_every_message_newest_first(api, client):
    ids = [api.post("/v1/messages", json=MINIMAL).json()["id"] for _ in range(5)]

    seen, pages, cursor = [], 0, None
    while True:
        params = {"limit": 2} | ({"before": cursor} if cursor else {})
        page = api.get("/v1/messages", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break

    assert seen == sorted(ids, reverse=True)
    assert pages == 3


@sqlite_only
def test_a_full_last_page_has_no_next_cursor(api):
    for _ in range(4):
        api.post("/v1/messages", json=MINIMAL)

    first = api.get("/v1/messages", params={"limit": 2}).json()
    second = api.get("/v1/messages", params={"limit": 2, "before": first["next"]}).json()

    assert first["next"] == first["items"][-1]["id"]
    assert len(second["items"]) == 2
    assert second["next"] is None


@sqlite_only
def test_listing_filters_by_status(api, client):
    kept = api.post("/v1/messages", json=MINIMAL).json()["id"]
    cancelled = api.post("/v1/messages", json=MINIMAL).json()["id"]
    client.cancel(cancelled)

    only_cancelled = api.get("/v1/messages", params={"status": "cancelled"}).json()
    only_queued = api.get("/v1/messages", params={"status": "queued"}).json()

    assert [item["id"] for item in only_cancelled["items"]] == [cancelled]
    assert [item["id"] for item in only_queued["items"]] == [kept]


@sqlite_only
@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"status": "lost"}, "status")],
)
def test_bad_list_parameters_answer_422(api, params, field):
    response = api.get("/v1/messages", params=params)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_cancel_answers_the_cancelled_message(api, client):
    message_id = api.post("/v1/messages", json=MINIMAL).json()["id"]

    response = api.post(f"/v1/messages/{message_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert client.get_message(message_id).status == MessageStatus.CANCELLED
    assert [event.status for event in client.get_events(message_id)] == ["queued", "cancelled"]


def test_cancelling_a_sent_message_answers_409(api, client, outbox):
    message_id = api.post("/v1/messages", json=MINIMAL).json()["id"]
    client.deliver([message_id])

    response = api.post(f"/v1/messages/{message_id}/cancel")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["type"] == "InvalidTransition"
    assert "sent" in error["message"]
    assert client.get_message(message_id).status == MessageStatus.SENT


@sqlite_only
def test_cancelling_an_unknown_message_answers_404(api):
    response = api.post("/v1/messages/01NOSUCHMESSAGE0000000000/cancel")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "MessageNotFound"
