"""Storage seam: cards the service issued, the feedback clinicians gave on them, and the JWT ids
already used (the replay cache, shared by every worker and replica) (SQLAlchemy).

Only what analysis needs is kept: card and hook identifiers, tier, outcome and override reason.
No patient identifiers, no tokens, no card text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import weakref
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from .settings import SettingsError

log = logging.getLogger("lbp_redflags.store")
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
    Column("patient_key", String(64), index=True),  # keyed hash, never the identifier itself
    Column("studies", Text),  # the imaging orderables/modalities the card spoke about
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

settings_table = Table(
    "store_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
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

seen_tokens = Table(
    "seen_tokens",
    metadata,
    Column("token_key", String(64), primary_key=True),  # SHA-256 of issuer and jti
    Column("expires_at", Float, nullable=False, index=True),  # epoch seconds: exp plus the leeway
)


class UnknownCards(Exception):
    def __init__(self, uuids: list[str]):
        super().__init__(", ".join(uuids))
        self.uuids = uuids


class Store:
    def __init__(self, database_url: str, patient_key: str = ""):
        """patient_key: the secret for patient hashes (setting patient_key); empty: a random one kept here."""
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
        if patient_key and len(patient_key) < 32:
            raise SettingsError("setting 'patient_key' (LBP_PATIENT_KEY): must be at least 32 characters "
                                "(a random secret, e.g. 64 hex digits)")
        metadata.create_all(self.engine)
        self._key = patient_key.encode() if patient_key else self._hash_key()
        # gunicorn forks workers after the app (and this pool) exists: a child must open its own
        # connections, never share the parent's (SQLite forbids it; PostgreSQL would mix sessions).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (store := ref()) and store.engine.dispose(close=False))

    def _hash_key(self) -> bytes:
        """A random key made once per database: patient ids are stored only as HMACs under it."""
        with self.engine.begin() as conn:
            value = conn.scalar(select(settings_table.c.value).where(settings_table.c.name == "patient_key"))
            if value is None:
                value = secrets.token_hex(32)
                try:
                    conn.execute(settings_table.insert(), {"name": "patient_key", "value": value})
                except IntegrityError:
                    pass
        with self.engine.connect() as conn:
            value = conn.scalar(select(settings_table.c.value).where(settings_table.c.name == "patient_key"))
        return bytes.fromhex(value)

    def patient_key(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def remember_jti(self, issuer: str, jti: str, expires_at: float, now: float) -> bool:
        """Record a token id; False when it was seen before and has not yet expired (a replay).

        The primary key makes the check atomic across workers and replicas. Expired ids are purged.
        """
        key = hashlib.sha256(f"{issuer}\0{jti}".encode()).hexdigest()
        with self.engine.begin() as conn:
            conn.execute(delete(seen_tokens).where(seen_tokens.c.expires_at < now))
        try:
            with self.engine.begin() as conn:
                conn.execute(seen_tokens.insert(), {"token_key": key, "expires_at": expires_at})
        except IntegrityError:
            return False
        return True

    def record_cards(self, service_id: str, hook_instance: str, cards: list[dict],
                     patient_id: str | None = None) -> None:
        """Best effort: the cards reach the clinician even when the store cannot be written."""
        try:
            self._record_cards(service_id, hook_instance, cards, patient_id)
        except SQLAlchemyError as exc:
            log.warning("could not store issued cards (hookInstance=%s): %s", hook_instance, exc.__class__.__name__)

    def _record_cards(self, service_id: str, hook_instance: str, cards: list[dict],
                      patient_id: str | None) -> None:
        rows = []
        now = datetime.now(UTC)
        for card in cards:
            ext = (card.get("extension") or {}).get("lbp-redflags") or {}
            rows.append({
                "uuid": card["uuid"], "service_id": service_id, "hook_instance": hook_instance,
                "indicator": card.get("indicator", "info"), "tier": ext.get("tier", "none"),
                "red_flags": json.dumps(ext.get("redFlags", [])), "issued_at": now,
                "patient_key": self.patient_key(patient_id),
                "studies": json.dumps(sorted({r.get("study") or r.get("modality") for r in ext.get("ratings", [])})),
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

    def acted_at_order_select(self, patient_id: str | None, tier: str, studies: list[str],
                              within: timedelta = timedelta(hours=24)) -> bool:
        """Whether a clinician accepted the same advice (patient, study, tier) at order-select lately."""
        key = self.patient_key(patient_id)
        if key is None or not studies:
            return False
        try:
            return self._acted(key, tier, studies, within)
        except SQLAlchemyError as exc:
            log.warning("could not read feedback: %s", exc.__class__.__name__)
            return False  # show the full advice

    def _acted(self, key: str, tier: str, studies: list[str], within: timedelta) -> bool:
        since = datetime.now(UTC) - within
        query = (select(issued_cards.c.studies, issued_cards.c.issued_at)
                 .join(feedback, feedback.c.card_uuid == issued_cards.c.uuid)
                 .where(issued_cards.c.patient_key == key, issued_cards.c.tier == tier,
                        issued_cards.c.service_id == "lbp-imaging-order-select",
                        feedback.c.outcome == "accepted"))
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                issued = row.issued_at if row.issued_at.tzinfo else row.issued_at.replace(tzinfo=UTC)
                if issued >= since and sorted(studies) == json.loads(row.studies or "[]"):
                    return True
        return False

    def feedback_for(self, card_uuid: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(feedback).where(feedback.c.card_uuid == card_uuid)).mappings()
            return [dict(r) for r in rows]
