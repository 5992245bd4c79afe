"""The quota counted on the job's row (``jobs.used``), raised in the same statement that locks it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("used", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET used = (SELECT COUNT(*) FROM job_devices WHERE job_devices.job_id = jobs.id)")
