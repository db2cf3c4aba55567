"""Storage: every hook call, the cards it issued (or held back) and the feedback clinicians gave.

SQLAlchemy 2 Core over SQLite (default) or PostgreSQL. The schema belongs to the Alembic migrations
in ``cds_service/migrations``: the tables below describe it for queries and must match the
migrations (a test compares them); nothing here creates tables.

Only what analysis needs is kept: service, hook, hookInstance, tier, red-flag ids, outcome, override
reason and comment. Patients appear only as keyed hashes (HMAC-SHA256); no names, no tokens, no card text.
The audit write is best effort: a clinician's card matters more than its audit row, so a failed write
is logged and counted (``lost_rows``) and the card still goes out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool, StaticPool

from .settings import SettingsError

log = logging.getLogger("lbp_redflags.store")
metadata = MetaData()
TIER_RANK = {"none": 0, "consider": 1, "imaging": 2, "emergency": 3}

hook_calls = Table(
    "hook_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(32), nullable=False),
    Column("hook_instance", String(256), nullable=False),
    Column("called_at", DateTime(timezone=True), nullable=False),
    Column("client_issuer", String(512)),  # the authenticated CDS client, when clients authenticate
    Column("patient_key", String(64)),  # keyed hash, never the identifier itself
    Column("tier", String(16), nullable=False),  # the highest tier assessed ("none" without a card)
    Column("red_flags", Text, nullable=False),  # JSON list of red-flag ids
    Column("fetched_from_fhir", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("silent", Boolean, nullable=False),
    Column("snoozed", Boolean, nullable=False),
    Column("rules_version", String(32), nullable=False),
    Index("ix_hook_calls_called_at", "called_at"),
    Index("ix_hook_calls_service_id", "service_id"),
)

issued_cards = Table(
    "issued_cards",
    metadata,
    Column("uuid", String(64), primary_key=True),
    Column("call_id", Integer, ForeignKey("hook_calls.id", ondelete="CASCADE"), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook_instance", String(256), nullable=False),
    Column("client_issuer", String(512)),
    Column("indicator", String(16), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("red_flags", Text, nullable=False),  # JSON list of red-flag ids
    Column("patient_key", String(64)),
    Column("studies", Text, nullable=False),  # JSON list: the imaging studies the card spoke about
    Column("shown", Boolean, nullable=False),  # false: assessed and recorded, held back by a switch
    Column("held_back_by", String(16)),  # silent | snoozed | disabled-tier | disabled-flag
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("rules_version", String(32), nullable=False),
    Index("ix_issued_cards_issued_at", "issued_at"),
    Index("ix_issued_cards_patient_key", "patient_key"),
    Index("ix_issued_cards_call_id", "call_id"),
)

feedback_items = Table(
    "feedback_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card_uuid", String(64), ForeignKey("issued_cards.uuid", ondelete="CASCADE"), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("client_issuer", String(512)),
    Column("outcome", String(16), nullable=False),
    Column("outcome_at", DateTime(timezone=True), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),  # JSON list of suggestion uuids
    Column("override_system", String(256)),
    Column("override_code", String(128)),
    Column("user_comment", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("rules_version", String(32), nullable=False),  # that of the card
    UniqueConstraint("card_uuid", "outcome", "outcome_at", name="uq_feedback_items_same_item"),
    Index("ix_feedback_items_received_at", "received_at"),
)

store_settings = Table(
    "store_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


# JWT ids seen (replay cache of the CDS client authentication): shared by every worker and replica.
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


class SchemaError(RuntimeError):
    """The database cannot be migrated as it is (e.g. tables from before migrations existed)."""


@dataclass
class CallRecord:
    """One hook call as the audit trail keeps it; ``cards`` are the cards assessed, shown or not."""

    service_id: str
    hook: str
    hook_instance: str
    patient_id: str | None
    cards: list[dict]
    held_back: dict[str, str] = field(default_factory=dict)  # card uuid -> switch that held it back
    client_issuer: str | None = None
    fetched_from_fhir: bool = False
    latency_ms: float = 0.0
    silent: bool = False
    snoozed: bool = False
    rules_version: str = ""


def utc(value: datetime) -> datetime:
    """Aware UTC: SQLite gives naive datetimes back (they were written in UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def card_facts(card: dict) -> dict:
    ext = (card.get("extension") or {}).get("lbp-redflags") or {}
    return {"tier": ext.get("tier", "none"), "red_flags": list(ext.get("redFlags", [])),
            "rules_version": ext.get("rulesVersion", ""),
            "studies": sorted({r.get("study") or r.get("modality") or "" for r in ext.get("ratings", [])} - {""})}


def _normalised_url(database_url: str) -> str:
    """postgresql:// means psycopg 3 here (the driver the project installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    return database_url


def _use_wal(cursor) -> None:
    """WAL is kept in the database file, so only its first connection switches it on. Switching needs
    the database to itself and fails at once ("database is locked") while another connection (a second
    worker or replica starting) holds a lock, without waiting: try again for a while."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + 15
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(database_url: str) -> Engine:
    url = _normalised_url(database_url)
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 15}
        # A file database is opened per use and closed after it, never pooled: gunicorn forks its
        # workers from a master that has used the database, and an SQLite connection inherited across
        # fork() and closed (or garbage-collected) in the child checkpoints and removes the WAL other
        # processes are using: writes lost, or a lock that never comes free.
        kwargs["poolclass"] = StaticPool if url in ("sqlite://", "sqlite:///:memory:") else NullPool
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 3,
                                  "options": "-c timezone=UTC -c statement_timeout=15000 -c lock_timeout=10000"}
        kwargs.update(pool_size=10, max_overflow=20, pool_timeout=10)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA busy_timeout=15000")  # every wait has a limit: a lost row, not a stuck card
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Writers take the lock up front: a deferred transaction upgraded to a write can fail at
            # once with "database is locked" instead of waiting its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("lbp_write") else "BEGIN")
    return engine


