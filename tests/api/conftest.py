"""Fixtures for the REST API: an app on the test client, an API key, a way to vary settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from postroom import api_keys
from postroom.api.app import create_app
from postroom.client import Postroom
from postroom.events import MessageEvent
from postroom.messages import Message
from postroom.settings import Settings
from tests.conftest import Published

# Most API behaviour does not depend on the database kind; test files whose subject does
# leave this off and run on both.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MINIMAL = {"to": "ada@example.com", "subject": "Hello", "text": "Hi Ada"}


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_key(client: Postroom, name: str = "tests") -> str:
    """Create an API key in the client's database and return the secret."""
    with client.sessions.begin() as session:
        return api_keys.create_key(session, name).secret


def stored_rows(client: Postroom) -> tuple[int, int]:
    """How many messages and events the client's database holds."""
    with client.sessions() as session:
        messages = session.scalar(select(func.count()).select_from(Message))
        events = session.scalar(select(func.count()).select_from(MessageEvent))
    return messages or 0, events or 0


@pytest.fixture
def api_key(client: Postroom) -> str:
    return new_key(client)


@pytest.fixture
def api(client: Postroom, settings: Settings, api_key: str) -> Iterator[TestClient]:
    """The API on the ``client`` fixture, authenticated with a live key."""
    with TestClient(
        create_app(settings, client=client), headers={"Authorization": f"Bearer {api_key}"}
    ) as test_client:
        yield test_client


@pytest.fixture
def make_api(
    make_settings: Callable[..., Settings], database_url: str, published: Published, api_key: str
) -> Iterator[Callable[..., TestClient]]:
    """Factory: the API on settings overridden with ``**fields``, same database and key."""
    opened: list[tuple[Postroom, TestClient]] = []

    def make(**fields: Any) -> TestClient:
        settings = make_settings(database_url=database_url, **fields)
        client = Postroom(settings, publish=lambda stream, ids: published.append((stream, ids)))
        test_client = TestClient(
            create_app(settings, client=client), headers={"Authorization": f"Bearer {api_key}"}
        )
        opened.append((client, test_client))
        return test_client

    yield make
    for client, test_client in opened:
        test_client.close()
        client.close()
