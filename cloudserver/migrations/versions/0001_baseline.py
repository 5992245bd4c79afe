"""The schema as the numbered runner left it at its version 3: devices, jobs, quota slots, keys,
signed images, results, the chained append-only audit log and revoked certificates.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cloudserver.db import append_only

revision = "0001"
down_revision = None

MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("uid", sa.String(24), primary_key=True),
        sa.Column("obj_id", sa.String(32), nullable=False, unique=True),
        sa.Column("created", MOMENT, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("pdid", sa.BigInteger, nullable=False),
        sa.Column("bootloader_body", sa.LargeBinary, nullable=False),
        sa.Column("bootloader_version", sa.String(32), nullable=False),
        sa.Column("application_body", sa.LargeBinary, nullable=False),
        sa.Column("application_version", sa.String(32), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("created", MOMENT, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
    )
    op.create_table(
        "job_devices",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("uid", sa.String(24), sa.ForeignKey("devices.uid"), primary_key=True),
        sa.Column("counted", MOMENT, nullable=False),
    )
    op.create_table(
        "device_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(24), sa.ForeignKey("devices.uid"), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("handle", sa.LargeBinary, nullable=False),
        sa.Column("keystore", sa.String(16), nullable=False),
        sa.Column("created", MOMENT, nullable=False),
        sa.UniqueConstraint("uid", "purpose"),
    )
    op.create_table(
        "signed_images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(24), sa.ForeignKey("devices.uid"), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created", MOMENT, nullable=False),
        sa.UniqueConstraint("uid", "purpose", "job_id"),
    )
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(24), sa.ForeignKey("devices.uid"), nullable=False),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("reported_by", sa.Text, nullable=False),
        sa.Column("created", MOMENT, nullable=False),
        sa.UniqueConstraint("uid", "job_id", "outcome", "step", "reason"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", MOMENT, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("uid", sa.String(24), nullable=True),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "revoked",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("revoked", MOMENT, nullable=False),
    )
    append_only(op.get_bind())
