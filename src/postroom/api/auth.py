"""Bearer API keys: every ``/v1`` route depends on ``require_api_key``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from postroom import api_keys
from postroom.api.errors import NotAuthenticated
from postroom.api_keys import ApiKey
from postroom.client import Postroom

# auto_error=False: a missing header must answer in the API's error shape, with
# WWW-Authenticate, like a wrong key does; the scheme still appears in OpenAPI.
bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="pr_...",
    description="An API key from `postroom keys create --name NAME`.",
)


def get_client(request: Request) -> Postroom:
    """The client ``create_app`` was given."""
    client = request.app.state.client
    assert isinstance(client, Postroom)
    return client


ClientDep = Annotated[Postroom, Depends(get_client)]


def require_api_key(
    client: ClientDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """The live key the request presents; ``NotAuthenticated`` (401) otherwise."""
    if credentials is None:
        raise NotAuthenticated()
    with client.sessions() as session:
        key = api_keys.authenticate(session, credentials.credentials)
    if key is None:
        raise NotAuthenticated()
    return key
