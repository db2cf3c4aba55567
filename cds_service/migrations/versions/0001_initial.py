"""Initial schema: hook calls, the cards they issued (or held back), feedback items, store settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_calls",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(32), nullable=False),
        sa.Column("hook_instance", sa.String(256), nullable=False),
        sa.Column("called_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_issuer", sa.String(512)),
        sa.Column("patient_key", sa.String(64)),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("red_flags", sa.Text, nullable=False),
        sa.Column("fetched_from_fhir", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("silent", sa.Boolean, nullable=False),
        sa.Column("snoozed", sa.Boolean, nullable=False),
        sa.Column("rules_version", sa.String(32), nullable=False),
    )
    op.create_index("ix_hook_calls_called_at", "hook_calls", ["called_at"])
    op.create_index("ix_hook_calls_service_id", "hook_calls", ["service_id"])
    op.create_table(
        "issued_cards",
        sa.Column("uuid", sa.String(64), primary_key=True),
        sa.Column("call_id", sa.Integer, sa.ForeignKey("hook_calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook_instance", sa.String(256), nullable=False),
        sa.Column("client_issuer", sa.String(512)),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("red_flags", sa.Text, nullable=False),
        sa.Column("patient_key", sa.String(64)),
        sa.Column("studies", sa.Text, nullable=False),
        sa.Column("shown", sa.Boolean, nullable=False),
        sa.Column("held_back_by", sa.String(16)),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rules_version", sa.String(32), nullable=False),
    )
    op.create_index("ix_issued_cards_issued_at", "issued_cards", ["issued_at"])
    op.create_index("ix_issued_cards_patient_key", "issued_cards", ["patient_key"])
    op.create_index("ix_issued_cards_call_id", "issued_cards", ["call_id"])
    op.create_table(
        "feedback_items",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("card_uuid", sa.String(64), sa.ForeignKey("issued_cards.uuid", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("client_issuer", sa.String(512)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_suggestions", sa.Text, nullable=False),
        sa.Column("override_system", sa.String(256)),
        sa.Column("override_code", sa.String(128)),
        sa.Column("user_comment", sa.Text),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rules_version", sa.String(32), nullable=False),
        sa.UniqueConstraint("card_uuid", "outcome", "outcome_at", name="uq_feedback_items_same_item"),
    )
    op.create_index("ix_feedback_items_received_at", "feedback_items", ["received_at"])
    op.create_table(
        "store_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("store_settings")
    op.drop_table("feedback_items")
    op.drop_table("issued_cards")
    op.drop_table("hook_calls")
