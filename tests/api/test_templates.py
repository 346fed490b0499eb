"""/v1/templates: save versions, list, read with locale fallback, list versions, render."""

from __future__ import annotations

import pytest

from tests.api.conftest import sqlite_only, stored_rows

WELCOME = {
    "name": "welcome",
    "subject": "Welcome, {{ name }}",
    "html": "<style>p { color: red }</style><p>Hi {{ name }}</p>",
}


def save(api, **fields):
    response = api.post("/v1/templates", json={**WELCOME, **fields})
    assert response.status_code in (200, 201), response.text
    return response.json()


# saving ------------------------------------------------------------------------------------


def test_saving_answers_201_with_a_new_version_and_200_when_nothing_changed(api):
    first = api.post("/v1/templates", json=WELCOME)
    again = api.post("/v1/templates", json=WELCOME)
    changed = api.post("/v1/templates", json={**WELCOME, "text": "Hi {{ name }}"})

    assert first.status_code == 201
    body = first.json()
    assert (body["name"], body["locale"], body["version"]) == ("welcome", "", 1)
    assert body["subject"] == WELCOME["subject"]
    assert body["text"] is None
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert changed.status_code == 201
    assert changed.json()["version"] == 2
    assert [v["version"] for v in api.get("/v1/templates/welcome/versions").json()["items"]] == [
        1,
        2,
    ]


@sqlite_only
def test_a_new_locale_is_version_1_of_its_own_variant(api):
    save(api)

    response = api.post("/v1/templates", json={**WELCOME, "locale": "fr_ca"})

    # the default variant is what a lookup for fr-CA found before: still a new version
    assert response.status_code == 201
    assert (response.json()["locale"], response.json()["version"]) == ("fr-CA", 1)


@sqlite_only
def test_a_syntax_error_answers_422_naming_the_template_version_and_line(api):
    save(api)

    response = api.post("/v1/templates", json={**WELCOME, "html": "<p>one</p>\n<p>{% if %}</p>"})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "TemplateError"
    assert error["template"] == {"name": "welcome", "version": 2, "line": 2}
    assert "line 2" in error["message"]
    assert [v["version"] for v in api.get("/v1/templates/welcome/versions").json()["items"]] == [1]


BAD_TEMPLATES = {
    "bad name": ({"name": "Welcome Mail"}, "name", "TemplateError"),
    "bad locale": ({"locale": "not a locale"}, "locale", "TemplateError"),
    "blank subject": ({"subject": "  "}, "subject", "TemplateError"),
    "missing subject": ({"subject": None}, "subject", "InvalidRequest"),
    "unknown field": ({"body": "x"}, "body", "InvalidRequest"),
}


@sqlite_only
@pytest.mark.parametrize(
    ("change", "field", "error_type"), BAD_TEMPLATES.values(), ids=BAD_TEMPLATES
)
def test_bad_templates_answer_422_naming_the_field(api, change, field, error_type):
    payload = {name: value for name, value in {**WELCOME, **change}.items() if value is not None}

    response = api.post("/v1/templates", json=payload)

    assert response.status_code == 422
    assert response.json()["error"]["type"] == error_type
    assert response.json()["error"]["field"] == field
    assert api.get("/v1/templates").json()["items"] == []


@sqlite_only
def test_a_template_without_a_body_part_is_refused(api):
    response = api.post("/v1/templates", json={"name": "empty", "subject": "Hi"})

    assert response.status_code == 422
    assert response.json()["error"]["type"] == "TemplateError"
    assert response.json()["error"]["template"] == {"name": "empty"}


# reading -----------------------------------------------------------------------------------


def test_listing_shows_the_latest_version_of_each_name_and_locale(api):
    save(api)
    save(api, subject="Welcome v2, {{ name }}")
    save(api, locale="fr", subject="Bienvenue, {{ name }}")
    save(api, name="receipt", subject="Receipt", text="Paid")

    items = api.get("/v1/templates").json()["items"]

    assert [(t["name"], t["locale"], t["version"]) for t in items] == [
        ("receipt", "", 1),
        ("welcome", "", 2),
        ("welcome", "fr", 1),
    ]
    assert items[1]["subject"] == "Welcome v2, {{ name }}"


