"""POST /v1/messages with templates and attachments, as JSON (base64) and as multipart."""

from __future__ import annotations

import base64
import json

import pytest

from tests.api.conftest import MINIMAL, sqlite_only, stored_rows

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\xff" * 50


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def attached(outbox):
    """(filename, content type, disposition, Content-ID, bytes) of each file in the last email."""
    email = outbox[-1].email
    return [
        (
            part.get_filename(),
            part.get_content_type(),
            part.get_content_disposition(),
            part["Content-ID"],
            part.get_payload(decode=True),
        )
        for part in email.walk()
        if part.get_filename()
    ]


def assert_rejected(response, client, published, *, field, error_type):
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["type"], error.get("field")) == (error_type, field)
    assert stored_rows(client) == (0, 0)
    assert published == []


@pytest.fixture
def welcome(client):
    client.save_template("welcome", subject="Welcome, {{ name }}", html="<p>Hi {{ name }}</p>")
    client.save_template("welcome", locale="fr", subject="Bienvenue, {{ name }}", text="Salut")
    return client


# templates ---------------------------------------------------------------------------------


def test_a_template_send_is_rendered_now_and_names_the_version(api, welcome, outbox):
    response = api.post(
        "/v1/messages",
        json={
            "to": "ada@example.com",
            "template": "welcome",
            "context": {"name": "Zoé"},
            "locale": "fr-CA",
        },
    )
    default = api.post(
        "/v1/messages",
        json={"to": "ada@example.com", "template": "welcome", "context": {"name": "<Ada>"}},
    )

    assert response.status_code == 202, response.text
    assert response.json()["subject"] == "Bienvenue, Zoé"
    assert response.json()["template"] == {"name": "welcome", "locale": "fr", "version": 1}
    detail = api.get(f"/v1/messages/{default.json()['id']}").json()
    assert detail["template"] == {"name": "welcome", "locale": "", "version": 1}
    assert detail["attachments"] == []
    welcome.deliver([default.json()["id"]])
    email = outbox[-1].email
    assert email["Subject"] == "Welcome, <Ada>"
    assert email.get_body(("html",)).get_content().strip() == "<p>Hi &lt;Ada&gt;</p>"
    assert email.get_body(("plain",)).get_content().strip() == "Hi <Ada>"


@sqlite_only
def test_a_message_without_a_template_says_so(api):
    message_id = api.post("/v1/messages", json=MINIMAL).json()["id"]

    assert api.get(f"/v1/messages/{message_id}").json()["template"] is None


@sqlite_only
def test_an_unknown_template_answers_422_and_stores_nothing(api, client, published):
    response = api.post("/v1/messages", json={"to": "ada@example.com", "template": "nope"})

    assert_rejected(response, client, published, field="template", error_type="TemplateError")
    assert response.json()["error"]["template"] == {"name": "nope"}


@sqlite_only
def test_a_template_and_a_subject_together_answer_422(api, welcome, published):
    response = api.post(
        "/v1/messages",
        json={**MINIMAL, "template": "welcome", "context": {"name": "Ada"}},
    )

    assert_rejected(response, welcome, published, field="template", error_type="MessageRejected")


@sqlite_only
def test_a_template_error_answers_422_with_the_line_and_stores_nothing(api, client, published):
    client.save_template("receipt", subject="Receipt", text="Total:\n{{ order.total }}")

    response = api.post(
        "/v1/messages", json={"to": "ada@example.com", "template": "receipt", "context": {}}
    )

    assert_rejected(response, client, published, field=None, error_type="TemplateError")
    assert response.json()["error"]["template"] == {"name": "receipt", "version": 1, "line": 2}


@sqlite_only
def test_a_context_that_is_not_an_object_answers_422(api, welcome, published):
    response = api.post(
        "/v1/messages", json={"to": "ada@example.com", "template": "welcome", "context": [1]}
    )

    assert_rejected(response, welcome, published, field="context", error_type="InvalidRequest")


# base64 attachments ------------------------------------------------------------------------


def test_base64_attachments_are_stored_and_delivered_byte_for_byte(api, client, outbox):
    response = api.post(
        "/v1/messages",
        json={
            **MINIMAL,
            "html": '<p>Hi <img src="cid:logo"></p>',
            "attachments": [
                {"filename": "invoice.pdf", "content": b64(PDF)},
                {
                    "filename": "logo.png",
                    "content": b64(PNG),
                    "inline": True,
                    "content_id": "logo",
                },
                {"filename": "notes", "content": b64(b"plain"), "content_type": "text/plain"},
            ],
        },
    )

    assert response.status_code == 202, response.text
    message_id = response.json()["id"]
    assert api.get(f"/v1/messages/{message_id}").json()["attachments"] == [
        {
            "filename": "invoice.pdf",
            "content_type": "application/pdf",
            "size": len(PDF),
            "inline": False,
            "content_id": None,
        },
        {
            "filename": "logo.png",
            "content_type": "image/png",
            "size": len(PNG),
            "inline": True,
            "content_id": "logo",
        },
        {
            "filename": "notes",
            "content_type": "text/plain",
            "size": 5,
            "inline": False,
            "content_id": None,
        },
    ]
    client.deliver([message_id])
    assert sorted(attached(outbox)) == [
        ("invoice.pdf", "application/pdf", "attachment", None, PDF),
        ("logo.png", "image/png", "inline", "<logo>", PNG),
        ("notes", "text/plain", "attachment", None, b"plain"),
    ]


