"""Hand-written hostile inputs against the real server (Ray Serve + vLLM, the session
fixture), through `/v1/chat/completions`, `/v1/completions` and `/v1/responses`.

schemathesis (tests/test_fuzz_server.py) generates what the API document allows; this
file sends what a hostile or broken client sends instead: bodies nested 5,000 deep, not
UTF-8, lone surrogates, `NaN` literals, integers past any range, catastrophic regexes,
recursive schemas, 20,000 messages, 10 MB strings. Each case is a row of `CASES`:
(name, endpoint, body or raw bytes, allowed statuses). Every answer must come within
`CASE_TIMEOUT_S`, never be a 5xx, and every error must be the OpenAI error object. A
200 is allowed only where the request is legitimately servable (a regex that is slow
for backtracking engines but linear for a grammar, `max_tokens` past the context, which
vLLM clamps to what is left of it); the row says so.

After the barrage every model still answers a plain request, from the same engine
processes (no engine died or was restarted by it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
from helpers import chat_body

pytestmark = pytest.mark.server

#: No hostile request may take longer than this (a hang fails the case).
CASE_TIMEOUT_S = 60
#: How long the models may take to answer before the barrage (an earlier test of the
#: session, tests/test_faults.py, restarts zoo-s-tight's engine on purpose).
READY_TIMEOUT_S = 600

MODEL = "zoo-s"  # tiny, 1,024-token context
MODELS = ("zoo-s", "zoo-s-tight", "zoo-chat")
CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
ALL = (CHAT, COMPLETIONS, RESPONSES)
TAGS = {CHAT: "chat", COMPLETIONS: "completions", RESPONSES: "responses"}

BAD = frozenset({400})
#: A legitimately servable request: it may be answered (with few tokens) or refused.
SERVABLE = frozenset({200, 400})
DEEP = 5_000


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | list[Any] | bytes
    allowed: frozenset[int]
    headers: dict[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        """Raw bytes as given; anything else as Python's json writes it (which emits
        `NaN`/`Infinity` and `\\ud800` escapes for lone surrogates, as many clients do)."""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def ask(path: str, content: Any, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    """A request of `path` whose prompt is `content`, generating a few tokens."""
    if path == CHAT:
        body = {"model": model, "messages": [{"role": "user", "content": content}],
                "max_tokens": 8}
    elif path == COMPLETIONS:
        body = {"model": model, "prompt": content, "max_tokens": 8}
    else:
        body = {"model": model, "input": content, "max_output_tokens": 16}
    return {**body, **extra}


def raw_with(path: str, content: bytes) -> bytes:
    """A request body of `path` whose prompt is the raw JSON value `content`."""
    marker = "\x00MARK\x00"
    text = json.dumps(ask(path, marker)).encode()
    return text.replace(json.dumps(marker).encode(), content)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def max_tokens_name(path: str) -> str:
    return {CHAT: "max_tokens", COMPLETIONS: "max_tokens", RESPONSES: "max_output_tokens"}[path]


def schema_format(path: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The field that asks `path` for JSON matching `schema`."""
    if path == RESPONSES:
        return {"text": {"format": {"type": "json_schema", "name": "s", "schema": schema}}}
    if path == CHAT:
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "s", "schema": schema}}}
    return {"structured_outputs": {"json": schema}}


RECURSIVE_NO_BASE = {"type": "object", "properties": {"child": {"$ref": "#"}},
                     "required": ["child"]}
RECURSIVE_WITH_BASE = {"type": "object", "properties": {"child": {"$ref": "#"}}}
def flat_schema(properties: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"field_{i}": {"type": "string", "maxLength": 4}
                                             for i in range(properties)}}


#: Past the structured lever's limit (1,000 declared properties): xgrammar compiled
#: this for over 60 s in the engine before the limit.
HUGE_SCHEMA = flat_schema(5_000)
LARGEST_SCHEMA = flat_schema(1_000)
#: Nested objects as deep as the JSON parser still reads (past it: 400 at parse).
DEEP_SCHEMA: dict[str, Any] = {"type": "string"}
for _ in range(200):
    DEEP_SCHEMA = {"type": "object", "properties": {"a": DEEP_SCHEMA}}
OVER_CONTEXT = "the quick brown fox jumps over the lazy dog " * 300  # ~3,000 tokens
MB = 1024 * 1024


