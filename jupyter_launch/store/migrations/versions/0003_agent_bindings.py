"""Agent registrations and claims bound to the agent token that made them; blob grants, so an agent token reads only the blobs
of the queues it serves (and those it uploaded itself).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("token_id", sa.String(16)))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_token", sa.String(16)))
    op.create_table(
        "blob_grants",
        sa.Column("digest", sa.String(80), primary_key=True),
        sa.Column("grantee", sa.String(80), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("blob_grants")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claim_token")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("token_id")
