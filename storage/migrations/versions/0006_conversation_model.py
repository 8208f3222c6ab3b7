"""A conversation may pin the model its replies are generated with (the base model or a LoRA adapter, by name).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("model", sa.String(200), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (see 0003's downgrade: batch mode would copy and drop the table).
    op.drop_column("conversations", "model")
