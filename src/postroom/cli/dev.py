"""``postroom dev``: broker, worker with beat, API and dev inbox, supervised by one command."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session

from postroom import api_keys
from postroom.cli.main import err_console, exits_on_errors, fail, state
from postroom.cli.services import LogLevel
from postroom.client import Postroom
from postroom.db import create_db_engine
from postroom.devinbox import DevInbox
from postroom.embedded_redis import redis_child
from postroom.settings import Settings, redact_url
from postroom.supervisor import ChildFailed, ChildSpec, Interrupted, Supervisor

console = Console()

DEV_KEY_FILE = "dev-api-key"
DEV_KEY_NAME = "postroom dev"
CHILD_FAILED_EXIT = 1
FIRST_EMAIL = '{"to": "you@example.com", "subject": "Hello from postroom", "text": "It works."}'


def dev_transport_url(settings: Settings) -> str:
    """The transport the worker uses: the dev inbox, unless a transport was configured."""
    if "transport_url" in settings.model_fields_set:
        return settings.transport_url
    return f"smtp://127.0.0.1:{settings.dev_inbox_port}"


def api_base_url(settings: Settings) -> str:
    """Where a local client reaches the API (a wildcard bind address is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(
        settings.api_host, settings.api_host
    )
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of the worker and the API: the same settings, resolved once here."""
    return {
        **os.environ,
        # Absolute, so a child's working folder cannot move the broker socket or the inbox.
        "POSTROOM_DATA_DIR": str(settings.data_dir.resolve()),
        "POSTROOM_DATABASE_URL": settings.database_url,
        "POSTROOM_BROKER_URL": settings.resolved_broker_url,
        "POSTROOM_TRANSPORT_URL": dev_transport_url(settings),
        "POSTROOM_DEV_INBOX": "true",
        "POSTROOM_DEV_INBOX_PORT": str(settings.dev_inbox_port),
    }


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        # The mode given to open() applies only to a new file; an old one may be looser.
        os.fchmod(file.fileno(), 0o600)
        file.write(text)


def ensure_dev_key(settings: Settings) -> str:
    """The dev API key stored in the data folder if it still authenticates, else a new one."""
    path = settings.data_dir / DEV_KEY_FILE
    engine = create_db_engine(settings.database_url)
    try:
        with Session(engine) as session:
            if path.is_file():
                secret = path.read_text().strip()
                if secret and api_keys.authenticate(session, secret) is not None:
                    return secret
            new = api_keys.create_key(session, DEV_KEY_NAME)
            session.commit()
    finally:
        engine.dispose()
    _write_private(path, new.secret + "\n")
    return new.secret


def migrate(settings: Settings) -> None:
    """Bring the configured database to the newest schema."""
    # Here, not at the top: every process that loads the CLI, workers included, would carry
    # Alembic (~8 MiB) and httpx below, which only `postroom dev` itself uses.
    from postroom.schema import upgrade

    engine = create_db_engine(settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def check_port_free(host: str, port: int, *, setting: str) -> None:
    """Fail with a clear message when something already listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers themselves do: connections of a previous run in TIME_WAIT don't count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise fail(
                f"{host}:{port} is not available ({error.strerror}); "
                f"stop what uses it or set {setting}"
            ) from None


def _worker_answers(client: Postroom) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return bool(client.celery.control.ping(timeout=0.5, limit=1))
        except Exception:
            # Any broker error while the worker starts only means "not yet".
            return False

    return ready


def _api_answers(base_url: str) -> Callable[[], bool]:
    import httpx  # see migrate()

    def ready() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def _postroom_argv(*args: str) -> list[str]:
    # The same interpreter, so the children run this very installation of postroom.
    return [sys.executable, "-m", "postroom", *args]


def _status(line: str) -> None:
    console.print(f"[dim]postroom dev:[/] {escape(line)}", highlight=False)


