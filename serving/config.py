"""The deployments YAML schema: the single source of truth for what `frugal serve` runs.

Model entries reuse Ray Serve LLM's `LLMConfig` field names (`model_loading_config`,
`engine_kwargs`, `deployment_config`, `runtime_env`) so an operator who knows
`ray.serve.llm` reads our YAML without a manual; frugal adds only its own lever
settings. Every model is strict (`extra="forbid"`): a typo is an error that names
the file, the key path and what was expected, never a silently ignored key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.compaction.format import DEFAULT_SUMMARY_PROMPT
from serving.router.config import RouterConfig

#: Engine defaults frugal applies unless the YAML says otherwise. Prefix caching is
#: lever 3 and costs nothing when prompts share no prefix, so it is on everywhere.
#: Guided JSON without optional whitespace (lever 7): a schema-constrained answer is
#: billed for its fields, not for the newlines and tabs a small model likes to emit.
DEFAULT_ENGINE_KWARGS: dict[str, Any] = {
    "enable_prefix_caching": True,
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    # Batch lines (lever 4) ask for a lower priority than interactive requests; vLLM
    # honours it only under this policy (and refuses it under fcfs).
    "scheduling_policy": "priority",
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelLoadingConfig(StrictModel):
    """Which weights to load and under which name clients ask for them (as in Ray)."""

    model_id: str = Field(description="Name clients pass as `model`.")
    model_source: str = Field(
        description="Local checkpoint directory (relative paths are relative to the YAML "
        "file) or a Hugging Face hub id."
    )

    @field_validator("model_id")
    @classmethod
    def _valid_model_id(cls, value: str) -> str:
        if value == "auto" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", value):
            raise ValueError(
                "model_id must be 1-128 characters of letters, digits and . _ : / - "
                "and must not be the reserved name 'auto'"
            )
        return value


class AutoscalingConfig(StrictModel):
    """Ray Serve's autoscaling bounds for one deployment (same names as Ray)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(32, gt=0)
    initial_replicas: int | None = Field(None, ge=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class RayActorOptions(StrictModel):
    """Resources one replica reserves (same names as Ray)."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, ge=0, description="Bytes of memory to reserve.")
    resources: dict[str, float] = Field(default_factory=dict)
    accelerator_type: str | None = None


#: Ray's prefix-cache-affinity router (serving.cache_routing): requests that share a
#: prompt prefix go to the replica whose vLLM prefix cache already holds it (lever 3),
#: falling back to power-of-two-choices load balancing when that replica is busy.
PREFIX_AFFINITY_ROUTER = "serving.cache_routing:PromptCacheAffinityRouter"


class RequestRouterConfig(StrictModel):
    """How Ray Serve picks a replica for each request (same names as Ray)."""

    request_router_class: str = Field(
        PREFIX_AFFINITY_ROUTER, description="Import path 'module:Class' of a Ray RequestRouter."
    )
    request_router_kwargs: dict[str, Any] = Field(default_factory=dict)


class DeploymentConfig(StrictModel):
    """Replicas and queueing for one Ray Serve deployment (same names as Ray)."""

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: AutoscalingConfig | None = None
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions)
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica works on at once (continuous batching)."
    )
    max_queued_requests: int = Field(
        1024,
        ge=-1,
        description="Requests waiting for a replica before new ones get 503 + Retry-After "
        "(-1: unbounded).",
    )
    request_router_config: RequestRouterConfig | None = Field(
        None, description="Replica choice; none means Ray's default (power of two choices)."
    )
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentConfig:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options()`."""
        options: dict[str, Any] = {
            "ray_actor_options": self.ray_actor_options.model_dump(exclude_none=True),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.request_router_config is not None:
            options["request_router_config"] = self.request_router_config.model_dump()
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


class Price(StrictModel):
    """US dollars per million tokens."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class ReasoningBudgets(StrictModel):
    """Thinking-token budgets that `reasoning_effort` levels map to (lever 2)."""

    low: int = Field(16, ge=0)
    medium: int = Field(64, ge=0)
    high: int = Field(256, ge=0)
    default_effort: Literal["none", "low", "medium", "high"] = Field(
        "none",
        description="Effort for requests that ask for none (a reasoning model otherwise "
        "thinks as long as it likes: this caps the bill by default).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReasoningBudgets:
        if not self.low <= self.medium <= self.high:
            raise ValueError("budgets must satisfy low <= medium <= high")
        return self


class StructuredCaps(StrictModel):
    """Bounds the structured lever adds where a JSON schema leaves a value unbounded
    (docs/levers.md). A schema's own bounds always win; `null` leaves that kind
    unbounded. Also the shape of a request's `extra_body.frugal.structured`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(True, description="Cap JSON schemas sent to this model.")
    max_integer_digits: int | None = Field(
        12,
        ge=1,
        le=15,
        description="Integers, and the integer part of numbers, without minimum/maximum get "
        "at most this many digits (numbers then also have at most 6 decimals and no "
        "exponent: xgrammar's bounded-number form). At most 15, the digits a double holds "
        "exactly.",
    )
    max_string_length: int | None = Field(
        256,
        ge=1,
        le=1_000_000,
        description="maxLength of strings without one (not enum, const, pattern or format "
        "strings), and of the keys of free-form objects. xgrammar 0.2.8 allows no escapes "
        "(quotes, backslashes, newlines) in a length-bounded string.",
    )
    max_array_items: int | None = Field(
        64, ge=1, le=1_000_000, description="maxItems of arrays without one."
    )
    max_object_properties: int | None = Field(
        64,
        ge=1,
        le=1_000_000,
        description="Objects that allow undeclared keys (additionalProperties, "
        "patternProperties) get maxProperties = their declared properties plus this.",
    )

    def overridden(self, override: StructuredCaps | None) -> StructuredCaps:
        """These caps with the fields a request set itself (`null` included)."""
        if override is None:
            return self
        return self.model_copy(
            update={name: getattr(override, name) for name in override.model_fields_set})


class CompactionSettings(StrictModel):
    """Lever 8 (docs/compaction.md): a chat whose prompt exceeds `budget_tokens` has its
    older turns replaced by a note; the system prompt and the last turns stay verbatim."""

    enabled: bool = Field(False, description="Compact this model's long chats.")
    budget_tokens: int = Field(
        768, ge=1, description="Compact when the chat's prompt is over this many tokens "
        "(counted with the model's own tokenizer and chat template).")
    keep_last_turns: int = Field(
        2, ge=0, le=64, description="Turns (a user message and the replies to it) kept "
        "verbatim before the new message.")
    summariser: str | None = Field(
        None, description="A served model id that writes the note; null uses `fallback`.")
    summary_prompt: str = Field(
        DEFAULT_SUMMARY_PROMPT, min_length=1,
        description="The summariser's system prompt (the demo zoo is trained on the default).")
    fallback: Literal["facts", "truncate"] = Field(
        "facts", description="Without a summariser, or when it fails: `facts` keeps the "
        "older sentences that carry numbers or names as the note; `truncate` drops the "
        "oldest turns until the chat fits.")
    summariser_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A summariser call slower than this is abandoned "
        "and the fallback is used; the request never fails because of compaction.")
    summariser_max_tokens: int = Field(256, ge=1, description="Longest note it may write.")
    verify_note: bool = Field(
        True, description="Check each summary against the turns it notes: drop lines with "
        "numbers the turns never said, add fact sentences whose numbers or names it lacks "
        "(docs/compaction.md).")
    chunk_tokens: int = Field(
        512, ge=16, description="Most transcript tokens per summariser call: a longer "
        "stretch is folded in several calls, each extending the note.")


class ModelLevers(StrictModel):
    """frugal's own per-model settings (the only non-Ray keys of a model entry)."""

    price: Price | None = Field(
        None,
        description="List price override. Without it the price is derived from the node's "
        "$/hour and the router scorecard's measured throughput, else cost.default_price "
        "(docs/cost.md).",
    )
    reasoning: ReasoningBudgets = Field(default_factory=ReasoningBudgets)
    structured: StructuredCaps = Field(
        default_factory=StructuredCaps,
        description="Bounds added to JSON schemas that leave numbers, strings, arrays or "
        "objects unbounded, so a constrained answer cannot run to max_tokens.",
    )
    compaction: CompactionSettings = Field(default_factory=CompactionSettings)
    stream_flush_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="Streaming: after the first two chunks (role and first token go out at "
        "once), send what the engine produced at most every this many ms, as one message. "
        "Each message crosses the gateway hop; fewer of them is what keeps frugal's "
        "streaming throughput near raw vLLM's under load (docs/serving.md). 0 sends every "
        "chunk as soon as it exists.",
    )


