"""Fixtures: settings and a migrated database (SQLite and PostgreSQL), real servers, a client."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from postroom.client import Postroom
from postroom.db import create_db_engine
from postroom.schema import upgrade
from postroom.settings import Settings
from postroom.transports.memory import mailbox
from tests.servers import (
    RedisServer,
    SmtpSink,
    postgres_admin,
    postgres_url,
    unique_name,
)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is much faster)."""
    path = tmp_path_factory.mktemp("template") / "postroom.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template of each test's database."""
    admin = postgres_admin()
    name = unique_name("postroom_template")
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        engine = create_db_engine(postgres_url(name))
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _sqlite_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    template: Path = request.getfixturevalue("sqlite_template")
    path = tmp_path / "postroom.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def _postgres_database(request: pytest.FixtureRequest) -> str:
    template: str = request.getfixturevalue("postgres_template")
    admin = postgres_admin()
    name = unique_name("postroom_test")
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    request.addfinalizer(drop)
    return postgres_url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated database of each supported kind."""
    if request.param == "sqlite":
        return _sqlite_database(request, tmp_path)
    return _postgres_database(request)


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated SQLite database, for tests whose subject is not the database."""
    return _sqlite_database(request, tmp_path)


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest) -> str:
    """A freshly migrated PostgreSQL database."""
    return _postgres_database(request)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Factory: settings isolated from the environment, with fast retries."""

    def make(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / ".postroom",
            "transport_url": f"memory://{tmp_path.name}",
            "retry": {"max_attempts": 3, "base_delay_seconds": 0.2, "max_delay_seconds": 1.0},
            **overrides,
        }
        return Settings(_env_file=None, **fields)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url)


class Published(list[tuple[str, list[str]]]):
    """Every (stream, ids) a client published, in order."""

    @property
    def ids(self) -> list[str]:
        return [i for _, ids in self for i in ids]


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def client(settings: Settings, published: Published) -> Iterator[Postroom]:
    """A client on a fresh database that records what it would publish instead of using a broker."""
    postroom = Postroom(settings, publish=lambda stream, ids: published.append((stream, ids)))
    yield postroom
    postroom.close()


@pytest.fixture
def outbox(settings: Settings) -> list[Any]:
    """The memory transport's mailbox for this test's settings."""
    box = mailbox(settings.transport_url.removeprefix("memory://"))
    box.clear()
    return box


@pytest.fixture
def session(client: Postroom) -> Iterator[Session]:
    with client.sessions() as db_session:
        yield db_session


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway Redis server on a free port (no persistence)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on a free port that records every message."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()