@sqlite_only
def test_base64_wrapped_at_76_columns_is_accepted(api, client, outbox):
    wrapped = base64.encodebytes(PDF).decode()
    assert "\n" in wrapped

    response = api.post(
        "/v1/messages",
        json={**MINIMAL, "attachments": [{"filename": "a.pdf", "content": wrapped}]},
    )

    client.deliver([response.json()["id"]])
    assert attached(outbox)[0][-1] == PDF


BAD_ATTACHMENTS = {
    "bad base64": (
        [{"filename": "a.txt", "content": b64(b"ok")}, {"filename": "b.txt", "content": "*no*"}],
        "attachments[1].content",
        "InvalidRequest",
    ),
    "truncated base64": (
        [{"filename": "a.txt", "content": "aGVsbG8"}],
        "attachments[0].content",
        "InvalidRequest",
    ),
    "no content": ([{"filename": "a.txt"}], "attachments[0].content", "InvalidRequest"),
    "CR/LF in filename": (
        [{"filename": "a.txt\r\nBcc: x@evil.test", "content": b64(b"x")}],
        "attachments[0].filename",
        "HeaderInjection",
    ),
    "path in filename": (
        [{"filename": "../etc/passwd", "content": b64(b"x")}],
        "attachments[0].filename",
        "MessageRejected",
    ),
    "bad content type": (
        [{"filename": "a.txt", "content": b64(b"x"), "content_type": "text"}],
        "attachments[0].content_type",
        "MessageRejected",
    ),
    "duplicate content ids": (
        [
            {"filename": "a.png", "content": b64(PNG), "inline": True},
            {"filename": "b.png", "content": b64(PNG), "content_id": "a.png"},
        ],
        "attachments",
        "MessageRejected",
    ),
    "unknown field": (
        [{"filename": "a.txt", "content": b64(b"x"), "disposition": "inline"}],
        "attachments[0].disposition",
        "InvalidRequest",
    ),
}


@sqlite_only
@pytest.mark.parametrize(
    ("attachments", "field", "error_type"), BAD_ATTACHMENTS.values(), ids=BAD_ATTACHMENTS
)
def test_bad_attachments_answer_422_naming_the_field_and_store_nothing(
    api, client, published, attachments, field, error_type
):
    response = api.post("/v1/messages", json={**MINIMAL, "attachments": attachments})

    assert_rejected(response, client, published, field=field, error_type=error_type)
    assert field in response.json()["error"]["message"]


@sqlite_only
def test_an_attachment_over_the_limit_answers_422(make_api, client, published):
    api = make_api(max_attachment_bytes=1000)

    response = api.post(
        "/v1/messages",
        json={
            **MINIMAL,
            "attachments": [
                {"filename": "small.bin", "content": b64(b"x" * 1000)},
                {"filename": "large.bin", "content": b64(b"x" * 1001)},
            ],
        },
    )

    assert_rejected(
        response, client, published, field="attachments[1].content", error_type="MessageTooLarge"
    )


# multipart ---------------------------------------------------------------------------------


def post_multipart(api, message, files=(), **options):
    """A multipart/form-data POST; ``message`` goes as a plain field (a part without filename)."""
    if message is not None:
        text = message if isinstance(message, str) else json.dumps(message)
        files = [("message", (None, text.encode(), "application/json")), *files]
    return api.post("/v1/messages", files=list(files), **options)


def test_multipart_file_parts_become_attachments_and_inline_images(api, client, outbox):
    response = post_multipart(
        api,
        {**MINIMAL, "html": '<img src="cid:logo.png">'},
        files=[
            ("attachments", ("invoice.pdf", PDF, "application/pdf")),
            ("inline", ("logo.png", PNG, "application/octet-stream")),
            ("attachments", ("notes.txt", b"caf\xc3\xa9", "text/plain; charset=utf-8")),
        ],
        headers={"Idempotency-Key": "multipart-1"},
    )

    assert response.status_code == 202, response.text
    assert response.json()["idempotency_key"] == "multipart-1"
    message_id = response.json()["id"]
    described = api.get(f"/v1/messages/{message_id}").json()["attachments"]
    assert [(a["filename"], a["content_type"], a["inline"]) for a in described] == [
        ("invoice.pdf", "application/pdf", False),
        # octet-stream says "unknown": the type is guessed from the filename
        ("logo.png", "image/png", True),
        ("notes.txt", "text/plain", False),
    ]
    client.deliver([message_id])
    assert sorted(attached(outbox)) == [
        ("invoice.pdf", "application/pdf", "attachment", None, PDF),
        ("logo.png", "image/png", "inline", "<logo.png>", PNG),
        ("notes.txt", "text/plain", "attachment", None, "café".encode()),
    ]


