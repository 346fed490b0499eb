"""What a failed database call means to the caller, as postroom's own errors.

SQLAlchemy's exceptions say which statement failed. An application calling ``send()`` needs to
know something else: whether to retry (``DatabaseUnavailable``) or to call its operator
(``DatabaseNotMigrated``). Any other database error is a bug and is raised as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from postroom.errors import DatabaseNotMigrated, DatabaseUnavailable, PostroomError

P = ParamSpec("P")
R = TypeVar("R")

# PostgreSQL's undefined_table and undefined_column; SQLite says it in words
_MISSING_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})
_MISSING_SCHEMA_SQLITE = ("no such table", "no such column", "has no column named")


def driver_reason(error: DBAPIError) -> str:
    """The first line of the driver's own message, without the SQL SQLAlchemy adds to it.

    libpq's and sqlite3's words name the host and the user, never the password.
    """
    lines = str(error.orig).strip().splitlines()
    return lines[0] if lines else type(error.orig).__name__


def translated(error: BaseException) -> PostroomError | None:
    """``error`` as ``DatabaseUnavailable`` or ``DatabaseNotMigrated``; None if it is neither."""
    if isinstance(error, PoolTimeout):
        return DatabaseUnavailable(
            "every pooled database connection stayed busy past the pool's timeout",
            driver_error=type(error).__name__,
        )
    if not isinstance(error, DBAPIError):
        return None
    if _names_missing_schema(error):
        return DatabaseNotMigrated(
            f"the database lacks postroom's tables or columns ({driver_reason(error)}): "
            "run `postroom migrate`"
        )
    if isinstance(error, OperationalError) or error.connection_invalidated:
        return DatabaseUnavailable(
            f"the database is unavailable ({driver_reason(error)})",
            driver_error=type(error.orig).__name__,
        )
    return None


def _names_missing_schema(error: DBAPIError) -> bool:
    if getattr(error.orig, "sqlstate", None) in _MISSING_SCHEMA_SQLSTATES:
        return True
    return isinstance(error, OperationalError) and any(
        words in str(error.orig) for words in _MISSING_SCHEMA_SQLITE
    )


class _Translating:
    # A class, not @contextmanager: send() enters it on every call, and this costs no generator.
    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # returning None never swallows: an error that is not translated propagates unchanged
        ours = None if error is None else translated(error)
        if ours is not None:
            raise ours from error


_TRANSLATING = _Translating()


def database_errors() -> _Translating:
    """A context in which a database error is raised as ``translated`` makes it, chained to it."""
    return _TRANSLATING


def translates_database_errors(method: Callable[P, R]) -> Callable[P, R]:
    """``method`` inside ``database_errors()``."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with _TRANSLATING:
            return method(*args, **kwargs)

    return call