class ModelConfig(StrictModel):
    """One served model: an `LLMConfig`-shaped entry."""

    model_loading_config: ModelLoadingConfig
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments (dtype, quantization, max_model_len, ...), same "
        "names as vLLM's EngineArgs.",
    )
    deployment_config: DeploymentConfig = Field(default_factory=DeploymentConfig)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    frugal: ModelLevers = Field(default_factory=ModelLevers)

    @property
    def model_id(self) -> str:
        return self.model_loading_config.model_id

    @property
    def deployment_name(self) -> str:
        """A Ray Serve deployment name derived from the model id (no slashes allowed)."""
        return "model-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.model_id)

    def resolved_engine_kwargs(self) -> dict[str, Any]:
        """Engine kwargs with frugal's defaults under the operator's settings."""
        return {**DEFAULT_ENGINE_KWARGS, **self.engine_kwargs}


class HttpOptions(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    request_timeout_s: float | None = Field(
        None, gt=0, description="End-to-end timeout for one HTTP request (Ray Serve's)."
    )


class GatewayConfig(StrictModel):
    """The OpenAI-compatible ingress."""

    deployment_config: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(
            num_replicas=1,
            max_ongoing_requests=1024,
            max_queued_requests=-1,
            ray_actor_options=RayActorOptions(num_cpus=0.5),
        )
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413."
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer tokens; empty means no authentication (local use).",
    )
    retry_after_s: int = Field(
        2, ge=1, description="Retry-After seconds sent with 503 when an engine is overloaded."
    )
    colocated_model: str | None = Field(
        None,
        description="Run this model's engine inside the gateway's own process: no hop "
        "between gateway and engine. The gateway then takes the model's deployment_config "
        "(replicas, queue) and runtime_env, and the two jobs' CPUs/GPUs add up.",
    )


