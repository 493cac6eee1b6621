"""The levers, one module each, and the one place their order is written.

Chain order (hooks run in this order; docs/architecture.md explains each step):

1. tenant        who is calling: API key -> 401, rpm/tpm -> 429 (admit); model list
                 -> 404, the key's quality target (before)
   batch         lever 4: interactive load for batch admission; batch lines' priority
2. router        lever 1: model="auto" -> the cheapest model good enough
3. cascade       lever 1: retry a doubtful `auto` answer on a larger model (if on)
   compaction    lever 8: a chat over the model's token budget -> older turns become a
                 note written by the summariser model (or a fallback)
4. reasoning     lever 2: effort or exact budget -> the engine's thinking budget
5. structured    lever 7: bound what a JSON schema leaves unbounded; count cut answers
6. prompt_cache  lever 3: prompt-shape observations for `frugal cache report`
7. accounting    usage, cost, savings and every request metric (the one writer)
8. budget        the key's budget: reserve an estimate (429 when spent), settle the
                 real cost into the ledger (after accounting priced it)

Guided decoding itself (lever 7) is vLLM's: its protocol model turns `response_format`
into a grammar in the engine; the structured lever only bounds the schema first. To add
a lever: write a module here with a `Lever` subclass, and add one line to `build_chain`.
"""

from __future__ import annotations

from serving.compaction.counter import PromptCounter
from serving.compaction.notes import NoteCache
from serving.compaction.plan import Compactor
from serving.config import FrugalConfig
from serving.cost import CostModel
from serving.levers.accounting import AccountingLever
from serving.levers.batch import BatchLever
from serving.levers.budget import BudgetLever
from serving.levers.cascade import CascadeLever
from serving.levers.compaction import CompactionLever
from serving.levers.prompt_cache import PromptCacheLever
from serving.levers.reasoning import ReasoningLever
from serving.levers.router import RouterLever
from serving.levers.structured import StructuredLever
from serving.levers.tenant import TenantLever
from serving.pipeline.chain import Chain
from serving.pipeline.lever import Lever
from serving.pricing import price_table
from serving.router.reload import RouterReloader
from serving.router.runtime import Router
from serving.tenants.app import Tenants
from serving.tenants.resolver import KeyResolver


def build_chain(config: FrugalConfig, router: Router | None,
                tenants: Tenants | None = None, notes: NoteCache | None = None) -> Chain:
    """The chain the YAML asks for; levers that are off are left out entirely.
    `tenants` defaults to the YAML's keys alone (no store: no budgets, no ledger);
    `notes` (compaction's cache) to this replica's memory alone."""
    prices = router.prices if router is not None else price_table(config)
    if tenants is None:
        tenants = Tenants(keys=KeyResolver(config.gateway.api_keys, None, 0.0))
    levers: list[Lever | None] = [
        TenantLever(tenants.keys, tenants.limiter),
        BatchLever(config.batch.engine_priority) if config.batch.enabled else None,
        RouterLever(router, RouterReloader(config, router) if router is not None else None),
        CascadeLever(router) if router is not None and router.cascade else None,
        # In the chain even when no model compacts: a request may ask for it.
        CompactionLever(config, Compactor(PromptCounter(config), notes or NoteCache(None))),
        ReasoningLever(),
        StructuredLever(),
        PromptCacheLever(),
        AccountingLever(CostModel(config, prices)),
        BudgetLever(tenants.store, prices, config.tenants.estimate_output_tokens)
        if tenants.store is not None else None,
    ]
    return Chain([lever for lever in levers if lever is not None])