@sqlite_only
def test_multipart_json_attachments_name_file_parts_and_set_their_content_ids(api, client, outbox):
    response = post_multipart(
        api,
        {
            **MINIMAL,
            "html": '<img src="cid:logo">',
            "attachments": [
                {"filename": "readme.txt", "content": b64(b"from json")},
                {"filename": "logo.png", "content_id": "logo"},
            ],
        },
        files=[
            ("attachments", ("extra.bin", b"\x00\x01", "application/x-extra")),
            ("inline", ("logo.png", PNG, "image/png")),
        ],
    )

    assert response.status_code == 202, response.text
    client.deliver([response.json()["id"]])
    assert sorted(attached(outbox)) == [
        ("extra.bin", "application/x-extra", "attachment", None, b"\x00\x01"),
        ("logo.png", "image/png", "inline", "<logo>", PNG),
        ("readme.txt", "text/plain", "attachment", None, b"from json"),
    ]
    described = api.get(f"/v1/messages/{response.json()['id']}").json()["attachments"]
    # JSON entries first, in their order, then the parts no entry named
    assert [a["filename"] for a in described] == ["readme.txt", "logo.png", "extra.bin"]


@sqlite_only
def test_the_message_field_can_itself_be_a_file_part(api, client):
    response = api.post(
        "/v1/messages",
        files=[
            ("message", ("message.json", json.dumps(MINIMAL).encode(), "application/json")),
            ("attachments", ("a.txt", b"hello", "text/plain")),
        ],
    )

    assert response.status_code == 202, response.text
    assert client.get_message(response.json()["id"]).attachment_count == 1


@sqlite_only
def test_multipart_template_sends_work_like_json_ones(api, welcome):
    response = post_multipart(
        api,
        {"to": "ada@example.com", "template": "welcome", "context": {"name": "Ada"}},
        files=[("attachments", ("a.txt", b"hello", "text/plain"))],
    )

    assert response.status_code == 202, response.text
    assert response.json()["subject"] == "Welcome, Ada"


BAD_MULTIPART = {
    "no message field": (None, [("attachments", ("a.txt", b"x", "text/plain"))], "message"),
    "message not JSON": ("{not json", [], "message"),
    "unknown form field": (MINIMAL, [("attachment", ("a.txt", b"x", "text/plain"))], "attachment"),
    "schema error in the message": ({**MINIMAL, "subjet": "typo"}, [], "subjet"),
    "named part missing": (
        {**MINIMAL, "attachments": [{"filename": "missing.png", "inline": True}]},
        [("inline", ("other.png", PNG, "image/png"))],
        "attachments[0].content",
    ),
}


@sqlite_only
@pytest.mark.parametrize(("message", "files", "field"), BAD_MULTIPART.values(), ids=BAD_MULTIPART)
def test_bad_multipart_bodies_answer_422_naming_the_field(
    api, client, published, message, files, field
):
    response = post_multipart(api, message, files)

    assert_rejected(response, client, published, field=field, error_type="InvalidRequest")


@sqlite_only
def test_a_file_field_given_as_text_answers_422(api, client, published):
    response = post_multipart(
        api,
        MINIMAL,
        files=[
            ("attachments", (None, b"not a file", "text/plain")),
            ("inline", ("logo.png", PNG, "image/png")),
        ],
    )

    assert_rejected(response, client, published, field="attachments", error_type="InvalidRequest")


@sqlite_only
def test_domain_errors_in_multipart_name_the_field_as_in_json(make_api, client, published):
    api = make_api(max_attachment_bytes=100)

    bad_address = post_multipart(api, {**MINIMAL, "to": "nobody"})
    too_large = post_multipart(
        api, MINIMAL, files=[("attachments", ("big.bin", b"x" * 101, "application/x-big"))]
    )
    bad_filename = post_multipart(
        api, MINIMAL, files=[("attachments", ("a\\b.txt", b"x", "text/plain"))]
    )

    assert_rejected(bad_address, client, published, field="to[0]", error_type="InvalidAddress")
    assert_rejected(
        too_large, client, published, field="attachments[0].content", error_type="MessageTooLarge"
    )
    assert_rejected(
        bad_filename,
        client,
        published,
        field="attachments[0].filename",
        error_type="MessageRejected",
    )


@sqlite_only
def test_other_media_types_answer_415(api, client):
    as_text = api.post(
        "/v1/messages", content=json.dumps(MINIMAL), headers={"Content-Type": "text/plain"}
    )
    as_urlencoded_form = api.post("/v1/messages", data={"message": json.dumps(MINIMAL)})

    for response in (as_text, as_urlencoded_form):
        assert response.status_code == 415
        assert response.json()["error"]["type"] == "UnsupportedMediaType"
    assert stored_rows(client) == (0, 0)


@sqlite_only
def test_a_json_body_without_a_content_type_is_still_read(api, client):
    response = api.post("/v1/messages", content=json.dumps(MINIMAL).encode())

    assert response.status_code == 202, response.text