def _cases() -> Iterator[Case]:
    for path in ALL:
        tag = TAGS[path]
        tokens = max_tokens_name(path)
        # --- bodies that are not a JSON object --------------------------------------
        yield Case(f"{tag}-empty-body", path, b"", BAD)
        yield Case(f"{tag}-whitespace-body", path, b" \n\t ", BAD)
        yield Case(f"{tag}-json-array-body", path, [ask(path, "hi")], BAD)
        yield Case(f"{tag}-json-null-body", path, b"null", BAD)
        yield Case(f"{tag}-truncated-json", path, json.dumps(ask(path, "hi")).encode()[:-3], BAD)
        yield Case(f"{tag}-not-utf8", path, raw_with(path, b'"caf\xe9 \xff\xfe"'), BAD)
        yield Case(f"{tag}-utf8-encoded-surrogate", path, raw_with(path, b'"\xed\xa0\x80"'), BAD)
        yield Case(f"{tag}-nested-{DEEP}-top-level", path, nested(DEEP), BAD)
        yield Case(f"{tag}-nested-{DEEP}-objects-top-level", path,
                   b'{"a":' * DEEP + b"1" + b"}" * DEEP, BAD)
        yield Case(f"{tag}-nested-{DEEP}-in-content", path, raw_with(path, nested(DEEP)), BAD)
        yield Case(f"{tag}-form-encoded", path, b"model=zoo-s&prompt=hi", BAD,
                   {"content-type": "application/x-www-form-urlencoded"})
        # A JSON body labelled text/plain is servable: the gateway reads JSON whatever
        # the label (as OpenAI's API does); refusing it (415) would be fine too.
        yield Case(f"{tag}-json-as-text-plain", path, ask(path, "hi"),
                   frozenset({200, 400, 415}), {"content-type": "text/plain"})
        # --- lone surrogates (Python's json writes them as \ud800 escapes) ------------
        yield Case(f"{tag}-lone-high-surrogate", path, ask(path, "a\ud800b"), BAD)
        yield Case(f"{tag}-lone-low-surrogate", path, ask(path, "\udfff"), BAD)
        yield Case(f"{tag}-reversed-surrogate-pair", path, ask(path, "\udc00\ud800"), BAD)
        yield Case(f"{tag}-surrogate-model-name", path, ask(path, "hi", model="zoo\ud800"),
                   frozenset({400, 404}))
        # --- NaN / Infinity literals (not JSON, but Python's json writes them) --------
        yield Case(f"{tag}-nan-temperature", path, ask(path, "hi", temperature=float("nan")),
                   BAD)
        yield Case(f"{tag}-infinity-top-p", path, ask(path, "hi", top_p=float("inf")), BAD)
        yield Case(f"{tag}-minus-infinity-temperature", path,
                   ask(path, "hi", temperature=float("-inf")), BAD)
        yield Case(f"{tag}-float-1e400", path,
                   json.dumps(ask(path, "hi", temperature=0.5)).replace("0.5", "1e400").encode(),
                   BAD)  # reads as inf in Python
        yield Case(f"{tag}-integer-5000-digits", path,
                   json.dumps(ask(path, "hi", seed=7)).replace("7", "9" * 5000).encode(), BAD)
        # --- token limits -------------------------------------------------------------
        # Past the context vLLM clamps max_tokens to what is left of it: servable.
        yield Case(f"{tag}-{tokens}-1e9", path, ask(path, "Say hi.", **{tokens: 10**9}),
                   SERVABLE)
        yield Case(f"{tag}-{tokens}-2^63", path, ask(path, "hi", **{tokens: 2**63}), BAD)
        yield Case(f"{tag}-{tokens}-negative", path, ask(path, "hi", **{tokens: -1}), BAD)
        # --- sizes: over the context, below and above the body limit (4 MiB) ----------
        yield Case(f"{tag}-over-context", path, ask(path, OVER_CONTEXT), BAD)
        yield Case(f"{tag}-3mb-content", path, ask(path, "a" * (3 * MB)), BAD)
        yield Case(f"{tag}-10mb-content", path, ask(path, "a" * (10 * MB)),
                   frozenset({400, 413}))
        # --- JSON schemas ---------------------------------------------------------------
        yield Case(f"{tag}-recursive-schema-no-base-case", path,
                   ask(path, "hi", **schema_format(path, RECURSIVE_NO_BASE)), BAD)
        yield Case(f"{tag}-recursive-schema-with-base-case", path,
                   ask(path, "hi", **schema_format(path, RECURSIVE_WITH_BASE)), SERVABLE)
        yield Case(f"{tag}-huge-schema-5000-properties", path,
                   ask(path, "hi", **schema_format(path, HUGE_SCHEMA)), BAD)
        yield Case(f"{tag}-schema-1000-properties", path,
                   ask(path, "hi", **schema_format(path, LARGEST_SCHEMA)), SERVABLE)
        yield Case(f"{tag}-schema-nested-200-deep", path,
                   ask(path, "hi", **schema_format(path, DEEP_SCHEMA)), SERVABLE)
        yield Case(f"{tag}-schema-not-an-object", path,
                   ask(path, "hi", **schema_format(path, [1, 2])), BAD)  # type: ignore[arg-type]

    # --- chat: messages and roles ---------------------------------------------------
    yield Case("chat-unknown-role", CHAT, {"model": MODEL, "max_tokens": 8,
                                           "messages": [{"role": "hacker", "content": "hi"}]},
               BAD)
    yield Case("chat-surrogate-role", CHAT, {"model": MODEL, "max_tokens": 8,
                                             "messages": [{"role": "\ud800", "content": "hi"}]},
               BAD)
    yield Case("chat-no-messages", CHAT, {"model": MODEL, "messages": []}, BAD)
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"}
            for i in range(20_000)]
    yield Case("chat-20000-messages", CHAT, {"model": MODEL, "messages": many,
                                             "max_tokens": 8}, BAD)
    # zoo-chat compacts long chats (lever 8): 20,000 messages must not make it summarise
    # for ever.
    yield Case("chat-20000-messages-compacting-model", CHAT,
               {"model": "zoo-chat", "messages": many, "max_tokens": 8}, SERVABLE)
    yield Case("chat-request-chat-template", CHAT,
               ask(CHAT, "hi", chat_template="{{ ''.__class__.__mro__ }}"), BAD)
    # --- responses: input items -----------------------------------------------------
    yield Case("responses-unknown-role", RESPONSES,
               ask(RESPONSES, [{"role": "hacker", "content": "hi"}]), BAD)
    yield Case("responses-20000-input-items", RESPONSES,
               ask(RESPONSES, [{"role": "user", "content": "hi"}] * 20_000), BAD)
    # frugal's Responses API returns no logprobs: the field is not passed on, so any
    # value is served (ignored).
    yield Case("responses-top-logprobs-1e9", RESPONSES,
               ask(RESPONSES, "hi", top_logprobs=10**9), SERVABLE)
    yield Case("responses-unknown-previous-response", RESPONSES,
               ask(RESPONSES, "hi", previous_response_id="resp_\ud800"),
               frozenset({400, 404}))
    # --- chat and completions: sampling integers ---------------------------------------
    for path in (CHAT, COMPLETIONS):
        tag = TAGS[path]
        for value, label in ((10**9, "1e9"), (2**63, "2^63"), (-1, "negative"), (0, "zero")):
            yield Case(f"{tag}-n-{label}", path, ask(path, "hi", n=value), BAD)
        yield Case(f"{tag}-nan-presence-penalty", path,
                   ask(path, "hi", presence_penalty=float("nan")), BAD)
        yield Case(f"{tag}-nan-logit-bias", path, ask(path, "hi", logit_bias={"1": float("nan")}),
                   BAD)  # was served: the NaN reached the sampler
        yield Case(f"{tag}-logit-bias-1e400", path, json.dumps(
            ask(path, "hi", logit_bias={"1": 0.5})).replace("0.5", "1e400").encode(), BAD)
        yield Case(f"{tag}-logit-bias-token-1e12", path, ask(path, "hi", logit_bias={
            str(10**12): 100}), BAD)
        # Catastrophic for a backtracking engine, linear for a grammar: servable.
        for regex, label in (("(a+)+$", "nested-quantifier"), ("(a|a)*b", "ambiguous-alternation")):
            yield Case(f"{tag}-regex-{label}", path,
                       ask(path, "hi", structured_outputs={"regex": regex}), SERVABLE)
        yield Case(f"{tag}-regex-invalid", path,
                   ask(path, "hi", structured_outputs={"regex": "(a"}), BAD)
        yield Case(f"{tag}-regex-100kb", path, ask(path, "hi", structured_outputs={
            "regex": "(" + "|".join(f"x{i}y" for i in range(20_000)) + ")+"}), SERVABLE)
        yield Case(f"{tag}-json-and-regex-at-once", path, ask(path, "hi", structured_outputs={
            "regex": "a+", "json": {"type": "string"}}), BAD)
    yield Case("chat-max-completion-tokens-1e9", CHAT,
               ask(CHAT, "Say hi.", max_completion_tokens=10**9), SERVABLE)
    yield Case("chat-max-completion-tokens-2^63", CHAT,
               ask(CHAT, "hi", max_completion_tokens=2**63), BAD)
    yield Case("chat-max-completion-tokens-negative", CHAT,
               ask(CHAT, "hi", max_completion_tokens=-5), BAD)
    for value, label in ((10**9, "1e9"), (2**63, "2^63"), (-1, "negative")):
        yield Case(f"chat-top-logprobs-{label}", CHAT,
                   ask(CHAT, "hi", logprobs=True, top_logprobs=value), BAD)
        yield Case(f"completions-logprobs-{label}", COMPLETIONS,
                   ask(COMPLETIONS, "hi", logprobs=value), BAD)
        # vLLM 0.32 accepts best_of and its V1 engine ignores it: served, unless past the
        # engine's integer range (the gateway's 400).
        yield Case(f"completions-best-of-{label}", COMPLETIONS,
                   ask(COMPLETIONS, "hi", best_of=value), BAD if value == 2**63 else SERVABLE)
    yield Case("chat-logprobs-not-a-bool", CHAT, ask(CHAT, "hi", logprobs=10**9), BAD)
    # --- completions: prompts that are not text -------------------------------------------
    # Prompts without text hung for ever in routing (Ray's prefix-affinity router divided
    # by their zero text length), valid token ids included.
    yield Case("completions-token-ids", COMPLETIONS, ask(COMPLETIONS, [5, 6, 7]), SERVABLE)
    yield Case("completions-token-id-1e12", COMPLETIONS, ask(COMPLETIONS, [10**12]), BAD)
    yield Case("completions-token-id-negative", COMPLETIONS, ask(COMPLETIONS, [-1]), BAD)
    yield Case("completions-empty-prompt-list", COMPLETIONS, ask(COMPLETIONS, []), BAD)
    yield Case("completions-prompt-embeds-garbage", COMPLETIONS,
               {"model": MODEL, "prompt_embeds": "bm90IGEgdGVuc29y", "max_tokens": 8}, BAD)
    yield Case("completions-20000-prompts", COMPLETIONS,
               ask(COMPLETIONS, ["hi"] * 20_000, max_tokens=1), SERVABLE)


