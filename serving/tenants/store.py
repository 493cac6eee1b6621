"""Keys, budgets and the ledger in the durable store (SQLite or PostgreSQL).

The budget's one hard promise is that concurrent requests, on any number of replicas,
cannot all pass a nearly spent budget. It rests on one statement: the conditional
`UPDATE key_spend SET reserved = reserved + :estimate WHERE spent + reserved < budget`,
which both databases run atomically (the row is locked by the write). The rule is
"something is left": a request is admitted while the period's spend plus the
reservations in flight is below the budget, so the overspend is bounded by the
requests already in flight when it ran out, and a request is never refused while the
key has money left. Settling replaces the reservation by the real cost and appends the
ledger row in one transaction.

Sync methods (SQLAlchemy sessions); the gateway calls them in a thread.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from serving.store.tables import ApiKeyRow, KeyLedgerRow, KeyReservationRow, KeySpendRow
from serving.tenants.keys import (
    BudgetPeriod,
    KeyRecord,
    KeySettings,
    hash_key,
    hint,
    new_key,
    new_key_id,
    period_of,
    period_start,
)


class Reservation(BaseModel):
    """Budget held for one request; `id` None: the key has no budget (ledger only)."""

    id: str | None
    key_id: str
    period: str
    estimate_usd: float = 0.0


class Spend(BaseModel):
    period: str
    spent_usd: float
    reserved_usd: float
    budget_usd: float | None

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(self.budget_usd - self.spent_usd - self.reserved_usd, 0.0)


class UsageRow(BaseModel):
    """A key's ledger summed over one period."""

    key_id: str
    period: str
    requests: int
    batch_requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost_usd: float
    saved_usd: float


