"""A database that stops answering: 503 with Retry-After, and a retried send is stored once."""

from __future__ import annotations

from fastapi.testclient import TestClient

from postroom.api.app import create_app
from postroom.client import Postroom
from postroom.db import create_db_engine
from postroom.schema import downgrade
from tests.api.conftest import MINIMAL, new_key, stored_rows
from tests.servers import postgres_admin


def test_a_send_during_an_outage_answers_503_and_its_retry_is_stored_once(
    postgres_database_url, make_settings
):
    settings = make_settings(database_url=postgres_database_url)
    client = Postroom(settings, publish=lambda stream, ids: None)
    key = new_key(client)
    database = postgres_database_url.rpartition("/")[2]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-1042"}
    admin = postgres_admin()
    try:
        with TestClient(create_app(settings, client=client), headers=headers) as api:
            assert api.get("/v1/messages").status_code == 200  # the key is checked and cached
            # the outage: open connections are cut and new ones refused
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            during = api.post("/v1/messages", json=MINIMAL)
            # the lost connection left the pool: this one is refused while connecting
            refused = api.post("/v1/messages", json=MINIMAL)
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
            retried = api.post("/v1/messages", json=MINIMAL)
            again = api.post("/v1/messages", json=MINIMAL)
    finally:
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        admin.close()

    assert during.status_code == 503, during.text
    assert during.headers["Retry-After"] == "2"
    assert during.json()["error"]["type"] == "DatabaseUnavailable"
    assert "Idempotency-Key" in during.json()["error"]["message"]
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["type"] == "DatabaseUnavailable"
    assert retried.status_code == 202, retried.text
    assert again.status_code == 200 and again.json()["id"] == retried.json()["id"]
    assert stored_rows(client) == (1, 1)
    client.close()


def test_a_database_without_postroom_tables_answers_503_naming_the_migration(
    sqlite_url, make_settings, caplog
):
    engine = create_db_engine(sqlite_url)
    downgrade(engine, "base")
    engine.dispose()
    settings = make_settings(database_url=sqlite_url)
    client = Postroom(settings, publish=lambda stream, ids: None)
    headers = {"Authorization": "Bearer pr_whatever"}
    with TestClient(create_app(settings, client=client), headers=headers) as api:
        listing = api.get("/v1/messages")
    client.close()

    assert listing.status_code == 503, listing.text
    assert listing.json()["error"]["type"] == "DatabaseNotMigrated"
    assert "postroom migrate" in listing.json()["error"]["message"]
    assert "no such table" not in listing.text  # the driver's words go to the log, not the client
    assert "no such table: postroom_api_keys" in caplog.text
