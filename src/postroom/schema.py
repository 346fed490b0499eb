"""Create or upgrade postroom's tables with Alembic (``postroom migrate``)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from postroom.revisions import VERSION_TABLE

__all__ = ["VERSION_TABLE", "alembic_config", "downgrade", "load_models", "upgrade"]


def load_models() -> None:
    """Import every module that defines a table, so ``Base.metadata`` knows them all."""
    import postroom.api_keys
    import postroom.attachments
    import postroom.events
    import postroom.messages
    import postroom.templates  # noqa: F401


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at postroom's migrations, for ``engine``."""
    config = Config()
    config.set_main_option("script_location", "postroom:migrations")
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (the newest by default)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to ``revision`` (``"base"`` drops every postroom table)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