def _record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        id=row.id, name=row.name, hint=row.hint, budget_usd=row.budget_usd,
        budget_period=BudgetPeriod(row.budget_period), rpm=row.rpm, tpm=row.tpm,
        models=row.models, min_quality=row.min_quality, created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _ensure_spend_row(session: Session, key_id: str, period: str) -> None:
    """Insert the period's spend row unless it exists (races are fine: one wins)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(KeySpendRow).values(
        key_id=key_id, period=period, spent_usd=0.0, reserved_usd=0.0)
    session.execute(statement.on_conflict_do_nothing())


class KeyStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # --- keys -----------------------------------------------------------------------

    def create(self, settings: KeySettings) -> tuple[KeyRecord, str]:
        """A new key: its record and the key itself, which is returned only here."""
        key = new_key()
        row = ApiKeyRow(id=new_key_id(), key_hash=hash_key(key), hint=hint(key),
                        created_at=int(time.time()), revoked_at=None,
                        **settings.model_dump(mode="json"))
        with self.sessions.begin() as session:
            if session.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == settings.name)):
                raise ValueError(f"a key named {settings.name!r} exists")
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:  # the same name, created at the same moment
                raise ValueError(f"a key named {settings.name!r} exists") from exc
            return _record(row), key

    def find(self, key: str) -> KeyRecord | None:
        """The record of a key (revoked ones too: the caller checks `active`)."""
        with self.sessions() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key)))
            return _record(row) if row is not None else None

    def get(self, key_id: str) -> KeyRecord | None:
        with self.sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            return _record(row) if row is not None else None

    def resolve(self, id_or_name: str) -> KeyRecord | None:
        """By id, else by name (what the CLI takes)."""
        found = self.get(id_or_name)
        if found is not None:
            return found
        with self.sessions() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.name == id_or_name))
            return _record(row) if row is not None else None

    def list(self, include_revoked: bool = False) -> list[KeyRecord]:
        with self.sessions() as session:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.name)
            if not include_revoked:
                query = query.where(ApiKeyRow.revoked_at.is_(None))
            return [_record(row) for row in session.scalars(query)]

    def update(self, key_id: str, **changes: Any) -> KeyRecord:
        """Change settings (validated as a whole); None clears an optional one."""
        with self.sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise KeyError(key_id)
            current = _record(row).model_dump(include=set(KeySettings.model_fields))
            settings = KeySettings.model_validate({**current, **changes})
            for name, value in settings.model_dump(mode="json").items():
                setattr(row, name, value)
            session.flush()
            return _record(row)

    def revoke(self, key_id: str) -> KeyRecord:
        with self.sessions.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise KeyError(key_id)
            if row.revoked_at is None:
                row.revoked_at = int(time.time())
            return _record(row)

    # --- budgets --------------------------------------------------------------------

    def reserve(self, key: KeyRecord, estimate_usd: float,
                now: float | None = None) -> Reservation | None:
        """Hold `estimate_usd` of the key's budget for one request; None: it is spent."""
        period = period_of(key.budget_period, now)
        if key.budget_usd is None:
            return Reservation(id=None, key_id=key.id, period=period)
        with self.sessions.begin() as session:
            _ensure_spend_row(session, key.id, period)
            held = session.execute(
                update(KeySpendRow)
                .where(KeySpendRow.key_id == key.id, KeySpendRow.period == period,
                       KeySpendRow.spent_usd + KeySpendRow.reserved_usd < key.budget_usd)
                .values(reserved_usd=KeySpendRow.reserved_usd + estimate_usd))
            if held.rowcount != 1:
                return None
            reservation = Reservation(id=secrets.token_hex(12), key_id=key.id,
                                      period=period, estimate_usd=estimate_usd)
            session.add(KeyReservationRow(
                id=reservation.id, key_id=key.id, period=period, estimate_usd=estimate_usd,
                created_at=time.time() if now is None else now))
            return reservation

    def settle(self, reservation: Reservation, *, model: str, cost_usd: float,
               saved_usd: float = 0.0, prompt_tokens: int = 0, cached_tokens: int = 0,
               completion_tokens: int = 0, reasoning_tokens: int = 0, batch: bool = False,
               now: float | None = None) -> None:
        """Replace the reservation by the real cost and append the ledger row."""
        with self.sessions.begin() as session:
            self._drop(session, reservation)
            if reservation.id is not None:
                _ensure_spend_row(session, reservation.key_id, reservation.period)
                session.execute(
                    update(KeySpendRow)
                    .where(KeySpendRow.key_id == reservation.key_id,
                           KeySpendRow.period == reservation.period)
                    .values(spent_usd=KeySpendRow.spent_usd + cost_usd))
            session.add(KeyLedgerRow(
                key_id=reservation.key_id, period=reservation.period,
                at=time.time() if now is None else now, model=model, batch=batch,
                prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
                completion_tokens=completion_tokens, reasoning_tokens=reasoning_tokens,
                cost_usd=cost_usd, saved_usd=saved_usd))

    def release(self, reservation: Reservation) -> None:
        """A request that never reached a model: nothing was spent."""
        with self.sessions.begin() as session:
            self._drop(session, reservation)

    def release_stale(self, older_than_s: float, now: float | None = None) -> int:
        """Release reservations a stopped gateway left behind; how many."""
        cutoff = (time.time() if now is None else now) - older_than_s
        with self.sessions.begin() as session:
            stale = session.scalars(
                select(KeyReservationRow).where(KeyReservationRow.created_at < cutoff)).all()
            for row in stale:
                self._drop(session, Reservation(id=row.id, key_id=row.key_id,
                                                period=row.period,
                                                estimate_usd=row.estimate_usd))
            return len(stale)

    @staticmethod
    def _drop(session: Session, reservation: Reservation) -> None:
        """Delete the reservation's row and, if it was still there, give back its
        estimate (the sweeper may have released it already: never twice)."""
        if reservation.id is None:
            return
        gone = session.execute(
            delete(KeyReservationRow).where(KeyReservationRow.id == reservation.id))
        if gone.rowcount == 1:
            session.execute(
                update(KeySpendRow)
                .where(KeySpendRow.key_id == reservation.key_id,
                       KeySpendRow.period == reservation.period)
                .values(reserved_usd=KeySpendRow.reserved_usd - reservation.estimate_usd))

    def spend(self, key: KeyRecord, now: float | None = None) -> Spend:
        period = period_of(key.budget_period, now)
        with self.sessions() as session:
            row = session.get(KeySpendRow, (key.id, period))
            return Spend(period=period, spent_usd=row.spent_usd if row else 0.0,
                         reserved_usd=max(row.reserved_usd, 0.0) if row else 0.0,
                         budget_usd=key.budget_usd)

    # --- the ledger -----------------------------------------------------------------

    def usage(self, key_id: str | None = None, period: BudgetPeriod = BudgetPeriod.MONTH,
              now: float | None = None) -> list[UsageRow]:
        """Each key's ledger over the current `period` (all of it for `total`)."""
        label = period_of(period, now)
        ledger = KeyLedgerRow
        query = select(
            ledger.key_id, func.count(), func.sum(case((ledger.batch, 1), else_=0)),
            func.sum(ledger.prompt_tokens), func.sum(ledger.cached_tokens),
            func.sum(ledger.completion_tokens), func.sum(ledger.reasoning_tokens),
            func.sum(ledger.cost_usd), func.sum(ledger.saved_usd),
        ).group_by(ledger.key_id).order_by(ledger.key_id)
        if period is not BudgetPeriod.TOTAL:
            query = query.where(ledger.at >= period_start(period, now))
        if key_id is not None:
            query = query.where(ledger.key_id == key_id)
        with self.sessions() as session:
            return [
                UsageRow(key_id=row[0], period=label, requests=row[1],
                         batch_requests=int(row[2] or 0), prompt_tokens=int(row[3] or 0),
                         cached_tokens=int(row[4] or 0), completion_tokens=int(row[5] or 0),
                         reasoning_tokens=int(row[6] or 0), cost_usd=float(row[7] or 0),
                         saved_usd=float(row[8] or 0))
                for row in session.execute(query)
            ]
