"""LoRA adapters as state (loaded at run time by an admin, served by every replica after its start), and the
models a user or an API key may use.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
# 0004 (another branch) comes between at merge: this then revises it.
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lora_adapters",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Uuid(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("users", sa.Column("allowed_models", sa.JSON(), nullable=True))
    op.add_column("api_keys", sa.Column("allowed_models", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "allowed_models")
    op.drop_column("users", "allowed_models")
    op.drop_table("lora_adapters")
