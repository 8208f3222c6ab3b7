"""Persistence for CodeFace: SQLAlchemy 2 asyncio models, repositories and Alembic migrations."""

from storage.database import Database
from storage.migrate import upgrade_database

__all__ = ["Database", "upgrade_database"]
