"""Throwaway services for one bench run, and the processes it starts, all stopped at the end.

``Lab`` owns everything: a temporary folder, one ``redis-server`` without persistence,
PostgreSQL databases named ``postroom_bench_<random>`` on the local server (dropped again),
Postfix ``smtp-sink`` instances and every worker or API process. Each process runs in its own
session, so stopping it signals its whole group (Celery's pool children included), and a
Ctrl-C at the terminal reaches only the bench, which then stops them itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMTP_SINK_CACHE = REPO / "bench" / ".cache" / "postfix"
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STOP_TIMEOUT = 10.0
_COUNTER = re.compile(rb"mesg=(\d+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 30.0, process: Proc | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if process is not None and process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited: see {process.log_path}") from None
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Proc:
    """A started process: the leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_logged(self, marker: str, *, timeout: float = 60.0) -> None:
        """Block until ``marker`` appears in the process's output (Celery's ``ready.``)."""
        deadline = time.monotonic() + timeout
        while marker not in self.log():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {marker!r} after {timeout}s")
            time.sleep(0.02)

    def members(self) -> list[int]:
        """Live pids of the group: the leader, pool children and anything they forked."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # the fields after the parenthesised command: state, ppid, pgrp, ...
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == self.popen.pid and fields[0] not in {"Z", "X"}:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Ask the group to stop (SIGTERM: Celery's warm shutdown), then SIGKILL what is left."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        # pool children can outlive their leader; the group still names them
        self._signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.members() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


@dataclass(frozen=True)
class Usage:
    """CPU seconds and memory of a set of processes at one moment."""

    cpu_seconds: float
    rss_bytes: int
    pss_bytes: int
    processes: int


def process_usage(pids: list[int]) -> Usage:
    """CPU (own and reaped children's) and RSS/PSS summed over ``pids``, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = 0.0
    rss = pss = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            # utime, stime, cutime, cstime: fields 14-17, i.e. 11-14 after the command
            cpu += sum(int(value) for value in stat[11:15]) / ticks
            rss += _kib_field(Path(f"/proc/{pid}/status"), "VmRSS:") * 1024
            pss += _kib_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") * 1024
        except OSError:
            continue  # exited in between
    return Usage(cpu, rss, pss, len(pids))


def _kib_field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle by the whole machine since boot (all CPUs)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    # guest time is already counted in user time
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def find_smtp_sink() -> tuple[Path, dict[str, str]]:
    """The smtp-sink binary and the environment it needs (its libraries, when unpacked)."""
    installed = Path("/usr/sbin/smtp-sink")
    if installed.exists():
        return installed, {}
    cached = SMTP_SINK_CACHE / "usr" / "sbin" / "smtp-sink"
    if cached.exists():
        return cached, {"LD_LIBRARY_PATH": str(SMTP_SINK_CACHE / "usr" / "lib" / "postfix")}
    raise RuntimeError(
        "smtp-sink is not installed: run scripts/install-smtp-sink (make bench does)"
    )


@dataclass
class SmtpSink:
    """A Postfix ``smtp-sink`` on a free port; counts messages and optionally dumps each one."""

    proc: Proc
    port: int
    dump_dir: Path | None
    _seen: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def count(self) -> int:
        """Messages received so far, from smtp-sink's ``-c`` counter (``mesg=N``) on stdout."""
        with self.proc.log_path.open("rb") as out:
            out.seek(max(0, out.seek(0, os.SEEK_END) - 256))
            found = _COUNTER.findall(out.read())
        return int(found[-1]) if found else 0

    def new_arrivals(self) -> list[tuple[str, float]]:
        """(recipient, arrival time) of each dumped message not returned before.

        The arrival time is the dump file's modification time: smtp-sink writes the file as
        the DATA arrives, so its last write is the end of the message (wall clock).
        """
        assert self.dump_dir is not None, "start the sink with dump=True"
        arrivals = []
        for entry in os.scandir(self.dump_dir):
            if entry.name in self._seen:
                continue
            path = Path(entry.path)
            with path.open("rb") as dump:
                head = dump.read(2048)
            match = re.search(rb"^X-Rcpt-Args: <([^>]*)>", head, re.MULTILINE)
            if match is None:
                continue  # still being written: its headers come first, so check next time
            self._seen.add(path.name)
            arrivals.append((match.group(1).decode(), path.stat().st_mtime))
        return arrivals


@dataclass
class Lab:
    """Everything one bench run starts; ``close()`` stops and removes it all."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="postroom-bench-")))
    procs: list[Proc] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    redis_url: str = ""
    _closed: bool = False

    def __enter__(self) -> Lab:
        atexit.register(self.close)
        # SIGTERM/SIGHUP would end the bench without running finally blocks; make them exit
        # through the normal path instead, so every process and database is cleaned up.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _exit_on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> Proc:
        """Start ``argv`` in its own session, its output going to a log file."""
        log_path = self.root / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def start_redis(self) -> str:
        """One ``redis-server`` for the run, without persistence; returns its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/start-services")
        port = free_port()
        directory = self.root / "redis"
        directory.mkdir()
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
        argv += ["--save", "", "--appendonly", "no"]
        wait_for_port(port, process=self.start("redis", argv))
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url)

    def start_smtp_sink(self, *, dump: bool = False) -> SmtpSink:
        """A fresh smtp-sink (counter at zero); ``dump`` also keeps each message as a file."""
        binary, extra_env = find_smtp_sink()
        port = free_port()
        argv = [str(binary), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep running as root
        dump_dir = None
        if dump:
            dump_dir = self.root / f"dump-{port}"
            dump_dir.mkdir()
            # written by "nobody" after the switch, which must also get through the lab folder
            dump_dir.chmod(0o777)
            self.root.chmod(0o711)
            # no strftime fields: every dump lands directly in dump_dir under a random name
            argv += ["-d", f"{dump_dir}/"]
        # a deep listen backlog: the seeds open a new connection per message
        argv += [f"127.0.0.1:{port}", "1000"]
        proc = self.start("smtp-sink", argv, env={**os.environ, **extra_env})
        wait_for_port(port, process=proc)
        return SmtpSink(proc, port, dump_dir)

    def create_database(self, template: str | None = None) -> str:
        """A new PostgreSQL database ``postroom_bench_<random>`` (from ``template``); its URL."""
        import psycopg

        name = f"postroom_bench_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"{clause}')
        self.databases.append(name)
        return f"{POSTGRES_ADMIN_URL.rpartition('/')[0]}/{name}"

    def close(self) -> None:
        """Stop every process (newest first), drop every database, remove the folder."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        if self.databases:
            self._drop_databases()
        shutil.rmtree(self.root, ignore_errors=True)

    def _drop_databases(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            for name in self.databases:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.clear()


def postgres_available() -> str | None:
    """None when the local PostgreSQL server answers; otherwise why not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3):
            return None
    except Exception as error:
        return f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {type(error).__name__}"


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
