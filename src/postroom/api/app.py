"""``create_app(settings)``: the FastAPI application serving ``/v1``, ``/healthz`` and OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from postroom.api import dev_inbox, health, messages, templates
from postroom.api.errors import install_error_handlers
from postroom.api.schemas import SendRequest
from postroom.client import Postroom
from postroom.settings import Settings

DESCRIPTION = """\
Durable background email. A message accepted here (**202**) is committed to the outbox before
the answer is sent, and delivered by Celery workers with retries.

Authenticate every `/v1` request with `Authorization: Bearer <api key>`; create keys with
`postroom keys create --name NAME`. Errors share one shape:
`{"error": {"type": ..., "message": ..., "field": ...}}`; template errors add
`"template": {"name": ..., "version": ..., "line": ...}`.
"""


def create_app(settings: Settings, *, client: Postroom | None = None) -> FastAPI:
    """The API on ``settings``; ``client`` replaces the one built from them (tests, embedding)."""
    owned = client is None
    postroom = client if client is not None else Postroom(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
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
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(messages.router)
    app.include_router(templates.router)
    if settings.dev_inbox:
        app.include_router(dev_inbox.router)
    _document_schemas(app, [SendRequest])
    return app


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
