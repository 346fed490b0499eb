"""Long-running processes: ``worker``, ``beat``, ``api``, and ``migrate``."""

from __future__ import annotations

import gc

import typer
from celery.signals import worker_process_init
from sqlalchemy.exc import DBAPIError

from postroom.cli.main import exits_on_errors, require_migrated, state, unavailable
from postroom.database_errors import driver_reason
from postroom.db import create_db_engine
from postroom.settings import Settings, redact_url
from postroom.tasks import QUEUES


def celery_worker_argv(
    *,
    concurrency: int,
    queues: list[str],
    loglevel: str,
    beat: bool,
    settings: Settings,
    quiet: bool = False,
) -> list[str]:
    """The ``celery worker`` arguments postroom runs with."""
    argv = ["--quiet"] if quiet else []  # no start-up banner
    argv += [
        "worker",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--hostname=postroom@%h",
        # gossip and mingle cost broker round trips at start and run time, for features
        # (revoke sync, clock sync between workers) postroom does not use
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    return argv


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
        loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
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
        argv = celery_worker_argv(
            concurrency=concurrency,
            queues=queue,
            loglevel=loglevel,
            beat=beat,
            settings=settings,
            quiet=quiet,
        )
        client.celery.worker_main(argv)

    @app.command()
    @exits_on_errors
    def beat(ctx: typer.Context, loglevel: str = typer.Option("INFO", "--loglevel", "-l")) -> None:
        """Run the beat scheduler: publishes due and retried messages, recovers stuck ones."""
        settings = state(ctx).settings
        require_migrated(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        schedule = settings.data_dir / "celerybeat-schedule"
        state(ctx).client().celery.start(
            ["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"]
        )

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
