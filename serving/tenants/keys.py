"""API keys: how they are made, hashed and described (docs/tenants.md).

A key is `frg-` and 32 random bytes (256 bits, `secrets.token_urlsafe`). With that much
entropy a single SHA-256 is the right hash: nobody can guess a preimage, and a lookup by
hash is one indexed read on every request. A slow password hash (argon2) exists for
low-entropy secrets people choose; these are not. The plaintext key is shown once, at
creation, and stored nowhere.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "frg-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def hint(key: str) -> str:
    """What lists show of a key: enough to tell keys apart, nothing to use."""
    return f"{KEY_PREFIX}…{key[-4:]}"


class BudgetPeriod(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


def period_of(period: BudgetPeriod, now: float | None = None) -> str:
    """The UTC period `now` falls in: `2026-12-03`, `2026-W49`, `2026-12` or `total`."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if period is BudgetPeriod.DAY:
        return moment.strftime("%Y-%m-%d")
    if period is BudgetPeriod.WEEK:
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    if period is BudgetPeriod.MONTH:
        return moment.strftime("%Y-%m")
    return "total"


def period_start(period: BudgetPeriod, now: float | None = None) -> float:
    """The UTC timestamp at which the period holding `now` began (0 for `total`)."""
    if period is BudgetPeriod.TOTAL:
        return 0.0
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is BudgetPeriod.DAY:
        return day.timestamp()
    if period is BudgetPeriod.WEEK:
        return (day - timedelta(days=day.weekday())).timestamp()
    return day.replace(day=1).timestamp()


class KeySettings(BaseModel):
    """What an admin sets on a key (`frugal keys create|update`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    budget_usd: float | None = Field(None, gt=0, description="Spend allowed per period.")
    budget_period: BudgetPeriod = BudgetPeriod.MONTH
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    models: list[str] | None = Field(None, description="Models it may call; None: all.")
    min_quality: float | None = Field(
        None, gt=0, le=1, description="Its default quality target for model='auto'.")


class KeyRecord(KeySettings):
    """A stored key, without the key itself."""

    id: str
    hint: str
    created_at: int
    revoked_at: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows_model(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models
