"""Serving the API: how many processes and threads, and that several processes serve alike."""

from __future__ import annotations

import contextlib
import os
import re
import signal

import httpx
import pytest
from anyio import to_thread

from postroom.api.app import MAX_DEFAULT_WORKERS, default_workers
from tests.api.conftest import MINIMAL, new_key
from tests.integration.conftest import ApiProcess, start_postroom
from tests.servers import free_port


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_process_serves_sqlite(settings):
    assert default_workers(settings) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_one_process_per_cpu_up_to_a_limit_serves_postgresql(settings):
    assert default_workers(settings) == min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


def test_blocking_work_runs_on_as_many_threads_as_the_pool_keeps_connections(api, client):
    async def thread_tokens() -> float:
        return to_thread.current_default_thread_limiter().total_tokens

    # more threads would each wait for a connection, or open and close an overflow one
    assert api.portal is not None
    assert api.portal.call(thread_tokens) == client.sessions.kw["bind"].pool.size()


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_several_processes_serve_with_the_settings_of_the_command(
    settings, client, redis_server, tmp_path
):
    served = settings.model_copy(update={"broker_url": redis_server.url})
    key = new_key(client)
    port = free_port()
    log_path = tmp_path / "api.log"
    arguments = ["api", "--workers", "2", "--port", str(port)]
    process = start_postroom(arguments, served, cwd=tmp_path, log_path=log_path)
    try:
        base_url = f"http://127.0.0.1:{port}"
        ApiProcess(process, base_url, log_path).wait_ready()
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
            accepted = http.post("/v1/messages", json=MINIMAL)
            read_back = http.get(f"/v1/messages/{accepted.json()['id']}")
            refused = http.get("/v1/messages", headers={"Authorization": "Bearer pr_unknown"})
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    assert accepted.status_code == 202
    assert read_back.status_code == 200
    assert read_back.json()["to"] == ["ada@example.com"]
    assert refused.status_code == 401
    assert process.returncode == 0
    log = log_path.read_text()
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2, log
    assert key not in log