class RayClusterConfig(StrictModel):
    """How `frugal serve` starts Ray when no cluster is running."""

    address: str | None = Field(
        None, description="Existing cluster address ('auto' to join); none starts a local one."
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs of a local cluster. On CPU-only machines it must exceed "
        "the physical cores or the ingress never schedules next to the engines.",
    )


class CostConfig(StrictModel):
    """How frugal prices tokens and what it compares against (docs/cost.md)."""

    node_usd_per_hour: float = Field(
        1.0, gt=0, description="What one serving node costs; prices derive from it."
    )
    default_price: Price = Field(
        default_factory=lambda: Price(input_per_million=0.05, output_per_million=0.2),
        description="Used for a model with neither a list price nor a scorecard entry.",
    )
    cached_input_discount: float = Field(
        0.9, ge=0, le=1, description="Share taken off cached input tokens (0.9 = 90% off)."
    )
    batch_discount: float = Field(0.5, ge=0, le=1, description="Share taken off batch jobs.")
    baseline_model: str | None = Field(
        None,
        description="The naive baseline savings are measured against: every request on this "
        "model, no cache. Default: the last model listed (list models small to large).",
    )


class StoreConfig(StrictModel):
    """Where durable state lives: files, batches and their lines (lever 4), shared by
    every gateway replica. SQLite (WAL) on a local disk by default; PostgreSQL for a
    cluster, where replicas on several pods must see the same rows (docs/batch.md)."""

    url: str | None = Field(
        None,
        description="SQLAlchemy database URL (postgresql+psycopg://user:pass@host/db). "
        "Default: SQLite at `<state_dir>/frugal.db`. `FRUGAL_STORE_URL` overrides it.",
    )
    state_dir: str = Field(
        "state",
        description="Directory of the SQLite file and of file bytes (relative paths are "
        "relative to the YAML file). `FRUGAL_STATE_DIR` overrides it (the Helm chart "
        "points it at a volume).",
    )
    files_dir: str | None = Field(
        None, description="Where file bytes go. Default: `<state_dir>/files`."
    )

    def state_path(self) -> Path:
        env = os.environ.get("FRUGAL_STATE_DIR")
        return Path(env).expanduser().resolve() if env else Path(self.state_dir)

    def database_url(self) -> str:
        env = os.environ.get("FRUGAL_STORE_URL")
        if env:
            return env
        return self.url or f"sqlite:///{self.state_path() / 'frugal.db'}"

    def files_path(self) -> Path:
        return Path(self.files_dir) if self.files_dir else self.state_path() / "files"