CASES = list(_cases())


def _error_shape(reply: httpx.Response) -> None:
    body = reply.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error


def _server_session(log_path: Any) -> int:
    """The session id of this test server's `frugal serve` (the launcher starts it in a
    session of its own, named by its YAML beside the log)."""
    config = str(log_path.with_suffix(".yaml"))
    for process in psutil.process_iter(["cmdline"]):
        if config in (process.info["cmdline"] or []):
            return os.getsid(process.pid)
    raise AssertionError(f"no frugal serve process for {config}")


def _engine_pids(session: int) -> set[int]:
    """The vLLM engine processes of this server (not of other servers on the machine)."""
    pids = set()
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if os.getsid(process.pid) != session:
                continue
        except OSError:
            continue
        text = " ".join([process.info["name"] or "", *(process.info["cmdline"] or [])])
        if "EngineCore" in text:
            pids.add(process.pid)
    return pids


def _answers(base_url: str, model: str) -> int | str:
    try:
        reply = httpx.post(f"{base_url}/chat/completions", timeout=CASE_TIMEOUT_S,
                           json=chat_body(model, max_tokens=2))
    except httpx.HTTPError as exc:
        return repr(exc)
    return reply.status_code


@pytest.fixture(scope="module")
def engines_before(server) -> set[int]:
    """Every model answering, and the engine processes serving them, before the barrage."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for model in MODELS:
        while (status := _answers(server.base_url, model)) != 200:
            assert time.monotonic() < deadline, f"{model} not answering: {status}"
            time.sleep(2)
    pids = _engine_pids(_server_session(server.log_path))
    assert len(pids) >= len(MODELS), pids
    return pids


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_is_a_client_error(server, engines_before: set[int], case: Case) -> None:
    headers = {"content-type": "application/json", **case.headers}
    started = time.monotonic()
    try:
        reply = httpx.post(server.root_url + case.path, content=case.content(),
                           headers=headers, timeout=CASE_TIMEOUT_S)
    except httpx.TimeoutException:
        pytest.fail(f"{case.name}: no answer within {CASE_TIMEOUT_S} s")
    elapsed = time.monotonic() - started
    print(f"{case.name}: {reply.status_code} in {elapsed:.1f} s "
          f"{reply.text[:160]!r}")
    assert reply.status_code < 500, reply.text[:2000]
    assert reply.status_code in case.allowed, reply.text[:2000]
    if reply.status_code >= 400:
        _error_shape(reply)
    else:
        assert isinstance(reply.json(), dict)


def test_every_model_survives_the_barrage(server, engines_before: set[int]) -> None:
    """Runs after the cases (pytest keeps the file's order): same engines, all answering."""
    for model in MODELS:
        assert _answers(server.base_url, model) == 200, model
    after = _engine_pids(_server_session(server.log_path))
    assert after == engines_before, f"engines before {engines_before}, after {after}"
