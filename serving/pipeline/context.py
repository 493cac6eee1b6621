"""The typed request context: everything the levers decide about one request.

Levers never edit the client's request in place. Each writes its decision into a field
of `RequestContext` (the route, the thinking plan, ...); the engine request is composed
from the parsed request plus those decisions, afresh for every model call, by the
levers' `shape` hooks in chain order (`serving.pipeline.chain`). So a cascade retry on a
larger model gets that model's thinking budget, not the first model's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from serving.compaction.plan import Compaction
    from serving.cost import Cost, TokenUsage
    from serving.levers.reasoning import ThinkingAsk
    from serving.pipeline.parse import FrugalOptions
    from serving.router.runtime import RouteDecision
    from serving.tenants.keys import KeyRecord
    from serving.tenants.store import Reservation


class Endpoint(StrEnum):
    """The OpenAI endpoint a request came in on (names match the engine's methods)."""

    CHAT = "chat"
    COMPLETION = "completion"


class Priority(StrEnum):
    """Interactive requests come from HTTP clients waiting for an answer; batch lines
    (lever 4) run on idle capacity and are billed at the batch discount."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass
class ModelCall:
    """One call to a model engine made for this request (a cascade makes two)."""

    model: str
    status: int = 0  # HTTP-like status of the call; 499: the client went away
    purpose: str = "answer"  # "compaction": a summariser call made for this request
    usage: TokenUsage | None = None
    cost: Cost | None = None


@dataclass
class RequestContext:
    """One request on its way through the lever chain.

    Filled in order: the gateway sets the caller fields and the parsed request; the
    levers set their decisions in `before`; the model caller appends `calls`; the
    accounting lever sets `cost`. `response_headers` collects what levers want the
    client to see (route, cost, ...).
    """

    endpoint: Endpoint
    request: Any = None  # the validated vLLM protocol request, as the client sent it
    extras: dict[str, Any] = field(default_factory=dict)  # non-OpenAI fields, popped
    options: FrugalOptions | None = None  # extra_body.frugal, validated
    api_key: str | None = None  # the bearer token as sent (never logged or stored)
    key_label: str = "anonymous"  # a metrics label that does not reveal the key
    tenant: KeyRecord | None = None  # the caller's key (tenants), once admitted
    generation: bool = True  # a model endpoint (rate-limited); False: files, models list
    priority: Priority = Priority.INTERACTIVE
    started: float = field(default_factory=time.perf_counter)

    # Decisions, one field per lever.
    model: str = ""  # the model to call; `auto` until the router lever chose
    min_quality: float | None = None  # the request's or the key's quality target
    route: RouteDecision | None = None
    route_effort: str | None = None  # the effort of the cell `auto` calls (None: no thinking)
    thinking: ThinkingAsk | None = None  # what the request asked of reasoning
    reasoning: bool = False  # the last model call thinks (its answer has `reasoning`)
    cascade: bool = False  # the cascade may retry this request on a larger model
    client_logprobs: bool = False  # the client itself asked for logprobs
    escalated_to: str | None = None
    confidence: float | None = None  # the cascade's estimate for the first answer
    prefix_label: str = "other"  # prompt-prefix label for the cache report
    late_fixed_prompt: bool = False  # repeats a recent prompt's tail after a new head
    counted_interactive: bool = False  # the batch lever counts it in the interactive load
    structured: bool = False  # the request constrains the answer (response_format, ...)
    json_capped_fields: int = 0  # subschemas the structured lever bounded (last call)
    reservation: Reservation | None = None  # the budget held for this request (tenants)
    compaction: Compaction | None = None  # the compacted history (lever 8), if compacted

    # What happened.
    calls: list[ModelCall] = field(default_factory=list)
    ttft_s: float | None = None
    structured_truncated: bool = False  # a structured answer ended at max_tokens (cut JSON)
    status: int = 0  # the status the client got; 0 until known
    cost: Cost | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    client_wants_usage: bool = False  # streams: pass the usage chunk on to the client
    in_flight_model: str | None = None  # the gateway's in-flight gauge counts it here
    usage_done: bool = False  # the chain's on_usage ran (it runs once)

    # Set by the pipeline: call the engine again for `model` (shape hooks re-run).
    call_model: Callable[[RequestContext, str], Awaitable[Any]] | None = None
    # Set by the pipeline: send an engine request as is (no shape hooks), recorded in
    # `calls` like any other (the compaction lever's summariser calls).
    call_engine: Callable[[RequestContext, Any], Awaitable[Any]] | None = None

    @property
    def stream(self) -> bool:
        return bool(getattr(self.request, "stream", False))

    @property
    def last_call(self) -> ModelCall | None:
        return self.calls[-1] if self.calls else None

    @property
    def answer_calls(self) -> list[ModelCall]:
        """The calls that answered the request (not the summariser's)."""
        return [call for call in self.calls if call.purpose == "answer"]