class TenantsConfig(StrictModel):
    """API keys with budgets, rate limits, model lists and quality targets
    (docs/tenants.md). Off: only `gateway.api_keys` (or nothing) is checked."""

    enabled: bool = Field(
        False, description="Keys come from the store (`frugal keys create`); every model "
        "endpoint needs one. `gateway.api_keys` still work beside them."
    )
    rate_limit_storage: str = Field(
        "memory://", description="Where rpm/tpm windows are counted (the `limits` "
        "library's storage URI): `memory://` counts per process (one gateway replica); "
        "`redis://host:6379` or `valkey://host:6379` is shared by every replica. "
        "`FRUGAL_RATE_LIMIT_STORAGE` overrides it (the Helm chart sets it from a Secret)."
    )
    key_cache_s: float = Field(
        2.0, ge=0, description="How long a replica trusts a key lookup: a revoked key "
        "stops working on every replica within this."
    )
    reservation_ttl_s: float = Field(
        900.0, gt=0, description="A budget reservation older than this was left by a "
        "gateway that stopped mid-request, and is released."
    )
    estimate_output_tokens: int = Field(
        1024, ge=1, description="Output tokens reserved against the budget for a request "
        "without max_tokens (its real cost is settled when it ends)."
    )

    def rate_limit_uri(self) -> str:
        return os.environ.get("FRUGAL_RATE_LIMIT_STORAGE") or self.rate_limit_storage


class BatchConfig(StrictModel):
    """Lever 4: the Files and Batches API, run on idle capacity (docs/batch.md)."""

    enabled: bool = Field(True, description="Serve /v1/files and /v1/batches and run batches.")
    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="Larger uploads get a 413."
    )
    max_lines: int = Field(50_000, ge=1, description="A batch input with more lines fails.")
    idle_in_flight: int | None = Field(
        None, ge=1, description="Batch lines in flight per gateway replica when no "
        "interactive request is running. Unset: `idle_per_slot` times the smallest "
        "engine's `max_num_seqs`, shared among the gateway replicas (docs/batch.md)."
    )
    idle_per_slot: float = Field(
        2.0, gt=0, description="When `idle_in_flight` is unset: batch lines in flight per "
        "engine sequence slot on idle engines. Above 1 keeps lines waiting in the engine's "
        "queue, so it never idles while the gateway prepares the next wave of lines."
    )
    busy_in_flight: int = Field(
        0, ge=0, description="Batch lines in flight per gateway replica while interactive "
        "requests run or ran within `quiet_s` (0: batches yield to interactive traffic "
        "and fill the gaps between it)."
    )
    quiet_s: float = Field(
        2.0, ge=0, description="Seconds without an interactive request before batches "
        "climb back towards the idle cap."
    )
    ramp_s: float = Field(
        0.25, ge=0, description="Once quiet, the cap doubles every `ramp_s` seconds from "
        "`busy_in_flight` (at least 1) up to `idle_in_flight`, so a request arriving soon "
        "after a quiet spell finds few lines to preempt (0 jumps straight to the idle cap)."
    )
    preempt: bool = Field(
        True, description="When an interactive request arrives, abort the batch lines "
        "above `busy_in_flight` at once, keeping the oldest (the aborted ones run again "
        "later) instead of letting them finish."
    )
    engine_priority: int = Field(
        10, ge=0, description="vLLM request priority of batch lines (interactive ones are "
        "0; lower runs first) on engines with `scheduling_policy: priority`."
    )
    lease_s: float = Field(
        15.0, gt=0, description="A batch whose runner has not renewed its lease for this "
        "long (its replica died) is taken over by another runner."
    )
    poll_s: float = Field(0.5, gt=0, description="How often an idle runner looks for work.")


