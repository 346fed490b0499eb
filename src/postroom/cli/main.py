"""The ``postroom`` command: one Typer app, one module per command group."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, ParamSpec, TypeVar, cast

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError

from postroom.client import Postroom
from postroom.database_errors import driver_reason
from postroom.db import create_db_engine
from postroom.errors import DatabaseNotMigrated, DatabaseUnavailable, PostroomError
from postroom.revisions import SchemaRevision, schema_revision
from postroom.settings import Settings, redact_url

P = ParamSpec("P")
R = TypeVar("R")

USAGE_ERROR = 2
UNAVAILABLE = 1
# soft_wrap: an error message stays on one line, whole, for people and for scripts that grep it
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class CliState:
    """What the root callback builds once and every command receives through the context."""

    settings: Settings
    _client: Postroom | None = None

    def client(self) -> Postroom:
        """The command's client on these settings, closed when the command ends."""
        if self._client is None:
            self._client = Postroom(self.settings)
        return self._client

    def close(self) -> None:
        """Release the client's database and transport connections."""
        if self._client is not None:
            self._client.close()
            self._client = None


def fail(message: str) -> typer.Exit:
    """Print ``message`` to stderr and return the exit to raise (code 2)."""
    return _error(message, USAGE_ERROR)


def unavailable(message: str) -> typer.Exit:
    """Print ``message`` to stderr and return the exit to raise when a service is down (1)."""
    return _error(message, UNAVAILABLE)


def _error(message: str, code: int) -> typer.Exit:
    # messages quote what was given, which may look like Rich markup: "[/]" would raise
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(code)


def exits_on_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn postroom's errors into a message on stderr and exit code 2.

    A database error is explained when it can be: an unreachable database exits 1, one whose
    tables ``postroom migrate`` has not brought up to date exits 2.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (DBAPIError, DatabaseUnavailable, DatabaseNotMigrated) as error:
            # Typer passes the context it made, an instance of its Click's own class, not of
            # typer.Context: found by the name every postroom command gives it
            ctx = kwargs.get("ctx")
            database_failure(
                None if ctx is None else state(cast(typer.Context, ctx)).settings, error
            )
        except PostroomError as error:
            raise fail(str(error)) from None

    return run


def database_failure(
    settings: Settings | None, error: DBAPIError | DatabaseUnavailable | DatabaseNotMigrated
) -> NoReturn:
    """Say what is wrong with the database behind ``error``.

    When the check finds nothing wrong (the database came back in between), or there are no
    ``settings`` to check with, a postroom error is told as it is and any other is raised again.
    """
    if settings is not None:
        _check_database(settings)
    if isinstance(error, DBAPIError):
        raise error
    raise _exit_for(error) from None


def _exit_for(error: DatabaseUnavailable | DatabaseNotMigrated) -> typer.Exit:
    return unavailable(str(error)) if isinstance(error, DatabaseUnavailable) else fail(str(error))


def require_migrated(settings: Settings) -> None:
    """Stop a long-running command unless the database is reachable and migrated.

    A database a newer release migrated is accepted with a warning: migrations add to the
    schema, so the older code still running during a rolling deploy keeps working.
    """
    revision = _check_database(settings)
    if not revision.known:
        err_console.print(f"[yellow]warning:[/] {escape(revision.describe())}", highlight=False)


def _check_database(settings: Settings) -> SchemaRevision:
    """The database's revision; exits 1 if it cannot be reached, 2 if it is behind."""
    url = redact_url(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        revision = schema_revision(engine)
    except DBAPIError as error:
        raise unavailable(f"cannot reach the database {url}: {driver_reason(error)}") from None
    finally:
        engine.dispose()
    if revision.behind:
        raise fail(f"{revision.describe()} ({url}): run `postroom migrate`")
    return revision


def state(ctx: typer.Context) -> CliState:
    """The state built by the root callback."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


app = typer.Typer(
    name="postroom",
    help="Durable background email on Celery: outbox, workers, API and dev inbox.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(ctx: typer.Context) -> None:
    """Settings come from POSTROOM_* environment variables and a .env file in this folder."""
    try:
        cli_state = CliState(settings=Settings())
    except ValidationError as error:
        problems = "; ".join(
            f"POSTROOM_{'__'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        raise fail(f"invalid settings: {problems}") from None
    ctx.obj = cli_state
    ctx.call_on_close(cli_state.close)


def _register_commands() -> None:
    from postroom.cli import dev, inbox, keys, messages, services, templates

    for module in (services, messages, dev, inbox):
        module.register(app)
    app.add_typer(keys.app, name="keys")
    app.add_typer(templates.app, name="templates")


def run() -> None:
    """Console-script entry point."""
    _register_commands()
    app(prog_name="postroom")


def main_app() -> typer.Typer:
    """The app with every command registered (for tests with ``CliRunner``)."""
    if not app.registered_commands:
        _register_commands()
    return app


if __name__ == "__main__":  # pragma: no cover
    # `python -m postroom.cli.main` executes this file as `__main__`, a second copy of the
    # module: its `app` and `CliState` are not the ones the command modules import, so the
    # commands are registered and run from the package's copy.
    from postroom.cli.main import run as package_run

    package_run()
