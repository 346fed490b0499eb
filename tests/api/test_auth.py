"""Bearer API keys: every /v1 route refuses requests without a live key."""

from __future__ import annotations

import logging

import pytest

from postroom import api_keys
from tests.api.conftest import MINIMAL, new_key, sqlite_only, stored_rows

pytestmark = sqlite_only


def assert_unauthorized(response):
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "NotAuthenticated"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer pr_not-a-key-anyone-made", "pr_bare"],
    ids=["missing", "empty", "no credentials", "basic", "unknown key", "no scheme"],
)
def test_requests_without_a_valid_key_answer_401(api, client, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    if authorization is None:
        api.headers.pop("Authorization")

    responses = [
        api.get("/v1/messages", headers=headers),
        api.get("/v1/messages/01NOSUCHMESSAGE0000000000", headers=headers),
        api.post("/v1/messages", json=MINIMAL, headers=headers),
        api.post("/v1/messages/01NOSUCHMESSAGE0000000000/cancel", headers=headers),
    ]

    for response in responses:
        assert_unauthorized(response)
    assert stored_rows(client) == (0, 0)


def test_a_revoked_key_answers_401(api, client, api_key):
    assert api.get("/v1/messages").status_code == 200
    with client.sessions.begin() as session:
        key_id = api_keys.authenticate(session, api_key).id
        api_keys.revoke_key(session, key_id)

    assert_unauthorized(api.get("/v1/messages"))


def test_any_live_key_is_accepted(api, client):
    other = new_key(client, "second app")

    response = api.get("/v1/messages", headers={"Authorization": f"bearer {other}"})

    assert response.status_code == 200


def test_authentication_is_checked_before_the_body(api, client):
    api.headers.pop("Authorization")

    response = api.post("/v1/messages", json={"to": "nobody", "subject": "x"})

    assert_unauthorized(response)


def test_keys_never_appear_in_answers_or_logs(api, client, api_key, caplog):
    wrong = "pr_" + "x" * 43
    caplog.set_level(logging.DEBUG)

    refused = api.get("/v1/messages", headers={"Authorization": f"Bearer {wrong}"})
    accepted = api.post("/v1/messages", json=MINIMAL)

    assert_unauthorized(refused)
    assert accepted.status_code == 202
    for secret in (wrong, api_key):
        assert secret not in refused.text
        assert secret not in accepted.text
        assert secret not in caplog.text


def test_healthz_needs_no_key(api):
    api.headers.pop("Authorization")

    assert api.get("/healthz").status_code == 200