def test_reading_falls_back_through_the_locale_chain_and_can_pin_a_version(api):
    save(api)
    save(api, subject="Welcome v2")
    save(api, locale="fr", subject="Bienvenue")

    def read(**params):
        body = api.get("/v1/templates/welcome", params=params).json()
        return body["locale"], body["version"]

    assert read() == ("", 2)
    assert read(version=1) == ("", 1)
    assert read(locale="fr-CA") == ("fr", 1)
    assert read(locale="de") == ("", 2)


@sqlite_only
@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/templates/nope", {}),
        ("/v1/templates/welcome", {"version": 9}),
        ("/v1/templates/nope/versions", {}),
        ("/v1/templates/welcome/versions", {"locale": "fr"}),
    ],
    ids=["unknown name", "unknown version", "no versions", "no versions in locale"],
)
def test_unknown_templates_answer_404(api, path, params):
    save(api)

    response = api.get(path, params=params)

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "TemplateNotFound"


@sqlite_only
def test_versions_are_listed_for_exactly_one_locale_oldest_first(api):
    save(api)
    save(api, locale="fr", subject="Bienvenue")
    save(api, locale="fr", subject="Bienvenue, {{ name }}")

    default = api.get("/v1/templates/welcome/versions").json()["items"]
    french = api.get("/v1/templates/welcome/versions", params={"locale": "fr"}).json()["items"]

    assert [(t["locale"], t["version"]) for t in default] == [("", 1)]
    assert [(t["subject"], t["version"]) for t in french] == [
        ("Bienvenue", 1),
        ("Bienvenue, {{ name }}", 2),
    ]


# rendering ---------------------------------------------------------------------------------


def test_render_previews_the_message_without_storing_or_sending(api, client, published):
    save(api)
    save(api, locale="fr", subject="Bienvenue, {{ name }}", html=None, text="Salut {{ name }}")

    default = api.post("/v1/templates/welcome/render", json={"context": {"name": "<Ann>"}})
    french = api.post(
        "/v1/templates/welcome/render", json={"context": {"name": "Zoé"}, "locale": "fr-CA"}
    )

    assert default.status_code == 200
    assert default.json() == {
        "template": "welcome",
        "locale": "",
        "version": 1,
        "subject": "Welcome, <Ann>",
        "text": "Hi <Ann>",
        "html": default.json()["html"],
    }
    assert '<p style="color: red;">Hi &lt;Ann&gt;</p>' in default.json()["html"]
    assert (french.json()["locale"], french.json()["subject"]) == ("fr", "Bienvenue, Zoé")
    assert french.json()["html"] is None
    assert stored_rows(client) == (0, 0)
    assert published == []


@sqlite_only
def test_render_can_pin_an_older_version(api):
    save(api)
    save(api, subject="New")

    response = api.post(
        "/v1/templates/welcome/render", json={"context": {"name": "Al"}, "version": 1}
    )

    assert (response.json()["version"], response.json()["subject"]) == (1, "Welcome, Al")


@sqlite_only
def test_a_render_error_answers_422_naming_the_template_version_and_line(api):
    save(api, text="Hello\n{{ name }}\n{{ 1 // 0 }}")

    response = api.post("/v1/templates/welcome/render", json={"context": {"name": "Ann"}})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "TemplateError"
    assert error["template"] == {"name": "welcome", "version": 1, "line": 3}
    assert "ZeroDivisionError" in error["message"]


@sqlite_only
def test_rendering_an_unknown_template_answers_404(api):
    response = api.post("/v1/templates/nope/render", json={"context": {}})

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "TemplateNotFound"


@sqlite_only
def test_render_context_must_be_an_object(api):
    save(api)

    response = api.post("/v1/templates/welcome/render", json={"context": ["Ann"]})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "context"


@sqlite_only
def test_every_template_route_needs_a_key(api):
    api.headers.pop("Authorization")

    responses = [
        api.post("/v1/templates", json=WELCOME),
        api.get("/v1/templates"),
        api.get("/v1/templates/welcome"),
        api.get("/v1/templates/welcome/versions"),
        api.post("/v1/templates/welcome/render", json={}),
    ]

    assert {response.status_code for response in responses} == {401}
