"""Bearer API keys: every ``/v1`` route depends on ``require_api_key``.

A key found live in the database is trusted for ``KEY_CACHE_SECONDS`` by the API process that
checked it, so most requests authenticate without a database round trip. The price: a key
revoked meanwhile keeps working in that process for at most ``KEY_CACHE_SECONDS`` after the
revocation commits. The cache is keyed by the key's SHA-256 digest; the key itself is never kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from postroom import api_keys
from postroom.api.errors import NotAuthenticated
from postroom.api_keys import ApiKey
from postroom.client import Postroom

# Short enough that a revoked key stops working about as soon as an operator can check, long
# enough that a busy client's requests share one lookup.
KEY_CACHE_SECONDS = 5.0

# auto_error=False: a missing header must answer in the API's error shape, with
# WWW-Authenticate, like a wrong key does; the scheme still appears in OpenAPI.
bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="pr_...",
    description="An API key from `postroom keys create --name NAME`.",
)


class KeyCache:
    """Live API keys by digest, each trusted for ``seconds`` after the database said so.

    A key revoked in the database is refused at most ``seconds`` after the revocation commits;
    ``seconds=0`` checks the database on every request. Only live keys are kept: a key created
    meanwhile works at once, and a flood of wrong keys cannot fill the cache. ``clock`` gives
    monotonic seconds. Used from the event loop only, so it needs no lock.
    """

    def __init__(
        self,
        seconds: float = KEY_CACHE_SECONDS,
        *,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self._max_keys = max_keys
        self._keys: dict[str, tuple[float, ApiKey]] = {}

    def get(self, digest: str) -> ApiKey | None:
        """The key cached under ``digest`` if it is still trusted, else ``None``."""
        entry = self._keys.get(digest)
        if entry is None:
            return None
        until, key = entry
        if self.clock() >= until:
            del self._keys[digest]
            return None
        return key

    def put(self, digest: str, key: ApiKey, *, checked_at: float) -> None:
        """Trust ``key`` until ``seconds`` after ``checked_at``, when its lookup began."""
        if self.seconds <= 0:
            return
        if digest not in self._keys and len(self._keys) >= self._max_keys:
            # dicts keep insertion order: drop the key cached longest ago
            del self._keys[next(iter(self._keys))]
        self._keys[digest] = (checked_at + self.seconds, key)


async def get_client(request: Request) -> Postroom:
    """The client ``create_app`` was given."""
    # async: a plain function would cost a worker thread round trip on every request
    client = request.app.state.client
    assert isinstance(client, Postroom)
    return client


ClientDep = Annotated[Postroom, Depends(get_client)]


def _find_live_key(client: Postroom, digest: str) -> ApiKey | None:
    with client.sessions() as session:
        return api_keys.find_live_key(session, digest)


async def require_api_key(
    request: Request,
    client: ClientDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    """The live key the request presents; ``NotAuthenticated`` (401) otherwise."""
    if credentials is None:
        raise NotAuthenticated()
    cache = request.app.state.key_cache
    assert isinstance(cache, KeyCache)
    # A dict lookup by digest leaks no timing worth having: finding a digest's neighbours
    # tells nothing about the keys that hash to them.
    digest = api_keys.key_digest(credentials.credentials)
    key = cache.get(digest)
    if key is None:
        # Taken before the lookup: a revocation the lookup missed committed after this moment,
        # so the key is refused within ``seconds`` of it.
        checked_at = cache.clock()
        key = await run_in_threadpool(_find_live_key, client, digest)
        if key is None:
            raise NotAuthenticated()
        cache.put(digest, key, checked_at=checked_at)
    return key