class FrugalConfig(StrictModel):
    """The whole deployments YAML."""

    http_options: HttpOptions = Field(default_factory=HttpOptions)
    ray: RayClusterConfig = Field(default_factory=RayClusterConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    tenants: TenantsConfig = Field(default_factory=TenantsConfig)
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> FrugalConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.model_id in seen:
                raise ValueError(f"duplicate model_id {model.model_id!r}")
            seen.add(model.model_id)
        if self.cost.baseline_model is not None and self.cost.baseline_model not in seen:
            raise ValueError(f"cost.baseline_model {self.cost.baseline_model!r} is not a model")
        for model in self.models:
            summariser = model.frugal.compaction.summariser
            if summariser is not None and summariser not in seen:
                raise ValueError(f"{model.model_id}: frugal.compaction.summariser "
                                 f"{summariser!r} is not a model")
        colocated = self.gateway.colocated_model
        if colocated is not None and colocated not in seen:
            raise ValueError(f"gateway.colocated_model {colocated!r} is not a model")
        return self

    @property
    def baseline_model(self) -> str:
        return self.cost.baseline_model or self.models[-1].model_id

    def model(self, model_id: str) -> ModelConfig:
        for model in self.models:
            if model.model_id == model_id:
                return model
        raise KeyError(model_id)


class ConfigError(Exception):
    """A deployments file that cannot be used; `problems` holds one line per error."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))

    def render(self) -> str:
        return "\n".join(f"{self.path}: {line}" for line in self.problems)


def _format_validation_error(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (not part of the schema; check the spelling)"
        got = item.get("input")
        suffix = "" if item["type"] in ("missing", "extra_forbidden") else f" (got {got!r})"
        lines.append(f"{key}: {message}{suffix}")
    return lines


def _looks_local(source: str) -> bool:
    """Paths start with '.', '/' or '~'; anything else that is not on disk is a hub id."""
    return source.startswith((".", "/", "~"))


def _resolve_sources(config: FrugalConfig, base_dir: Path) -> list[str]:
    """Make local model paths absolute; report local paths that do not exist."""
    problems = []
    for index, model in enumerate(config.models):
        source = model.model_loading_config.model_source
        candidate = (base_dir / os.path.expanduser(source)).resolve()
        if candidate.exists():
            model.model_loading_config.model_source = str(candidate)
        elif _looks_local(source):
            problems.append(
                f"models.{index}.model_loading_config.model_source: no such directory "
                f"{str(candidate)!r} (expected a checkpoint directory or a hub id)"
            )
    return problems


def _check_engine_kwargs(config: FrugalConfig) -> list[str]:
    """Check engine kwarg names against the installed vLLM, when it can be imported."""
    try:
        import dataclasses

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.cli_args import FrontendArgs  # noqa: F401
    except Exception:  # vLLM not installed here: the engine will check at start-up.
        return []
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    known = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
    known |= {field.name for field in dataclasses.fields(FrontendArgs)}
    problems = []
    for index, model in enumerate(config.models):
        for key in model.engine_kwargs:
            if key not in known:
                problems.append(
                    f"models.{index}.engine_kwargs.{key}: not a vLLM engine argument "
                    "(see vllm.engine.arg_utils.EngineArgs)"
                )
        quantization = model.engine_kwargs.get("quantization")
        if quantization is not None and quantization not in supported_quantization():
            problems.append(
                f"models.{index}.engine_kwargs.quantization: {quantization!r} is not supported "
                f"by the installed vLLM on this device (supported: "
                f"{', '.join(supported_quantization())})"
            )
        if "model" in model.engine_kwargs:
            problems.append(
                f"models.{index}.engine_kwargs.model: set model_loading_config.model_source "
                "instead"
            )
    return problems


def _check_weights(config: FrugalConfig) -> list[str]:
    """A local checkpoint whose files cannot be loaded: a config.json that is not JSON, a
    safetensors file whose header does not parse or whose size does not match it (a
    partial copy, a truncated download), or tensors whose shapes disagree with the
    architecture config.json describes (weights of another size). Caught here in
    seconds, before Ray starts, instead of by each engine start that Ray Serve retries.
    Only headers are read; the architecture is built on PyTorch's meta device."""
    import json

    from safetensors import safe_open

    problems = []
    for index, model in enumerate(config.models):
        folder = Path(model.model_loading_config.model_source)
        if not folder.is_dir():  # a hub id or a GGUF file: the engine checks those
            continue
        where = f"models.{index}.model_loading_config.model_source: model {model.model_id!r}"
        try:
            settings = json.loads((folder / "config.json").read_text())
        except FileNotFoundError:
            problems.append(f"{where}: no config.json in {str(folder)!r} (not a checkpoint)")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: cannot read {str(folder / 'config.json')!r}: {exc}")
            continue
        shapes: dict[str, tuple[int, ...]] = {}
        for weights in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(weights), "np") as handle:
                    for key in handle.keys():
                        shapes[key] = tuple(handle.get_slice(key).get_shape())
            except Exception as exc:  # SafetensorError, OSError: all mean unreadable
                problems.append(f"{where}: cannot read the weights {str(weights)!r}: {exc} "
                                "(a truncated copy or a corrupt checkpoint?)")
        if shapes and not problems and "quantization_config" not in settings:
            problems += [f"{where}: {line}" for line in _shape_mismatches(folder, shapes)]
    return problems


