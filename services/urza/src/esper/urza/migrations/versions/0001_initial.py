"""Blueprints and kernels.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blueprints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("blueprint_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("layer_kinds", sa.JSON(), nullable=False),
        sa.Column("default_config", sa.JSON(), nullable=False),
        sa.Column("config_schema", sa.JSON(), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("blueprint_id", "version", name="uq_blueprint_version"),
    )
    op.create_index("ix_blueprints_blueprint_id", "blueprints", ["blueprint_id"])
    op.create_index("ix_blueprints_family", "blueprints", ["family"])
    op.create_table(
        "kernels",
        sa.Column("kernel_id", sa.String(64), primary_key=True),
        sa.Column("blueprint_id", sa.String(64), nullable=False),
        sa.Column("blueprint_version", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("shape_key", sa.String(128), nullable=False),
        sa.Column("layout", sa.String(32), nullable=True),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_us", sa.Float(), nullable=True),
        sa.Column("backward_latency_us", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_abs_error", sa.Float(), nullable=True),
        sa.Column("max_grad_error", sa.Float(), nullable=True),
        sa.Column("artifact_format", sa.String(32), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_kernels_blueprint_id", "kernels", ["blueprint_id"])
    op.create_index("ix_kernels_shape_key", "kernels", ["shape_key"])
    op.create_index("ix_kernels_status", "kernels", ["status"])


def downgrade() -> None:
    op.drop_table("kernels")
    op.drop_table("blueprints")
