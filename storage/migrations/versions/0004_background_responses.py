"""Background responses: a heartbeat on stored responses (a row left queued or in_progress by a replica that died is
found by it) and the sequence number of a response's last streamed event (a replay from storage ends with it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("responses", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("responses", sa.Column("last_sequence", sa.Integer(), nullable=True))
    op.create_index("ix_responses_updated_at", "responses", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_responses_updated_at", "responses")
    # Plain DROP COLUMN (see 0003's downgrade: batch mode would copy and drop the table).
    op.drop_column("responses", "last_sequence")
    op.drop_column("responses", "updated_at")
