"""Long-running processes: ``worker``, ``beat``, ``api``, and ``migrate``."""

from __future__ import annotations

import gc
from enum import StrEnum
from typing import Any

import typer
from celery import Celery
from celery.signals import worker_process_init
from celery.utils.log import mlevel
from celery.utils.nodenames import default_nodename, host_format
from sqlalchemy.exc import DBAPIError

from postroom.cli.main import exits_on_errors, require_migrated, state, unavailable
from postroom.database_errors import driver_reason
from postroom.db import create_db_engine
from postroom.settings import redact_url
from postroom.tasks import QUEUES


class LogLevel(StrEnum):
    """Celery's log levels, as ``--loglevel`` takes them (in any case)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


# one option object for both commands: typer only reads it
LOGLEVEL_OPTION: Any = typer.Option(LogLevel.INFO, "--loglevel", "-l", case_sensitive=False)


def run_celery_worker(
    app: Celery,
    *,
    concurrency: int,
    queues: list[str],
    loglevel: LogLevel,
    beat: bool,
    quiet: bool = False,
) -> int:
    """Run a Celery worker of ``app`` in this process until it stops; its exit code.

    Built as ``celery worker`` builds it, without going through Celery's command line: that
    imports every ``celery`` subcommand, the interactive shell's prompt_toolkit among them
    (about 12 MB in each worker process and 0.2 s at start, for nothing a worker runs).
    """
    worker = app.Worker(
        hostname=host_format(default_nodename("postroom@%h")),
        concurrency=concurrency,
        queues=queues,
        loglevel=mlevel(loglevel.value),
        quiet=quiet,  # no start-up banner
        # gossip and mingle cost broker round trips at start and run time, for features
        # (revoke sync, clock sync between workers) postroom does not use
        without_gossip=True,
        without_mingle=True,
        beat=beat,  # its schedule file is the app's beat_schedule_filename
    )
    worker.start()
    return int(worker.exitcode or 0)


def run_celery_beat(app: Celery, *, loglevel: LogLevel) -> None:
    """Run Celery's beat scheduler for ``app`` in this process, as ``celery beat`` would."""
    app.Beat(loglevel=loglevel.value).run()  # its schedule file: beat_schedule_filename


def freeze_inherited_objects(**_: object) -> None:
    """In a pool process just forked: put what it inherited out of the garbage collector's reach.

    The CLI, the client and Celery built those objects before the fork and keep them for the
    process's life. Frozen, collections stop walking them (a drain of 10,000 messages spent
    0.128 s collecting in its pool process, 0.023 s with this) and stop writing to the pages the
    fork shares with the parent. Connected by ``postroom worker`` alone: a library must not
    change how the processes of an application's own Celery workers collect.
    """
    gc.freeze()


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    @exits_on_errors
    def migrate(ctx: typer.Context) -> None:
        """Create or upgrade postroom's tables in the configured database."""
        from postroom.schema import upgrade  # Alembic: only this command needs it

        settings = state(ctx).settings
        url = redact_url(settings.database_url)
        try:
            upgrade(create_db_engine(settings.database_url))
        except DBAPIError as error:
            raise unavailable(f"migrating {url} failed: {driver_reason(error)}") from None
        typer.echo(f"database is up to date: {url}")

    @app.command()
    @exits_on_errors
    def worker(
        ctx: typer.Context,
        concurrency: int = typer.Option(2, "--concurrency", "-c", min=1, help="Worker processes."),
        queue: list[str] = typer.Option(
            list(QUEUES), "--queue", "-Q", help="Queues to consume, in priority order."
        ),
        beat: bool = typer.Option(False, "--beat", "-B", help="Also run the beat scheduler."),
        loglevel: LogLevel = LOGLEVEL_OPTION,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Skip Celery's start-up banner."),
    ) -> None:
        """Run a Celery worker that delivers messages (prefork pool)."""
        settings = state(ctx).settings
        require_migrated(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        client = state(ctx).client()
        worker_process_init.connect(
            freeze_inherited_objects, weak=False, dispatch_uid="postroom.freeze_inherited_objects"
        )
        exit_code = run_celery_worker(
            client.celery,
            concurrency=concurrency,
            queues=[name for value in queue for name in value.split(",") if name],  # -Q a,b
            loglevel=loglevel,
            beat=beat,
            quiet=quiet,
        )
        if exit_code:
            raise typer.Exit(exit_code)

    @app.command()
    @exits_on_errors
    def beat(ctx: typer.Context, loglevel: LogLevel = LOGLEVEL_OPTION) -> None:
        """Run the beat scheduler: publishes due and retried messages, recovers stuck ones."""
        settings = state(ctx).settings
        require_migrated(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        run_celery_beat(state(ctx).client().celery, loglevel=loglevel)

    @app.command()
    @exits_on_errors
    def api(
        ctx: typer.Context,
        host: str | None = typer.Option(None, help="Defaults to POSTROOM_API_HOST."),
        port: int | None = typer.Option(None, help="Defaults to POSTROOM_API_PORT."),
        workers: int | None = typer.Option(
            None,
            "--workers",
            "-w",
            min=1,
            help="Server processes. Defaults to one per CPU (at most 4) on PostgreSQL, one on "
            "SQLite.",
        ),
    ) -> None:
        """Serve the REST API (and OpenAPI docs at /docs)."""
        import uvicorn

        from postroom.api.app import create_app, default_workers

        settings = state(ctx).settings
        require_migrated(settings)
        processes = workers if workers is not None else default_workers(settings)
        # Several processes each build their own app (and database pool) from a factory: read
        # from the same environment and .env, their settings are the ones this command read.
        target = create_app(settings) if processes == 1 else "postroom.api.app:create_app_from_env"
        uvicorn.run(
            target,
            factory=processes > 1,
            workers=processes,
            host=host or settings.api_host,
            port=port if port is not None else settings.api_port,
            log_level="info",
        )
