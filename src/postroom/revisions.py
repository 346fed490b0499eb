"""Which of postroom's migrations a database is at, read without loading Alembic.

Every long-running command checks this before it starts, and ``postroom worker`` must not
import Alembic: what the worker loads before Celery forks sits in every pool process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect, text

# Separate from the application's own Alembic history when postroom shares its database.
VERSION_TABLE = "postroom_alembic_version"
_MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


def known_revisions() -> tuple[str, ...]:
    """This postroom's revisions, oldest first: each migration's file is named after its own."""
    return tuple(sorted(path.name[:4] for path in _MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.py")))


@dataclass(frozen=True)
class SchemaRevision:
    """Where a database's postroom tables are against the migrations of this postroom."""

    current: str | None  # None: no postroom tables yet
    head: str
    known: bool  # whether this postroom has the current revision (not a newer release's)

    @property
    def behind(self) -> bool:
        """Whether ``postroom migrate`` has work to do: this code may need what is missing."""
        return self.known and self.current != self.head

    def describe(self) -> str:
        if self.current is None:
            return "the database has no postroom tables"
        if self.behind:
            return f"the database is at revision {self.current}, this postroom needs {self.head}"
        if not self.known:
            return (
                f"the database is at revision {self.current}, newer than this postroom's "
                f"{self.head} (a newer release migrated it)"
            )
        return f"the database is at revision {self.head}"


def schema_revision(engine: Engine) -> SchemaRevision:
    """Read the database's revision; raises SQLAlchemy's error when it cannot be reached."""
    revisions = known_revisions()
    with engine.connect() as connection:
        current = None
        if inspect(connection).has_table(VERSION_TABLE):
            current = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return SchemaRevision(
        current=current, head=revisions[-1], known=current is None or current in revisions
    )
