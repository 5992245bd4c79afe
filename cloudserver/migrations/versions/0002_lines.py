"""Station authority: the line that registered a device, the lines a job serves.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("devices", sa.Column("line", sa.String(64), nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("lines", sa.Text, nullable=False, server_default=""))
    op.create_index("audit_by_uid", "audit", ["uid"])
