"""Faults measured on a real server: what a client sees and how long recovery takes.

Each function breaks one thing on purpose and returns what was measured; the suite's
fault tests assert on these results and `frugal bench faults` reports them
(docs/reliability.md). Every wait is bounded, every request goes to loopback.

- `kill_server`: `frugal serve` killed at a chosen moment (starting, serving, 5 s into a
  SIGTERM shutdown): how long until none of its processes is left.
- `kill_engine`: a model's vLLM engine killed under traffic: what the requests saw and
  how long until the model answers again (Ray Serve replaces the replica).
- `kill_gateway_replica`: one gateway replica killed: whether the other kept answering
  and how long until the killed one's port answers again.
- `failed_start`: a model that cannot load: how long `frugal serve` takes to say so, and
  whether its message names the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from pydantic import BaseModel

from serving.evaluation.launcher import Spawned, gateway_urls, kill_session, session_pids

#: Kill moments of `kill_server`.
MOMENTS = ("starting", "serving", "sigterm+5s")


class KillResult(BaseModel):
    moment: str
    processes: int  # in the server's session when it was killed
    gone_s: float | None  # from the kill until none was left; None: some outlived the wait
    left: list[str]  # what outlived the wait (command lines)


class RecoveryResult(BaseModel):
    fault: str
    statuses: dict[str, int]  # what the probe requests saw from the fault until recovery
    recovered_s: float | None  # from the fault until answered again; None: not in time
    longest_probe_s: float = 0.0  # the longest any one probe waited for its answer
    timeline: list[str] = []  # "t=S status (took S)" per probe, from the fault on
    other_errors: int = 0  # failures where nothing was broken (the other replica)


class StartFailure(BaseModel):
    case: str
    exit_code: int | None
    failed_after_s: float  # from the start until `frugal serve` exited
    names_model: bool
    message: str


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:160]
    except psutil.Error:
        return str(pid)


def _wait_gone(session_id: int, timeout_s: float) -> float | None:
    started = time.monotonic()
    while session_pids(session_id):
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.1)
    return time.monotonic() - started


def _engine_started(session_id: int) -> bool:
    return any("EngineCore" in _cmdline(pid) for pid in session_pids(session_id))


def _stream_in_flight(url: str, model: str) -> None:
    """A long stream left open while the server dies (its end is the point)."""
    with contextlib.suppress(httpx.HTTPError):
        body = {"model": model, "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                "max_tokens": 512, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as reply:
            for _ in reply.iter_lines():
                pass


def kill_server(config: dict[str, Any], moment: str, *, log_dir: Path | None = None,
                deadline_s: float = 60.0, start_timeout_s: float = 900.0) -> KillResult:
    """Start `frugal serve` on `config` and kill it at `moment`:
    - `starting`: SIGKILL of `frugal serve` once an engine process is starting;
    - `serving`: SIGKILL of `frugal serve` while a stream is in flight;
    - `sigterm+5s`: SIGTERM to its process group (what a supervisor sends), then SIGKILL
      to the group 5 s later, in the middle of the graceful shutdown.
    Returns how long until none of its processes was left (within `deadline_s`)."""
    if moment not in MOMENTS:
        raise ValueError(f"moment must be one of {MOMENTS}")
    server = Spawned(config, log_dir=log_dir)
    session = server.session_id
    try:
        if moment == "starting":
            deadline = time.monotonic() + start_timeout_s
            while not _engine_started(session):
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no engine started; log: {server.log_path}")
                time.sleep(0.2)
        else:
            url = server.wait_ready(start_timeout_s)
            model = config["models"][0]["model_loading_config"]["model_id"]
            threading.Thread(target=_stream_in_flight, args=(url, model), daemon=True).start()
            time.sleep(1.0)
        processes = len(session_pids(session))
        if moment == "sigterm+5s":
            os.killpg(session, signal.SIGTERM)
            time.sleep(5.0)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)
            killed_at = time.monotonic()
        else:
            killed_at = time.monotonic()
            os.kill(session, signal.SIGKILL)
        server.process.wait(timeout=30)
        gone = _wait_gone(session, deadline_s - (time.monotonic() - killed_at))
        gone_s = None if gone is None else time.monotonic() - killed_at
        left = [_cmdline(pid) for pid in session_pids(session)]
        return KillResult(moment=moment, processes=processes, gone_s=gone_s, left=left)
    finally:
        kill_session(session)  # never leak a server into what runs next
        server.close_log()


def engine_of(deployment: str, session_id: int) -> psutil.Process:
    """The vLLM EngineCore process of a model replica (`model-<id>`) of the server whose
    session is `session_id` (another server on the machine may serve the same model)."""
    for pid in session_pids(session_id):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if "EngineCore" in " ".join(process.cmdline()) and any(
                    deployment in " ".join(parent.cmdline()) for parent in process.parents()):
                return process
    raise LookupError(f"no engine process found for {deployment} in session {session_id}")


#: How long a probe waits: a client's patience. Past it the probe counts as a hang.
PROBE_TIMEOUT_S = 120.0


def _probe(url: str, model: str) -> str:
    """One short chat request: its status, or the kind of connection error."""
    body = {"model": model, "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "max_tokens": 2}
    try:
        reply = httpx.post(f"{url}/chat/completions", json=body, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if reply.status_code in (429, 503) and "retry-after" not in reply.headers:
        return f"{reply.status_code} without Retry-After"
    return str(reply.status_code)


def kill_engine(url: str, model: str, session_id: int, *, timeout_s: float = 600.0,
                interval_s: float = 0.25) -> RecoveryResult:
    """SIGKILL the engine of `model` (of the server of `session_id`) while probe requests
    arrive every `interval_s`; stop at the first 200 after the kill. What the probes saw
    meanwhile is the client's view."""
    engine = engine_of(f"model-{model}", session_id)
    assert _probe(url, model) == "200", f"{model} does not answer before the fault"
    statuses: Counter[str] = Counter()
    timeline: list[str] = []
    longest = 0.0
    engine.kill()
    killed_at = time.monotonic()
    engine.wait(timeout=30)
    recovered: float | None = None
    while time.monotonic() - killed_at < timeout_s:
        sent = time.monotonic()
        status = _probe(url, model)
        took = time.monotonic() - sent
        longest = max(longest, took)
        statuses[status] += 1
        timeline.append(f"t={sent - killed_at:.1f} {status} (took {took:.1f})")
        if status == "200":
            recovered = time.monotonic() - killed_at
            break
        time.sleep(interval_s)
    return RecoveryResult(fault=f"engine of {model} killed", statuses=dict(statuses),
                          recovered_s=recovered, longest_probe_s=longest,
                          timeline=_compress(timeline))


