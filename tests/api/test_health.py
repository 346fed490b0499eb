"""/healthz: a trivial query against the database decides 200 or 503."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from postroom.api.app import create_app
from postroom.client import Postroom


def test_healthz_answers_ok_when_the_database_answers(api):
    response = api.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_answers_503_when_the_database_is_unreachable(make_settings, tmp_path):
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/missing/dir/postroom.db")
    with TestClient(create_app(settings)) as api:
        response = api.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


def test_database_password_never_appears_in_answers_or_logs(make_settings, caplog):
    password = "hunter2-s3cret"
    # Port 1 refuses connections at once, so the failure is fast and certain.
    settings = make_settings(database_url=f"postgresql://postroom:{password}@127.0.0.1:1/postroom")
    client = Postroom(settings, publish=lambda stream, ids: None)
    caplog.set_level(logging.DEBUG)
    api = TestClient(
        create_app(settings, client=client),
        headers={"Authorization": "Bearer pr_whatever"},
        raise_server_exceptions=False,
    )

    health = api.get("/healthz")
    listing = api.get("/v1/messages")
    client.close()

    assert health.status_code == 503
    assert listing.status_code == 503
    assert listing.json()["error"]["type"] == "DatabaseUnavailable"
    assert "database unavailable in GET /v1/messages: OperationalError" in caplog.text
    for text in (health.text, listing.text, caplog.text):
        assert password not in text
