"""Bearer API keys: every /v1 route refuses requests without a live key."""

from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient

from postroom import api_keys
from postroom.api.app import create_app
from postroom.api.auth import KEY_CACHE_SECONDS, KeyCache
from postroom.db import new_id, utcnow
from tests.api.conftest import MINIMAL, FakeClock, new_key, sqlite_only, stored_rows

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


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_cached_api(client, settings, api_key):
    """Factory: the API on ``client`` whose key cache is ``KeyCache(seconds, clock=clock)``."""
    opened = []

    def make(seconds, clock=time.monotonic):
        app = create_app(settings, client=client, key_cache=KeyCache(seconds, clock=clock))
        test_client = TestClient(app, headers={"Authorization": f"Bearer {api_key}"})
        opened.append(test_client)
        return test_client

    yield make
    for test_client in opened:
        test_client.close()


def revoke(client, secret):
    with client.sessions.begin() as session:
        api_keys.revoke_key(session, api_keys.authenticate(session, secret).id)


def test_a_revoked_key_answers_401_once_its_cache_time_has_passed(
    make_cached_api, client, api_key, clock
):
    api = make_cached_api(KEY_CACHE_SECONDS, clock)
    assert api.get("/v1/messages").status_code == 200
    revoke(client, api_key)

    # the documented window: this process checked the key less than KEY_CACHE_SECONDS ago
    clock.now += KEY_CACHE_SECONDS - 0.5
    still_trusted = api.post("/v1/messages", json=MINIMAL)
    clock.now += 0.5

    assert still_trusted.status_code == 202
    assert_unauthorized(api.get("/v1/messages"))
    assert_unauthorized(api.post("/v1/messages", json=MINIMAL))
    assert stored_rows(client) == (1, 1)


def test_a_revoked_key_is_refused_at_once_without_a_cache(make_cached_api, client, api_key):
    api = make_cached_api(0)
    assert api.get("/v1/messages").status_code == 200

    revoke(client, api_key)

    assert_unauthorized(api.get("/v1/messages"))


def test_a_key_is_checked_again_when_its_cache_time_has_passed(
    make_cached_api, client, api_key, clock
):
    api = make_cached_api(KEY_CACHE_SECONDS, clock)
    assert api.get("/v1/messages").status_code == 200
    clock.now += KEY_CACHE_SECONDS

    # looked up afresh and trusted again: the key is still live
    assert api.get("/v1/messages").status_code == 200
    revoke(client, api_key)
    clock.now += KEY_CACHE_SECONDS - 0.5

    assert api.get("/v1/messages").status_code == 200
    clock.now += 0.5
    assert_unauthorized(api.get("/v1/messages"))


def test_a_refused_key_is_not_remembered(make_cached_api, client, clock):
    # a key stored after a request presented it works at once: refusals are never cached
    secret = "pr_" + "later" * 8
    api = make_cached_api(KEY_CACHE_SECONDS, clock)
    assert_unauthorized(api.get("/v1/messages", headers={"Authorization": f"Bearer {secret}"}))
    with client.sessions.begin() as session:
        session.add(
            api_keys.ApiKey(
                id=new_id(),
                name="stored later",
                digest=api_keys.key_digest(secret),
                hint=secret[:10],
                created_at=utcnow(),
            )
        )

    response = api.get("/v1/messages", headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 200


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