def _compress(timeline: list[str], keep: int = 6) -> list[str]:
    """The first and last probes (a long run of the same 503 says nothing new)."""
    if len(timeline) <= 2 * keep:
        return timeline
    return [*timeline[:keep], f"... {len(timeline) - 2 * keep} more ...", *timeline[-keep:]]


def _listener_of(port: int) -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        if "ServeReplica:frugal:gateway" not in " ".join(process.info["cmdline"] or []):
            continue
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    return process
    raise LookupError(f"no gateway replica listens on {port}")


def _health(url: str) -> str:
    try:
        return str(httpx.get(url.removesuffix("/v1") + "/health", timeout=10).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def kill_gateway_replica(base_url: str, victim_url: str, model: str, *,
                         timeout_s: float = 300.0, interval_s: float = 0.25) -> RecoveryResult:
    """SIGKILL the gateway replica serving `victim_url` (its direct-ingress port) while
    probes go to the others: `statuses` is what the victim's port answered until the
    server had as many gateway replicas answering as before (Ray Serve starts a new
    one, on a free port of the range: not always the same one), `other_errors` the
    failures of the other replicas meanwhile."""
    before = gateway_urls(base_url)
    others = [url for url in before if url != victim_url]
    port = int(victim_url.removesuffix("/v1").rsplit(":", 1)[1])
    victim = _listener_of(port)
    statuses: Counter[str] = Counter()
    other_errors = 0
    victim.kill()
    killed_at = time.monotonic()
    victim.wait(timeout=30)
    recovered: float | None = None
    replaced: list[str] = []
    while time.monotonic() - killed_at < timeout_s:
        other_errors += sum(_probe(url, model) != "200" for url in others)
        statuses[_health(victim_url)] += 1
        now = gateway_urls(base_url)
        replaced = [url for url in now if url not in others]
        if len(now) >= len(before) and all(_probe(url, model) == "200" for url in replaced):
            recovered = time.monotonic() - killed_at
            break
        time.sleep(interval_s)
    return RecoveryResult(fault="gateway replica killed", statuses=dict(statuses),
                          recovered_s=recovered, other_errors=other_errors,
                          timeline=[f"replaced by {', '.join(replaced) or 'nothing'}"])


def failed_start(config: dict[str, Any], case: str, model: str, *,
                 log_dir: Path | None = None, timeout_s: float = 600.0) -> StartFailure:
    """Start `frugal serve` on a config with a model that cannot load; how long until it
    exits, its exit code, and whether its message names the model."""
    server = Spawned(config, log_dir=log_dir)
    started = time.monotonic()
    try:
        try:
            code: int | None = server.process.wait(timeout=timeout_s)
        except Exception:
            code = None
        elapsed = time.monotonic() - started
        text = " ".join(server.log_path.read_text(errors="replace").split())
        at = text.find(f"model {model!r}")  # frugal's message names the model so
        message = text[at:at + 300] if at >= 0 else text[-300:]
        return StartFailure(case=case, exit_code=code, failed_after_s=elapsed,
                            names_model=f"'{model}'" in text or f"model {model}" in text
                            or f"{model}:" in text or f"/{model}" in text,
                            message=message)
    finally:
        kill_session(server.session_id)
        server.close_log()


class RestartResult(BaseModel):
    ready_s: float  # from the restart until READY
    stored_intact: bool  # a stored response made before the kill reads back the same


def restart_with_store(config: dict[str, Any], model: str, *, log_dir: Path | None = None,
                       start_timeout_s: float = 900.0) -> RestartResult:
    """`kill -9` of every process of a serving `frugal serve` (a machine losing power),
    then a restart on the same store: how long until READY, and whether a response
    stored before the kill reads back the same."""
    first = Spawned(config, log_dir=log_dir)
    try:
        url = first.wait_ready(start_timeout_s)
        made = httpx.post(f"{url}/responses", timeout=60, json={
            "model": model, "input": "What is 2 + 3?", "max_output_tokens": 8}).json()
    finally:
        kill_session(first.session_id)
        first.close_log()
    second = Spawned(config, log_dir=log_dir, port=first.port)
    started = time.monotonic()
    try:
        url = second.wait_ready(start_timeout_s)
        ready_s = time.monotonic() - started
        again = httpx.get(f"{url}/responses/{made['id']}", timeout=60)
        intact = again.status_code == 200 and again.json().get("output") == made.get("output")
        return RestartResult(ready_s=ready_s, stored_intact=intact)
    finally:
        kill_session(second.session_id)
        second.close_log()


def fault_config(model_dir: Path, state_dir: Path, model: str = "zoo-s") -> dict[str, Any]:
    """The faults' server: one small model (a replica Ray Serve health-checks every 2 s)
    behind two gateway replicas, its store in `state_dir`."""
    return {
        "ray": {"num_cpus": 8},
        "store": {"state_dir": str(state_dir)},
        "gateway": {"deployment_config": {"num_replicas": 2, "max_ongoing_requests": 256}},
        "models": [{
            "model_loading_config": {"model_id": model, "model_source": str(model_dir)},
            "engine_kwargs": {"dtype": "bfloat16", "enforce_eager": True,
                              "max_model_len": 1024},
            "deployment_config": {"num_replicas": 1, "health_check_period_s": 2,
                                  "ray_actor_options": {"num_cpus": 1}},
            "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        }],
    }


def broken_checkpoints(model_dir: Path, scratch: Path) -> dict[str, Path]:
    """Copies of `model_dir` that cannot load: `truncated` (half its weights file, as a
    partial download leaves it), `mismatched` (a config.json of another size, so the
    weights' shapes disagree with it), both caught by config validation before Ray
    starts; and `unsupported` (an architecture vLLM does not implement), which only the
    engine finds out."""
    def copy(name: str) -> Path:
        target = scratch / name
        shutil.copytree(model_dir, target, dirs_exist_ok=True)
        return target

    truncated = copy("truncated")
    for weights in truncated.glob("*.safetensors"):
        os.truncate(weights, weights.stat().st_size // 2)
    mismatched = copy("mismatched")
    settings = json.loads((mismatched / "config.json").read_text())
    settings["hidden_size"] = settings["hidden_size"] * 3 // 2
    (mismatched / "config.json").write_text(json.dumps(settings))
    unsupported = copy("unsupported")
    settings = json.loads((unsupported / "config.json").read_text())
    settings["architectures"] = ["FrugalNoSuchForCausalLM"]
    (unsupported / "config.json").write_text(json.dumps(settings))
    return {"truncated": truncated, "mismatched": mismatched, "unsupported": unsupported}


class FaultsReport(BaseModel):
    command: str
    kills: list[KillResult]
    recoveries: list[RecoveryResult]
    restart: RestartResult
    start_failures: list[StartFailure]


def markdown(report: FaultsReport) -> str:
    def secs(value: float | None) -> str:
        return "not within the wait" if value is None else f"{value:.1f} s"

    lines = ["# Faults, measured", "", f"Command: `{report.command}`", "",
             "One small model (zoo-s, health-checked every 2 s) behind two gateway replicas "
             "on this 2-core machine.", "",
             "## `frugal serve` killed: processes left", "",
             "| moment | processes | none left after | left over |", "|---|---|---|---|"]
    for kill in report.kills:
        lines.append(f"| {kill.moment} | {kill.processes} | {secs(kill.gone_s)} | "
                     f"{len(kill.left)} |")
    lines += ["", "## Recovery", "",
              "| fault | what the probes saw until recovery | recovered after | "
              "longest wait | errors elsewhere |", "|---|---|---|---|---|"]
    for rec in report.recoveries:
        seen = ", ".join(f"{status} x{count}" for status, count in rec.statuses.items())
        lines.append(f"| {rec.fault} | {seen} | {secs(rec.recovered_s)} | "
                     f"{f'{rec.longest_probe_s:.1f} s' if rec.longest_probe_s else '-'} | "
                     f"{rec.other_errors} |")
    restart = report.restart
    lines.append(f"| `kill -9` of every process, then `frugal serve` again | - | READY "
                 f"{restart.ready_s:.1f} s after the restart; a stored response "
                 f"{'reads back the same' if restart.stored_intact else 'was LOST'} | - | - |")
    lines += ["", "## A model that cannot load", "",
              "| checkpoint | exit code | exited after | names the model | message |",
              "|---|---|---|---|---|"]
    for fail in report.start_failures:
        message = fail.message.replace("|", "\\|")
        lines.append(f"| {fail.case} | {fail.exit_code} | {fail.failed_after_s:.1f} s | "
                     f"{'yes' if fail.names_model else 'NO'} | {message} |")
    return "\n".join(lines) + "\n"
