"""``create_app(settings)``: the FastAPI application serving ``/v1``, ``/healthz`` and OpenAPI."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from anyio import to_thread
from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from postroom.api import dev_inbox, health, messages, templates
from postroom.api.auth import KeyCache
from postroom.api.errors import install_error_handlers
from postroom.api.schemas import SendRequest
from postroom.client import Postroom
from postroom.db import normalize_database_url
from postroom.settings import Settings

DESCRIPTION = """\
Durable background email. A message accepted here (**202**) is committed to the outbox before
the answer is sent, and delivered by Celery workers with retries.

Authenticate every `/v1` request with `Authorization: Bearer <api key>`; create keys with
`postroom keys create --name NAME`. Each API process trusts a key it has checked for a few
seconds (5 by default), so a revoked key is refused within that time. Errors share one shape:
`{"error": {"type": ..., "message": ..., "field": ...}}`; template errors add
`"template": {"name": ..., "version": ..., "line": ...}`.
"""


def create_app(
    settings: Settings, *, client: Postroom | None = None, key_cache: KeyCache | None = None
) -> FastAPI:
    """The API on ``settings``; ``client`` replaces the one built from them (tests, embedding).

    ``key_cache`` replaces the default cache of checked API keys (``KeyCache()``: trusted for
    ``KEY_CACHE_SECONDS``); ``KeyCache(0)`` checks the database on every request.
    """
    owned = client is None
    postroom = client if client is not None else Postroom(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Every blocking call of this API (sync routes, key lookups, sends) holds a database
        # connection. More threads than the pool keeps would only wait for one, or open an
        # overflow connection and close it again on every burst (a new PostgreSQL backend each
        # time); and under the GIL more threads run no more Python at once.
        threads = _pooled_connections(postroom)
        if threads is not None:
            to_thread.current_default_thread_limiter().total_tokens = threads
        yield
        # A client passed in belongs to the caller, who closes it.
        if owned:
            postroom.close()

    app = FastAPI(
        title="postroom",
        version=version("postroom"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.client = postroom
    app.state.key_cache = key_cache if key_cache is not None else KeyCache()
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(messages.router)
    app.include_router(templates.router)
    if settings.dev_inbox:
        app.include_router(dev_inbox.router)
    _document_schemas(app, [SendRequest])
    return app


def create_app_from_env() -> FastAPI:
    """The API on settings from ``POSTROOM_*`` variables and ``.env``: an ASGI app factory.

    For servers that import the app in each of their processes, such as
    ``uvicorn --factory postroom.api.app:create_app_from_env`` (what ``postroom api --workers``
    runs).
    """
    return create_app(Settings())


MAX_DEFAULT_WORKERS = 4


def default_workers(settings: Settings) -> int:
    """How many server processes suit the database: what ``postroom api`` runs by default.

    One process runs Python on one CPU at a time, so on PostgreSQL there is one per CPU, up to
    ``MAX_DEFAULT_WORKERS``: each keeps its own pool of connections, and PostgreSQL allows 100
    by default. SQLite takes one writer at a time: more processes would only queue for its lock.
    """
    if make_url(normalize_database_url(settings.database_url)).get_backend_name() == "sqlite":
        return 1
    return min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def _pooled_connections(client: Postroom) -> int | None:
    """How many connections the client's database pool keeps open; None if it has no such size."""
    bind = client.sessions.kw.get("bind")
    pool = bind.pool if isinstance(bind, Engine) else None
    return pool.size() if isinstance(pool, QueuePool) else None


def _document_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add ``models`` to the OpenAPI components.

    A body the handler reads itself (JSON or multipart) is no parameter FastAPI can see; its
    ``openapi_extra`` refers to the schema by name, and this puts the schema there.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _, definitions = models_json_schema(
            [(model, "validation") for model in models],
            ref_template="#/components/schemas/{model}",
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in definitions.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