class Store:
    BREAKER_SECONDS = 2.0  # after a failed connection, skip the database this long (cards are not delayed)

    def __init__(self, database_url: str, patient_key: str = ""):
        if patient_key and len(patient_key) < 32:
            raise SettingsError("setting 'patient_key' (LBP_PATIENT_KEY): must be at least 32 characters "
                                "(a random secret, e.g. 64 hex digits)")
        self.engine = make_engine(database_url)
        self._secret = patient_key.encode() if patient_key else None
        self._key: bytes | None = None
        self._lost = 0
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._loss_listeners: list[Callable[[int, str], None]] = []
        self.behind = False  # the database answers but its schema is older than the code (see ready())

    # ------------------------------------------------------------ schema

    def migrate(self) -> list[str]:
        """Upgrade the schema to the newest migration; returns the revisions applied."""
        from .migrations import upgrade

        with self._writing() as conn:
            return upgrade(conn)

    def schema_status(self) -> tuple[str | None, str]:
        """(current revision, newest revision)."""
        from .migrations import current_revision, head_revision

        with self.engine.connect() as conn:
            return current_revision(conn), head_revision()

    def ready(self) -> tuple[bool, str]:
        """Whether audit rows can be written now: the database answers and its schema is current."""
        try:
            current, head = self.schema_status()
        except SQLAlchemyError as exc:
            return False, f"database unavailable ({exc.__class__.__name__})"
        self.behind = current != head
        if self.behind:
            return False, f"database schema at {current or 'nothing'}, needs {head}: run `lbp-redflags migrate`"
        self._down_until = 0.0
        return True, "ok"

    def _writing(self):
        conn = self.engine.connect().execution_options(lbp_write=True)
        return _Transaction(conn)

    # ------------------------------------------------------------ patients

    def _hash_key(self) -> bytes:
        """The configured patient_key, else a random key made once per database."""
        if self._secret is not None:
            return self._secret
        if self._key is None:
            with self._writing() as conn:
                value = conn.scalar(select(store_settings.c.value).where(store_settings.c.name == "patient_key"))
                if value is None:
                    value = secrets.token_hex(32)
                    conn.execute(_insert_ignore(conn, store_settings, ("name",)),
                                 {"name": "patient_key", "value": value})
                    value = conn.scalar(select(store_settings.c.value).where(store_settings.c.name == "patient_key"))
            self._key = bytes.fromhex(value)
        return self._key

    def patient_key(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return hmac.new(self._hash_key(), patient_id.encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------ JWT replay cache

    def remember_jti(self, issuer: str, jti: str, expires_at: float, now: float) -> bool:
        """Record a token id; False when it was seen before and has not yet expired (a replay).

        The primary key makes the check atomic across workers and replicas. Expired ids are purged.
        Raises SQLAlchemyError when the database cannot answer (the caller refuses the call).
        """
        key = hashlib.sha256(f"{issuer}\0{jti}".encode()).hexdigest()
        with self._writing() as conn:
            conn.execute(delete(seen_tokens).where(seen_tokens.c.expires_at < now))
        try:
            with self._writing() as conn:
                conn.execute(seen_tokens.insert(), {"token_key": key, "expires_at": expires_at})
        except IntegrityError:
            return False
        return True

    # ------------------------------------------------------------ losses

    @property
    def lost_rows(self) -> int:
        """Audit rows (calls and cards) not written since this process started."""
        return self._lost

    def on_loss(self, listener: Callable[[int, str], None]) -> None:
        """Call listener(rows, reason) whenever audit rows are lost (e.g. to count them in a metric)."""
        self._loss_listeners.append(listener)

    def _count_loss(self, rows: int, reason: str) -> None:
        with self._lock:
            self._lost += rows
        for listener in self._loss_listeners:
            try:
                listener(rows, reason)
            except Exception:  # a metrics hook must never break a hook call
                log.exception("loss listener failed")

    # ------------------------------------------------------------ hook calls

    def record_call(self, call: CallRecord) -> bool:
        """The call and its cards in one small transaction. Best effort: False (logged, counted) on failure."""
        rows = 1 + len(call.cards)
        if time.monotonic() < self._down_until:
            self._count_loss(rows, "database unavailable")
            log.error("audit rows lost (database unavailable, retrying shortly): hookInstance=%s rows=%d",
                      call.hook_instance, rows)
            return False
        try:
            self._with_retry(lambda: self._record_call(call))
            return True
        except SQLAlchemyError as exc:
            if not self.engine.url.get_backend_name().startswith("sqlite"):
                self._down_until = time.monotonic() + self.BREAKER_SECONDS
            self._count_loss(rows, exc.__class__.__name__)
            log.error("audit rows lost: could not store hook call (hookInstance=%s rows=%d): %s",
                      call.hook_instance, rows, exc.__class__.__name__)
            return False

    SQLITE_RETRIES = 3

    def _with_retry(self, write: Callable[[], None]) -> None:
        """SQLite can answer "database is locked" at once, without waiting its busy timeout (WAL
        recovery, a checkpoint while another process opens the file): try the write again, briefly."""
        sqlite = self.engine.url.get_backend_name().startswith("sqlite")
        for attempt in range(self.SQLITE_RETRIES if sqlite else 1):
            try:
                write()
                return
            except OperationalError:
                if attempt + 1 >= self.SQLITE_RETRIES or not sqlite:
                    raise
                log.warning("audit write retried after a busy database (attempt %d)", attempt + 1)
                time.sleep(0.05 * (attempt + 1))

    def _record_call(self, call: CallRecord) -> None:
        now = datetime.now(UTC)
        key = self.patient_key(call.patient_id)
        facts = [card_facts(card) for card in call.cards]
        top = max((f["tier"] for f in facts), key=TIER_RANK.get, default="none")
        flags = sorted({flag for f in facts for flag in f["red_flags"]})
        with self._writing() as conn:
            call_id = conn.execute(hook_calls.insert().returning(hook_calls.c.id), {
                "service_id": call.service_id, "hook": call.hook, "hook_instance": call.hook_instance,
                "called_at": now, "client_issuer": call.client_issuer, "patient_key": key, "tier": top,
                "red_flags": json.dumps(flags), "fetched_from_fhir": call.fetched_from_fhir,
                "latency_ms": round(call.latency_ms, 2), "silent": call.silent, "snoozed": call.snoozed,
                "rules_version": call.rules_version or next((f["rules_version"] for f in facts), ""),
            }).scalar_one()
            cards = [{
                "uuid": card["uuid"], "call_id": call_id, "service_id": call.service_id,
                "hook_instance": call.hook_instance, "client_issuer": call.client_issuer,
                "indicator": card.get("indicator", "info"), "tier": f["tier"], "red_flags": json.dumps(f["red_flags"]),
                "patient_key": key, "studies": json.dumps(f["studies"]),
                "shown": card["uuid"] not in call.held_back, "held_back_by": call.held_back.get(card["uuid"]),
                "issued_at": now, "rules_version": f["rules_version"] or call.rules_version,
            } for card, f in zip(call.cards, facts, strict=True)]
            if cards:  # a retried hookInstance yields the same card uuids: the first record stands
                conn.execute(_insert_ignore(conn, issued_cards, ("uuid",)), cards)

    # ------------------------------------------------------------ feedback

    def record_feedback(self, service_id: str, items: list[dict], client_issuer: str | None = None) -> tuple[int, int]:
        """All items or none. Returns (stored, already stored).

        Raises UnknownCards when an item names a card this service did not show, or showed to another client.
        """
        uuids = list(dict.fromkeys(item["card"] for item in items))
        now = datetime.now(UTC)
        with self._writing() as conn:
            known = {row.uuid: row for row in conn.execute(
                select(issued_cards.c.uuid, issued_cards.c.client_issuer, issued_cards.c.rules_version)
                .where(issued_cards.c.uuid.in_(uuids), issued_cards.c.service_id == service_id,
                       issued_cards.c.shown.is_(True)))}
            unknown = [u for u in uuids if u not in known or known[u].client_issuer != client_issuer]
            if unknown:
                raise UnknownCards(unknown)
            rows = {}
            for item in items:
                reason = (item.get("overrideReason") or {})
                coding = reason.get("reason") or {}
                row = {
                    "card_uuid": item["card"], "service_id": service_id, "client_issuer": client_issuer,
                    "outcome": item["outcome"], "outcome_at": parse_instant(item["outcomeTimestamp"]),
                    "accepted_suggestions": json.dumps([s.get("id") for s in item.get("acceptedSuggestions", [])]),
                    "override_system": coding.get("system"), "override_code": coding.get("code"),
                    "user_comment": reason.get("userComment"), "received_at": now,
                    "rules_version": known[item["card"]].rules_version,
                }
                rows.setdefault((row["card_uuid"], row["outcome"], row["outcome_at"]), row)
            stored = conn.execute(_insert_ignore(conn, feedback_items, ("card_uuid", "outcome", "outcome_at"))
                                  .returning(feedback_items.c.id), list(rows.values())).all()
        return len(stored), len(items) - len(stored)

    def feedback_for(self, card_uuid: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(feedback_items).where(feedback_items.c.card_uuid == card_uuid)
                                .order_by(feedback_items.c.id)).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------ what earlier feedback means for a new call

    def acted_at_order_select(self, patient_id: str | None, tier: str, studies: list[str],
                              within: timedelta = timedelta(hours=24)) -> bool:
        """Whether a clinician accepted the same advice (patient, study, tier) at order-select lately."""
        key = self.patient_key_or_none(patient_id)
        if key is None or not studies:
            return False
        since = datetime.now(UTC) - within
        query = (select(issued_cards.c.studies)
                 .join(feedback_items, feedback_items.c.card_uuid == issued_cards.c.uuid)
                 .where(issued_cards.c.patient_key == key, issued_cards.c.tier == tier,
                        issued_cards.c.service_id == "lbp-imaging-order-select", issued_cards.c.issued_at >= since,
                        feedback_items.c.outcome == "accepted"))
        try:
            with self.engine.connect() as conn:
                return any(sorted(studies) == json.loads(s or "[]") for s in conn.scalars(query))
        except SQLAlchemyError as exc:
            log.warning("could not read feedback: %s", exc.__class__.__name__)
            return False  # show the full advice

    def work_up_done(self, patient_id: str | None, reasons: Iterable[tuple[str, str]],
                     since: datetime) -> list[tuple[str, set[str]]]:
        """(tier, red flags) of non-emergency cards overridden since `since` with a work-up-done reason."""
        key = self.patient_key_or_none(patient_id)
        reasons = list(reasons)
        if key is None or not reasons:
            return []
        query = (select(issued_cards.c.tier, issued_cards.c.red_flags, feedback_items.c.override_system,
                        feedback_items.c.override_code)
                 .join(feedback_items, feedback_items.c.card_uuid == issued_cards.c.uuid)
                 .where(issued_cards.c.patient_key == key, issued_cards.c.tier != "emergency",
                        feedback_items.c.outcome == "overridden", feedback_items.c.outcome_at >= since,
                        feedback_items.c.override_code.in_([code for _, code in reasons])))
        try:
            with self.engine.connect() as conn:
                return [(row.tier, set(json.loads(row.red_flags))) for row in conn.execute(query)
                        if (row.override_system, row.override_code) in reasons]
        except SQLAlchemyError as exc:
            log.warning("could not read feedback for snooze: %s", exc.__class__.__name__)
            return []  # show the advice

    def patient_key_or_none(self, patient_id: str | None) -> str | None:
        try:
            return self.patient_key(patient_id)
        except SQLAlchemyError as exc:
            log.warning("patient key unavailable: %s", exc.__class__.__name__)
            return None

    # ------------------------------------------------------------ retention

    def purge(self, before: datetime) -> dict[str, int]:
        """Delete calls, cards and feedback recorded before `before`; returns the rows deleted per table."""
        with self._writing() as conn:
            old_cards = select(issued_cards.c.uuid).where(issued_cards.c.issued_at < before)
            counts = {"feedback_items": conn.execute(delete(feedback_items).where(
                (feedback_items.c.received_at < before) | feedback_items.c.card_uuid.in_(old_cards))).rowcount}
            counts["issued_cards"] = conn.execute(delete(issued_cards).where(
                (issued_cards.c.issued_at < before) | issued_cards.c.call_id.in_(
                    select(hook_calls.c.id).where(hook_calls.c.called_at < before)))).rowcount
            counts["hook_calls"] = conn.execute(delete(hook_calls).where(hook_calls.c.called_at < before)).rowcount
        return counts


class _Transaction:
    """`with store._writing() as conn:` one write transaction (BEGIN IMMEDIATE on SQLite), then close."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __enter__(self) -> Connection:
        try:
            self.tx = self.conn.begin()
        except BaseException:
            self.conn.close()  # a BEGIN refused ("database is locked") must not keep its connection
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        finally:
            self.conn.close()


def _insert_ignore(conn: Connection, table: Table, keys: tuple[str, ...]):
    """INSERT … ON CONFLICT DO NOTHING on the given unique columns (SQLite and PostgreSQL)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))


def parse_instant(value: str) -> datetime:
    """An ISO 8601 date-time as aware UTC (a missing offset is read as UTC)."""
    return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))

