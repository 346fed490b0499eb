"""Every error the API answers with, translated in one place into one body shape.

``{"error": {"type": "InvalidAddress", "message": "to[0]: ...", "field": "to[0]"}}``

Keys without a value are left out; a template error adds where it happened:
``"template": {"name": "welcome", "version": 3, "line": 7}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from postroom.api.schemas import ErrorDetail, ErrorResponse, FieldError, TemplateLocation
from postroom.database_errors import translated
from postroom.errors import (
    DatabaseNotMigrated,
    DatabaseUnavailable,
    InvalidTransition,
    MessageNotFound,
    MessageRejected,
    TemplateError,
    TemplateNotFound,
)

logger = logging.getLogger(__name__)


class NotAuthenticated(Exception):
    """The request carries no API key, or one that is unknown or revoked."""

    def __init__(self) -> None:
        # Deliberately vague and never echoes the key: which keys exist is none of the caller's
        # business.
        super().__init__("a valid API key is required: Authorization: Bearer <key>")


STATUS_BY_ERROR: dict[type[Exception], int] = {
    MessageRejected: 422,
    MessageNotFound: 404,
    TemplateNotFound: 404,
    InvalidTransition: 409,
    NotAuthenticated: 401,
}

# What a client waits before retrying when the database did not answer.
DATABASE_RETRY_AFTER_SECONDS = 2

_DATABASE_UNAVAILABLE: dict[str, Any] = {
    "model": ErrorResponse,
    "description": (
        "The database did not answer (`DatabaseUnavailable`) or lacks postroom's tables"
        " (`DatabaseNotMigrated`); retry after `Retry-After` seconds"
    ),
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "example": DATABASE_RETRY_AFTER_SECONDS},
        }
    },
}
# The statuses each kind of endpoint can answer besides success, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{
        status: {"model": ErrorResponse, "description": HTTPStatus(status).phrase}
        for status in (401, 404, 409, 415, 422)
    },
    503: _DATABASE_UNAVAILABLE,
}
# What every endpoint behind an API key can answer besides its own: the key is read from the
# database, so even an endpoint that reads no rows itself answers 503 when it is down.
KEYED_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    503: ERROR_RESPONSES[503],
}


def error_response(
    status: int,
    error_type: str,
    message: str,
    *,
    field: str | None = None,
    errors: list[FieldError] | None = None,
    template: TemplateLocation | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON answer in the API's one error shape."""
    body = ErrorResponse(
        error=ErrorDetail(
            type=error_type, message=message, field=field, errors=errors, template=template
        )
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def field_path(location: Sequence[int | str]) -> str:
    """``("body", "to", 0)`` as ``to[0]``; the part of the request (body, query) is dropped."""
    parts = list(location[1:]) if len(location) > 1 else list(location)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def public_name(error_class: type[Exception]) -> str:
    """The name of the nearest public class: a module's private subclass is no API type."""
    return next(cls.__name__ for cls in error_class.__mro__ if not cls.__name__.startswith("_"))


def _handle_postroom_error(request: Request, error: Exception) -> JSONResponse:
    status = next(code for cls, code in STATUS_BY_ERROR.items() if isinstance(error, cls))
    field = error.field if isinstance(error, MessageRejected) else None
    template = None
    if isinstance(error, TemplateError) and error.template is not None:
        template = TemplateLocation(name=error.template, version=error.version, line=error.line)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, NotAuthenticated) else None
    return error_response(
        status,
        public_name(type(error)),
        str(error),
        field=field,
        template=template,
        headers=headers,
    )


def _handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [
        # A JSON syntax error's location is a character offset, not a field.
        FieldError(
            field="body" if problem["type"] == "json_invalid" else field_path(problem["loc"]),
            message=str(problem["msg"]),
        )
        for problem in error.errors()
    ]
    first = problems[0]
    return error_response(
        422,
        "InvalidRequest",
        f"{first.field}: {first.message}",
        field=first.field,
        errors=problems,
    )


def _handle_http_error(request: Request, error: Exception) -> JSONResponse:
    # Starlette's own answers (unknown path, wrong method) get the same shape as ours.
    assert isinstance(error, HTTPException)
    phrase = HTTPStatus(error.status_code).phrase
    return error_response(
        error.status_code,
        phrase.replace(" ", "").replace("-", ""),
        str(error.detail),
        headers=error.headers,
    )


def _handle_database_error(request: Request, error: Exception) -> JSONResponse:
    # Lost or refused connections, a locked SQLite file, a failover, a migration not yet run:
    # retrying can succeed, so the answer says so (a 500 says the request itself broke
    # something). Only the driver's class is logged: its message can name hosts and users, and
    # SQLAlchemy's adds the SQL.
    ours = (
        error if isinstance(error, DatabaseUnavailable | DatabaseNotMigrated) else translated(error)
    )
    if ours is None:
        return _handle_unexpected(request, error)
    retry_after = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
    if isinstance(ours, DatabaseNotMigrated):
        logger.error("%s %s: %s", request.method, request.url.path, ours)
        return error_response(
            503,
            "DatabaseNotMigrated",
            "the database lacks postroom's tables; the operator must run `postroom migrate`",
            headers=retry_after,
        )
    assert isinstance(ours, DatabaseUnavailable)
    logger.warning(
        "database unavailable in %s %s: %s", request.method, request.url.path, ours.driver_error
    )
    return error_response(
        503,
        "DatabaseUnavailable",
        "the database is unavailable; retry later (a send retried with the same "
        "Idempotency-Key is stored once)",
        headers=retry_after,
    )


def _handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    # The exception text can hold SQL, parameters or connection details: log it, never answer it.
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "InternalError", "an internal error occurred; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` can raise answer in the shape above."""
    for error_class in STATUS_BY_ERROR:
        app.add_exception_handler(error_class, _handle_postroom_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(HTTPException, _handle_http_error)
    for database_error in (DBAPIError, PoolTimeout, DatabaseUnavailable, DatabaseNotMigrated):
        app.add_exception_handler(database_error, _handle_database_error)
    app.add_exception_handler(Exception, _handle_unexpected)