def _shape_mismatches(folder: Path, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Tensors of the checkpoint whose shape is not the one its architecture (built from
    config.json by transformers, on the meta device: no memory) has under that name.
    Quantized checkpoints store packed tensors and are left to the engine, as are
    architectures transformers does not know."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        expected = {name: tuple(t.shape) for name, t in built.state_dict().items()}
    except Exception:  # custom code, an unknown model_type: the engine will say
        return []
    wrong = [(name, shape, expected[name]) for name, shape in shapes.items()
             if name in expected and expected[name] != shape]
    if not wrong:
        return []
    name, shape, want = wrong[0]
    return [f"{len(wrong)} tensor(s) do not fit the architecture of config.json: {name} is "
            f"{list(shape)}, config.json makes it {list(want)} (weights of another model?)"]


def supported_quantization() -> list[str]:
    """Quantization methods the installed vLLM accepts on this machine's device."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.platforms import current_platform

    methods = list(QUANTIZATION_METHODS)
    allowed = current_platform.supported_quantization
    return [m for m in methods if not allowed or m in allowed]


def load_config(path: str | Path, *, check_engine_args: bool = False) -> FrugalConfig:
    """Read and validate a deployments YAML; raise `ConfigError` listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(path, ["(top level): expected a mapping with a 'models' list"])
    try:
        config = FrugalConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, _format_validation_error(exc)) from None
    base_dir = path.parent.resolve()
    problems = _resolve_sources(config, base_dir)
    for key in ("scorecard", "predictor"):  # router artefacts live next to the YAML
        value = getattr(config.router, key)
        if value is not None:
            setattr(config.router, key, str((base_dir / os.path.expanduser(value)).resolve()))
    for key in ("state_dir", "files_dir"):  # durable state too
        value = getattr(config.store, key)
        if value is not None:
            setattr(config.store, key, str((base_dir / os.path.expanduser(value)).resolve()))
    if check_engine_args:
        problems += _check_engine_kwargs(config) + _check_weights(config)
    if problems:
        raise ConfigError(path, problems)
    return config


def dump_config(config: FrugalConfig) -> str:
    """YAML text of a config (used to hand a resolved config to a subprocess)."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)

