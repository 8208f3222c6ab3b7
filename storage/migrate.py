"""Apply Alembic migrations: the only way the schema is made."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from storage.database import ensure_sqlite_parent

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not a main option: ConfigParser would read '%' in a password as interpolation.
    config.attributes["database_url"] = url
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`. Blocking: call it before the event loop starts, or in a thread."""
    ensure_sqlite_parent(url)
    command.upgrade(alembic_config(url), revision)
