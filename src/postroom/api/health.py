"""``/healthz``: whether this API process can reach its database (no authentication)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from postroom.api.auth import ClientDep
from postroom.api.schemas import Health

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Check that the API can reach its database",
    responses={503: {"model": Health, "description": "The database did not answer"}},
)
def healthz(client: ClientDep) -> JSONResponse:
    """**200** `{"status": "ok"}` when a trivial query succeeds, **503** otherwise.

    Needs no API key, so load balancers and orchestrators can probe it.
    """
    try:
        with client.sessions() as session:
            session.execute(select(1))
    except SQLAlchemyError as error:
        # Only the class name: the message of a connection error can name hosts and users.
        logger.warning("health check failed: database unavailable (%s)", type(error).__name__)
        return JSONResponse(Health(status="unavailable").model_dump(), status_code=503)
    return JSONResponse(Health(status="ok").model_dump())
