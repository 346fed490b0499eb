"""The two systems under test behind one shape: postroom, and the seeds' pattern.

Each one enqueues a message, starts worker processes and an HTTP API on the lab's Redis and
a given smtp-sink. The bench drives both through the same calls, in the same run.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.content import SUBJECT, welcome_html
from bench.services import Lab, Proc, SmtpSink, free_port, wait_for_port

READY = " ready."  # what a Celery worker logs once it consumes its queues


class System(Protocol):
    """What the bench needs from a system under test."""

    name: str

    def prepare(self, sink: SmtpSink, *, rate_limit: int | None = None) -> None:
        """Start afresh: an empty outbox and broker, delivering to ``sink``."""

    def send(self, to: str, *, bulk: bool = False, text: str | None = None) -> None:
        """Enqueue one welcome email to ``to``, as an application would.

        ``text``: the plain-text part, where the application renders its own; a system whose
        producer takes only HTML (the seeds') ignores it.
        """

    def send_bulk(self, addresses: list[str]) -> str:
        """Enqueue one email per address on the bulk path; returns the API used."""

    def start_workers(self, *, nodes: int, concurrency: int, beat: bool = False) -> list[Proc]:
        """Start ``nodes`` worker processes of ``concurrency`` children; wait until ready.

        ``beat``: the first node also runs the scheduler, for systems that need one to
        publish deferred work.
        """

    def start_api(self) -> tuple[Proc, str, dict[str, str]]:
        """Start the HTTP API; returns it, its base URL and the request headers to use."""

    def close(self) -> None:
        """Release the producer's connections."""


def payload(to: str) -> dict[str, str]:
    """The JSON body both APIs accept for the welcome email."""
    return {"to": to, "subject": SUBJECT, "html": welcome_html(to)}


def _clean_env(prefix: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}


def _default_transport_name() -> str:
    """The name limits know the transport of ``transport_url`` by."""
    try:
        from postroom.transports.registry import DEFAULT
    except ImportError:  # before named transports, limits were keyed by transport kind
        return "smtp"
    return DEFAULT


@dataclass
class PostroomSystem:
    """postroom as shipped: ``Postroom.send``, ``postroom worker`` and ``postroom api``."""

    lab: Lab
    database: str  # "postgresql" or "sqlite"
    name: str = "postroom"
    _template: str = ""
    _settings: Any = None
    _client: Any = None
    _extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from postroom.db import create_db_engine
        from postroom.schema import upgrade

        # migrate once; each phase starts from a copy (a file copy, or a database TEMPLATE)
        if self.database == "postgresql":
            self._template = self.lab.create_database()
            url = self._template
        else:
            self._template = str(self.lab.root / "postroom-template.db")
            url = f"sqlite:///{self._template}"
        engine = create_db_engine(url)
        upgrade(engine)
        engine.dispose()

    @staticmethod
    def supports_limits() -> bool:
        """Whether this postroom has the global rate limit setting (``POSTROOM_LIMITS``)."""
        from postroom.settings import Settings

        return "limits" in Settings.model_fields

    def prepare(self, sink: SmtpSink, *, rate_limit: int | None = None) -> None:
        from postroom.client import Postroom
        from postroom.settings import Settings

        self.close()
        self.lab.redis().flushall()
        fields: dict[str, Any] = {
            "database_url": self._fresh_database(),
            "broker_url": self.lab.redis_url,
            "transport_url": sink.url,
            "data_dir": str(self.lab.root / "postroom-data"),
        }
        if rate_limit is not None:
            fields["limits"] = {_default_transport_name(): {"rate_per_second": rate_limit}}
        self._settings = Settings(_env_file=None, **fields)
        self._client = Postroom(self._settings)

    def _fresh_database(self) -> str:
        if self.database == "postgresql":
            return self.lab.create_database(template=self._template.rpartition("/")[2])
        path = self.lab.root / f"postroom-{len(os.listdir(self.lab.root))}.db"
        shutil.copyfile(self._template, path)
        return f"sqlite:///{path}"

    def send(self, to: str, *, bulk: bool = False, text: str | None = None) -> None:
        self._client.send(
            to,
            SUBJECT,
            html=welcome_html(to),
            text=text,
            stream="bulk" if bulk else "transactional",
        )

    def send_bulk(self, addresses: list[str]) -> str:
        send_batch = getattr(self._client, "send_batch", None)
        if send_batch is None:
            fallback = "send(..., stream='bulk') loop (no send_batch yet)"
        else:
            messages = (payload(to) for to in addresses)  # built as read, as an app would
            signature = inspect.signature(send_batch)
            try:
                # checked before the call: a TypeError from inside send_batch must not make
                # the bench store the messages a second time through send()
                signature.bind(messages, stream="bulk")
            except TypeError:
                fallback = f"send() loop (send_batch{signature} not driven by bench yet)"
            else:
                result = send_batch(messages, stream="bulk")
                created = getattr(result, "created", len(addresses))
                if created != len(addresses):
                    raise RuntimeError(f"send_batch stored {created} of {len(addresses)}")
                return "Postroom.send_batch(generator, stream='bulk')"
        for to in addresses:
            self.send(to, bulk=True)
        return fallback

    def _env(self) -> dict[str, str]:
        env = _clean_env("POSTROOM_")
        for name, value in self._settings.model_dump(mode="json", exclude_unset=True).items():
            env[f"POSTROOM_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return env

    def _cwd(self) -> Path:
        # a folder without a .env file: the environment is the whole configuration
        cwd = self.lab.root / "postroom-cwd"
        cwd.mkdir(exist_ok=True)
        return cwd

    def start_workers(self, *, nodes: int, concurrency: int, beat: bool = False) -> list[Proc]:
        argv = [sys.executable, "-m", "postroom.cli.main", "worker", f"--concurrency={concurrency}"]
        argv.append("--quiet")
        procs = [
            # messages held back by a limit wait in the database; beat's sweep publishes them
            self.lab.start(
                f"postroom-worker-{k}",
                [*argv, "--beat"] if beat and k == 0 else argv,
                env=self._env(),
                cwd=self._cwd(),
            )
            for k in range(nodes)
        ]
        for proc in procs:
            proc.wait_logged(READY)
        return procs

    def start_api(self) -> tuple[Proc, str, dict[str, str]]:
        from postroom.api_keys import create_key

        with self._client.sessions.begin() as session:
            secret = create_key(session, "bench").secret
        port = free_port()
        # one server process, as the seeds' uvicorn runs: the load generator shares the cores
        argv = [sys.executable, "-m", "postroom.cli.main", "api", "--port", str(port)]
        argv += ["--workers", "1"]
        proc = self.lab.start("postroom-api", argv, env=self._env(), cwd=self._cwd())
        wait_for_port(port, process=proc)
        return proc, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secret}"}

    def close(self) -> None:
        if self._client is not None:
            self._client.celery.close()
            self._client.close()
            self._client = None


@dataclass
class SeedsSystem:
    """The seeds' pattern from ``bench.seeds_app``: ``send_email.delay(...)``, ``celery worker``."""

    lab: Lab
    name: str = "seeds"
    _env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # seeds_app reads its broker from the environment when first imported, as the seeds do
        os.environ["BENCH_SEEDS_BROKER_URL"] = self.lab.redis_url

    def prepare(self, sink: SmtpSink, *, rate_limit: int | None = None) -> None:
        self.lab.redis().flushall()
        self._env = _clean_env("BENCH_SEEDS_") | {
            "BENCH_SEEDS_BROKER_URL": self.lab.redis_url,
            "BENCH_SEEDS_SMTP_HOST": "127.0.0.1",
            "BENCH_SEEDS_SMTP_PORT": str(sink.port),
        }
        if rate_limit is not None:
            self._env["BENCH_SEEDS_RATE_LIMIT"] = f"{rate_limit}/s"

    def send(self, to: str, *, bulk: bool = False, text: str | None = None) -> None:
        from bench.seeds_app import send_email

        # one queue for everything: the seeds have no separate bulk path
        send_email.delay(to, SUBJECT, welcome_html(to))

    def send_bulk(self, addresses: list[str]) -> str:
        # seed 003:49-54: the bulk task "uses individual RSVP email tasks for each participant"
        for to in addresses:
            self.send(to, bulk=True)
        return ".delay() per recipient (seed 003:49-54)"

    def start_workers(self, *, nodes: int, concurrency: int, beat: bool = False) -> list[Proc]:
        # Celery's rate_limit holds tasks in the worker itself: the seeds need no scheduler
        procs = []
        for k in range(nodes):
            argv = [sys.executable, "-m", "celery", "-A", "bench.seeds_app", "worker"]
            # -n: two workers on one host need distinct node names (000:349-356 runs two)
            argv += ["--loglevel=info", f"--concurrency={concurrency}", f"--hostname=seeds{k}@%h"]
            procs.append(self.lab.start(f"seeds-worker-{k}", argv, env=self._env))
        for proc in procs:
            proc.wait_logged(READY)
        return procs

    def start_api(self) -> tuple[Proc, str, dict[str, str]]:
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "bench.seeds_api:api", "--port", str(port)]
        proc = self.lab.start("seeds-api", argv, env=self._env)
        wait_for_port(port, process=proc)
        return proc, f"http://127.0.0.1:{port}", {}

    def close(self) -> None:
        from bench.seeds_app import app

        app.close()
