"""Prometheus metrics recorded by the gateway, correct across processes and replicas.

One writer: the accounting lever (`serving.levers.accounting`) records every metric
here from the request context, once per request, when its usage is known; the
exceptions are `TENANT_REFUSALS`, for requests refused before the chain priced them,
and `STORE_ERRORS`, counted where a store write was refused.

`frugal serve` points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory for every Ray
actor it starts, so gateway replicas and the vLLM engines (whose own `vllm:*` metrics
use prometheus-client too) write to one place and `/metrics` on any gateway replica
aggregates all of them (prometheus-client's multiprocess mode). Without that variable
the process-local default registry is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from serving.cost import Cost, TokenUsage

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "frugal_requests",
    "Requests answered by the gateway, by model, endpoint and HTTP status.",
    ["model", "endpoint", "status"],
)
PROMPT_TOKENS = Counter("frugal_prompt_tokens", "Prompt tokens processed.", ["model"])
CACHED_PROMPT_TOKENS = Counter(
    "frugal_cached_prompt_tokens", "Prompt tokens served from the prefix cache.", ["model"]
)
COMPLETION_TOKENS = Counter("frugal_completion_tokens", "Completion tokens generated.", ["model"])
TTFT = Histogram(
    "frugal_time_to_first_token_seconds",
    "Time from request arrival at the gateway to the first streamed token.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
LATENCY = Histogram(
    "frugal_request_latency_seconds",
    "End-to-end request latency at the gateway.",
    ["model", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
BATCH_LINES = Counter(
    "frugal_batch_lines",
    "Batch lines answered (lever 4), by model and HTTP status; they are in frugal_requests "
    "too.",
    ["model", "status"],
)
BATCH_LINES_PREEMPTED = Counter(
    "frugal_batch_lines_preempted",
    "Batch lines preempted for interactive traffic before they had an answer (they run "
    "again later; docs/batch.md).",
)
BATCH_LINES_IN_FLIGHT = Gauge(
    "frugal_batch_lines_in_flight",
    "Batch lines the runner has admitted to the engines (see docs/batch.md, admission).",
    multiprocess_mode="livesum",
)
BATCH_IDLE_CAP = Gauge(
    "frugal_batch_idle_cap",
    "Batch lines a gateway replica runs at most on idle engines (sized to the engines' "
    "sequence slots; docs/batch.md).",
    multiprocess_mode="max",
)
IN_FLIGHT = Gauge(
    "frugal_requests_in_flight",
    "Requests the gateway is working on.",
    ["model"],
    multiprocess_mode="livesum",
)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every frugal and vLLM metric on this node."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def record_tokens(model: str, usage: TokenUsage) -> None:
    """Add one model call's token counts."""
    PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
    COMPLETION_TOKENS.labels(model).inc(usage.completion_tokens)
    CACHED_PROMPT_TOKENS.labels(model).inc(usage.cached_tokens)


COMPACTIONS = Counter(
    "frugal_compactions",
    "Chats compacted (lever 8), by model and method: summary (the summariser wrote or "
    "extended the note), cached (a cached note was reused), facts or truncate (fallbacks).",
    ["model", "method"],
)
COMPACTION_TOKENS_REMOVED = Counter(
    "frugal_compaction_tokens_removed",
    "Prompt tokens compaction removed from chats before they reached the model.",
    ["model"],
)
COMPACTION_FALLBACKS = Counter(
    "frugal_compaction_fallbacks",
    "Compactions that used the fallback because the summariser failed, by reason.",
    ["model", "reason"],
)
COMPACTION_NOTE_REPAIRS = Counter(
    "frugal_compaction_note_repairs",
    "Summary lines dropped (a number the turns never said) or fact sentences added (a "
    "number or name the summary left out) by `verify_note`.",
    ["model"],
)
REASONING_TOKENS = Counter(
    "frugal_reasoning_tokens", "Completion tokens spent thinking (lever 2).", ["model"]
)
COST_USD = Counter(
    "frugal_cost_usd", "What responses cost, in US dollars.", ["model", "api_key"]
)
BASELINE_COST_USD = Counter(
    "frugal_baseline_cost_usd",
    "What the same responses would cost on the naive baseline (largest model, no cache).",
    ["model", "api_key"],
)
SAVED_USD = Counter(
    "frugal_saved_usd",
    "Baseline cost minus actual cost, by the lever that saved it.",
    ["model", "api_key", "lever"],
)


