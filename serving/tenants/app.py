"""Wires tenants into a gateway replica: the key resolver, the limiter, the key store
and the sweeper that releases budget reservations a crashed replica left behind."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from serving import metrics
from serving.config import FrugalConfig
from serving.store.db import open_engine, session_factory
from serving.store.faults import StoreUnavailable
from serving.tenants.limiter import RateLimiter
from serving.tenants.resolver import KeyResolver
from serving.tenants.store import KeyStore

logger = logging.getLogger("frugal.tenants")

#: How often a replica looks for stale reservations (cheap: one indexed DELETE).
SWEEP_EVERY_S = 60.0


@dataclass
class Tenants:
    keys: KeyResolver
    limiter: RateLimiter | None = None
    store: KeyStore | None = None  # None: only YAML keys (no budgets, no ledger)
    reservation_ttl_s: float = 900.0
    _sweeper: asyncio.Task | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the sweeper (inside the replica's event loop)."""
        if self.store is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        assert self.store is not None
        while True:
            try:
                released = await asyncio.to_thread(
                    self.store.release_stale, self.reservation_ttl_s)
            except StoreUnavailable as exc:
                metrics.STORE_ERRORS.labels(exc.fault, "ledger").inc()
                logger.warning("releasing stale budget reservations: %s", exc)
            except Exception:
                logger.exception("releasing stale budget reservations failed; will retry")
            else:
                if released:
                    logger.warning("released %d budget reservations older than %.0f s "
                                   "(left by a replica that stopped)", released,
                                   self.reservation_ttl_s)
            await asyncio.sleep(SWEEP_EVERY_S)


def build_tenants(config: FrugalConfig) -> Tenants:
    """What the YAML asks for: YAML keys always; the store and limiter with tenants on."""
    settings = config.tenants
    replicas = config.gateway.deployment_config.num_replicas
    if settings.enabled and settings.rate_limit_uri().startswith("memory") and (
            replicas is None or replicas > 1):
        logger.warning("tenants.rate_limit_storage is memory://: each of the gateway's "
                       "replicas counts rpm/tpm on its own; point it at Redis or Valkey "
                       "(docs/tenants.md)")
    store = None
    if settings.enabled:
        store = KeyStore(session_factory(open_engine(config.store.database_url())))
    return Tenants(
        keys=KeyResolver(config.gateway.api_keys, store, settings.key_cache_s),
        limiter=RateLimiter(settings.rate_limit_uri()) if settings.enabled else None,
        store=store,
        reservation_ttl_s=settings.reservation_ttl_s,
    )
