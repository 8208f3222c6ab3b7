"""API keys get a weight: their share of the engine's queue under overload (fairness).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("weight", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "weight")