def record_cost(cost: Cost, api_key: str, reasoning_tokens: int) -> None:
    """Add one response's cost to the counters (a counter cannot go down: a lever that
    cost more than the baseline is counted as zero saving)."""
    COST_USD.labels(cost.model, api_key).inc(cost.total_usd)
    BASELINE_COST_USD.labels(cost.model, api_key).inc(cost.baseline_usd)
    for lever, saved in cost.saved_by_lever.items():
        if saved > 0:
            SAVED_USD.labels(cost.model, api_key, lever).inc(saved)
    REASONING_TOKENS.labels(cost.model).inc(reasoning_tokens)


STRUCTURED_TRUNCATED = Counter(
    "frugal_structured_truncated",
    "Answers of structured-output requests that ended at max_tokens (their JSON is cut).",
    ["model"],
)
STRUCTURED_WASTED_TOKENS = Counter(
    "frugal_structured_wasted_tokens",
    "Completion tokens of structured-output answers that ended at max_tokens.",
    ["model"],
)


PREFIX_PROMPT_TOKENS = Counter(
    "frugal_prefix_prompt_tokens",
    "Prompt tokens by API key and prompt prefix (first characters, hashed).",
    ["api_key", "prefix"],
)
PREFIX_CACHED_TOKENS = Counter(
    "frugal_prefix_cached_tokens",
    "Prompt tokens served from the prefix cache, by API key and prompt prefix.",
    ["api_key", "prefix"],
)
PROMPTS = Counter("frugal_prompts", "Prompts seen, by API key.", ["api_key"])
LATE_FIXED_PROMPTS = Counter(
    "frugal_late_fixed_prompts",
    "Prompts that repeat a long part of a recent prompt after a varying start (the cache "
    "cannot reuse it: put the fixed part first).",
    ["api_key"],
)


# Tenants: refusals happen before accounting sees a request (401, 429 in admit), so the
# tenant and budget levers write this one themselves. `key` is the key's id (bounded by
# the keys an admin created; "unknown" for tokens that match none).
TENANT_REFUSALS = Counter(
    "frugal_tenant_refusals", "Requests refused for their API key, by key and reason.",
    ["key", "reason"],
)

# The store's disk full or read-only (serving/store/faults.py): counted where the write
# was refused, `where` = api (a client got 503), batch (the runner waits and resumes),
# ledger (a settlement queued for retry), compaction (a note not cached in the store).
STORE_ERRORS = Counter(
    "frugal_store_errors",
    "Store writes refused because its disk is full or read-only, by kind and by what wrote.",
    ["kind", "where"],
)


ROUTER_DECISIONS = Counter(
    "frugal_router_decisions",
    "model='auto' requests by the cell chosen (MODEL, or MODEL@EFFORT with thinking).",
    ["model"],
)
ROUTER_ESCALATIONS = Counter(
    "frugal_router_escalations",
    "Cascade retries after a low-confidence answer, by cell (more effort or a larger model).",
    ["from_model", "to_model"],
)
QUALITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ROUTER_RELOADS = Counter(
    "frugal_router_reloads",
    "Router reloads after its scorecard or predictor changed on disk, by result.",
    ["result"],
)
ROUTER_PREDICTED = Histogram(
    "frugal_router_predicted_quality",
    "Predicted success of the chosen cell at routing time.",
    ["model"],
    buckets=QUALITY_BUCKETS,
)
ROUTER_CONFIDENCE = Histogram(
    "frugal_router_observed_confidence",
    "Success estimated from the answer's token log-probabilities (observed quality).",
    ["model"],
    buckets=QUALITY_BUCKETS,
)
