"""Serving the API: how many threads do its blocking work."""

from __future__ import annotations

from anyio import to_thread


def test_blocking_work_runs_on_as_many_threads_as_the_pool_keeps_connections(api, client):
    async def thread_tokens() -> float:
        return to_thread.current_default_thread_limiter().total_tokens

    # more threads would each wait for a connection, or open and close an overflow one
    assert api.portal is not None
    assert api.portal.call(thread_tokens) == client.sessions.kw["bind"].pool.size()
