"""Storage seam: cards the service issued and the feedback clinicians gave on them (SQLAlchemy).

Only what analysis needs is kept: card and hook identifiers, tier, outcome and override reason.
No patient identifiers, no tokens, no card text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

metadata = MetaData()

issued_cards = Table(
    "issued_cards",
    metadata,
    Column("uuid", String(64), primary_key=True),
    Column("service_id", String(64), nullable=False, index=True),
    Column("hook_instance", String(256), nullable=False, index=True),
    Column("indicator", String(16), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("red_flags", Text, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card_uuid", String(64), ForeignKey("issued_cards.uuid"), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),
    Column("override_system", String(256)),
    Column("override_code", String(128)),
    Column("user_comment", Text),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


class UnknownCards(Exception):
    def __init__(self, uuids: list[str]):
        super().__init__(", ".join(uuids))
        self.uuids = uuids


class Store:
    def __init__(self, database_url: str):
        kwargs: dict = {"pool_pre_ping": True}
        if database_url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
            if database_url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database
        self.engine = create_engine(database_url, **kwargs)
        if database_url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()
        metadata.create_all(self.engine)

    def record_cards(self, service_id: str, hook_instance: str, cards: list[dict]) -> None:
        rows = []
        now = datetime.now(UTC)
        for card in cards:
            ext = (card.get("extension") or {}).get("lbp-redflags") or {}
            rows.append({
                "uuid": card["uuid"], "service_id": service_id, "hook_instance": hook_instance,
                "indicator": card.get("indicator", "info"), "tier": ext.get("tier", "none"),
                "red_flags": json.dumps(ext.get("redFlags", [])), "issued_at": now,
            })
        if not rows:
            return
        with self.engine.begin() as conn:
            known = set(conn.scalars(select(issued_cards.c.uuid).where(
                issued_cards.c.uuid.in_([r["uuid"] for r in rows]))))
            fresh = [r for r in rows if r["uuid"] not in known]
            if fresh:
                try:
                    conn.execute(issued_cards.insert(), fresh)
                except IntegrityError:  # a concurrent retry of the same hookInstance stored them first
                    pass

    def record_feedback(self, service_id: str, items: list[dict]) -> int:
        """All items or none: a batch naming an unknown card is refused whole."""
        uuids = [item["card"] for item in items]
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            known = set(conn.scalars(select(issued_cards.c.uuid).where(
                issued_cards.c.uuid.in_(uuids), issued_cards.c.service_id == service_id)))
            unknown = [u for u in uuids if u not in known]
            if unknown:
                raise UnknownCards(unknown)
            conn.execute(feedback.insert(), [{
                "card_uuid": item["card"], "service_id": service_id, "outcome": item["outcome"],
                "accepted_suggestions": json.dumps([s.get("id") for s in item.get("acceptedSuggestions", [])]),
                "override_system": ((item.get("overrideReason") or {}).get("reason") or {}).get("system"),
                "override_code": ((item.get("overrideReason") or {}).get("reason") or {}).get("code"),
                "user_comment": (item.get("overrideReason") or {}).get("userComment"),
                "outcome_timestamp": item["outcomeTimestamp"], "received_at": now,
            } for item in items])
        return len(items)

    def feedback_for(self, card_uuid: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(feedback).where(feedback.c.card_uuid == card_uuid)).mappings()
            return [dict(r) for r in rows]