def _start_everything(
    supervisor: Supervisor, settings: Settings, *, worker_loglevel: LogLevel
) -> None:
    env = child_env(settings)
    if settings.broker_url:
        _status(f"using the configured broker {redact_url(settings.broker_url)}")
    else:
        supervisor.start(redis_child(settings.data_dir, settings.embedded_broker_socket))

    inbox = DevInbox(settings.dev_inbox_dir, host="127.0.0.1", port=settings.dev_inbox_port)
    inbox.start()
    supervisor.push_cleanup("dev inbox", inbox.stop)
    _status(f"dev inbox listening on smtp://127.0.0.1:{settings.dev_inbox_port}")

    client = Postroom(settings)
    try:
        supervisor.start(
            ChildSpec(
                name="worker",
                argv=_postroom_argv(
                    "worker", "--beat", "--quiet", f"--loglevel={worker_loglevel.value}"
                ),
                env=env,
                ready=_worker_answers(client),
                ready_timeout=60.0,
                # Warm shutdown lets tasks in flight finish and record their outcome.
                stop_timeout=20.0,
            )
        )
    finally:
        client.celery.close()
        client.close()

    supervisor.start(
        ChildSpec(
            name="api",
            argv=_postroom_argv(
                "api", "--host", settings.api_host, "--port", str(settings.api_port)
            ),
            env=env,
            ready=_api_answers(api_base_url(settings)),
            ready_timeout=60.0,
        )
    )


def first_email_curl(base_url: str, key: str) -> str:
    """A copy-paste ``curl`` that sends a first email through the API."""
    return (
        f"curl -s -X POST {base_url}/v1/messages -H {shlex.quote(f'Authorization: Bearer {key}')} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(FIRST_EMAIL)}"
    )


def _print_banner(settings: Settings, key: str) -> None:
    base_url = api_base_url(settings)
    key_path = settings.data_dir / DEV_KEY_FILE
    auth = shlex.quote(f"Authorization: Bearer {key}")
    console.print()
    console.print("[bold green]postroom dev is running[/]")
    rows = [
        ("API", f"{base_url}  (OpenAPI docs at {base_url}/docs)"),
        ("database", redact_url(settings.database_url)),
        ("broker", redact_url(settings.resolved_broker_url)),
        ("transport", redact_url(dev_transport_url(settings))),
        ("dev inbox", f"smtp://127.0.0.1:{settings.dev_inbox_port} -> {settings.dev_inbox_dir}"),
        ("API key", f"{key}  (kept in {key_path})"),
    ]
    for label, value in rows:
        console.print(f"  [bold]{label:<10}[/] {escape(value)}", soft_wrap=True, highlight=False)
    console.print("\nSend a first email:")
    # soft_wrap: the line must stay whole to be copied, whatever the terminal's width.
    console.print(first_email_curl(base_url, key), soft_wrap=True, markup=False, highlight=False)
    console.print("\nRead what the dev inbox caught:")
    console.print("postroom inbox", soft_wrap=True, markup=False, highlight=False)
    console.print(
        f"curl -s {base_url}/v1/dev/inbox -H {auth}", soft_wrap=True, markup=False, highlight=False
    )
    console.print("\nPress Ctrl-C to stop everything.\n")


def run_dev(settings: Settings, *, worker_loglevel: LogLevel = LogLevel.WARNING) -> int:
    """Run everything until a stop signal (exit code 0) or until a child dies (exit code 1)."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_port_free("127.0.0.1", settings.dev_inbox_port, setting="POSTROOM_DEV_INBOX_PORT")
    check_port_free(settings.api_host, settings.api_port, setting="POSTROOM_API_PORT")
    migrate(settings)
    _status(f"database is up to date: {redact_url(settings.database_url)}")
    key = ensure_dev_key(settings)
    try:
        with Supervisor(report=_status) as supervisor:
            try:
                _start_everything(supervisor, settings, worker_loglevel=worker_loglevel)
                _print_banner(settings, key)
                signum = supervisor.wait()
            except ChildFailed as error:
                err_console.print(
                    f"[bold red]error:[/] {escape(str(error))}; stopping everything",
                    highlight=False,
                )
                raise
            _status(f"received {signal.Signals(signum).name}; stopping")
    except ChildFailed:
        _status("everything is stopped")
        return CHILD_FAILED_EXIT
    except Interrupted as interrupted:
        _status(f"{interrupted} while starting; everything is stopped")
        return 0
    _status("everything is stopped")
    return 0


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    @exits_on_errors
    def dev(
        ctx: typer.Context,
        worker_loglevel: LogLevel = typer.Option(
            # INFO logs the beat's dispatch sweep every few seconds, burying the printed curl.
            LogLevel.WARNING,
            "--worker-loglevel",
            case_sensitive=False,
            help="The worker's log level; INFO logs every task.",
        ),
    ) -> None:
        """Run everything locally: Redis, a worker with beat, the API and a dev inbox.

        Migrates the database, prints an API key and a curl that sends a first email, and stops
        everything on Ctrl-C. All mail goes to the dev inbox unless POSTROOM_TRANSPORT_URL is set.
        """
        code = run_dev(state(ctx).settings, worker_loglevel=worker_loglevel)
        if code:
            raise typer.Exit(code)
