"""``create_app(settings)``: the FastAPI application serving ``/v1``, ``/healthz`` and OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from postroom.api import dev_inbox, health, messages
from postroom.api.errors import install_error_handlers
from postroom.client import Postroom
from postroom.settings import Settings

DESCRIPTION = """\
Durable background email. A message accepted here (**202**) is committed to the outbox before
the answer is sent, and delivered by Celery workers with retries.

Authenticate every `/v1` request with `Authorization: Bearer <api key>`; create keys with
`postroom keys create --name NAME`. Errors share one shape:
`{"error": {"type": ..., "message": ..., "field": ...}}`.
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
    if settings.dev_inbox:
        app.include_router(dev_inbox.router)
    return app
