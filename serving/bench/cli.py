"""`frugal bench ...`: side-by-side benchmarks.

The one place the bench commands are registered: `quantize`, `serve`, `cpu-kernels`,
`batch` and `compaction` are declared here, `eval`, `route` (serving/bench/eval_cli.py)
and `levers` (serving/bench/levers_cli.py) in their own modules. Every command imports its heavy
dependencies inside its function, so `frugal --help` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from serving.bench.eval_cli import eval_command, promote_command, route_command
from serving.bench.levers_cli import levers

app = typer.Typer(help="Benchmarks measured side by side in one run.", no_args_is_help=True)
app.command("eval")(eval_command)  # the scorecard (issue 5)
app.command("route")(route_command)  # routing policies (issue 5)
app.command("promote")(promote_command)  # a candidate earns traffic by measurement
app.command("levers")(levers)  # request levers (issue 7)


def _checkpoint(model_path: str, console: Any) -> Any:
    """The checkpoint folder a bench loads, or exit 1 with what to do."""
    from pathlib import Path

    path = Path(model_path)
    if not (path / "config.json").exists():
        console.print(f"[red]no checkpoint at {path}[/red] (build the zoo with `frugal zoo "
                      "build`, or pass --model-path)")
        raise typer.Exit(1)
    return path


def _write_results(folder: Any, text: str, data: str) -> None:
    """A bench's results.md and results.json in `folder`; the table on stdout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(text)
    (folder / "results.json").write_text(data + "\n")
    print(text)


@app.command("quantize")
def quantize_bench(
    model: str = typer.Option("", help="16-bit checkpoint; default: the largest zoo model."),
    out: str = typer.Option("docs/quantize-bench", help="Where the JSON, table and plot go."),
    eval_per_cell: int = typer.Option(20, help="Held-out items per task cell for accuracy."),
    concurrency: int = typer.Option(16, help="Concurrent requests for throughput and TTFT."),
) -> None:
    """Every quantization method and bit width vs the 16-bit model, side by side."""
    from pathlib import Path

    from rich.console import Console

    from serving.bench.quantize_bench import largest_zoo_model, markdown, run_bench

    console = Console(stderr=True)
    source = Path(model) if model else largest_zoo_model()
    rows = run_bench(
        source, Path(out), per_cell=eval_per_cell, concurrency=concurrency, say=console.print
    )
    print(markdown(rows))


@app.command("serve")
def serve(
    model_path: str = typer.Option("zoo/zoo-l", help="Checkpoint both servers load."),
    model_id: str = typer.Option("", help="Served model name (default: the folder name)."),
    concurrency: str = typer.Option("1,16,64", help="Comma-separated concurrency levels."),
    requests_per_level: int = typer.Option(
        256, help="Requests per level and round (at least 4x the concurrency; 32 at 1)."),
    max_tokens: int = typer.Option(64, help="Output tokens per request (ignore_eos)."),
    rounds: int = typer.Option(2, help="Interleaved rounds per level."),
    out: str = typer.Option("docs/bench/serve", help="Where results.json/.md, serve.png go."),
    stream: bool = typer.Option(
        True, help="Streaming requests (TTFT measured). --no-stream sends whole-response "
                   "requests: one HTTP reply per request instead of one per token, so the "
                   "engine, not per-token HTTP work, bounds throughput; TTFT is then latency."),
    stream_interval: int = typer.Option(
        1, min=1, help="vLLM's --stream-interval on both servers: first token at once, then "
                       "one chunk per N tokens."),
    colocate: bool = typer.Option(
        True, help="Serve the model inside frugal's gateway process (gateway.colocated_model); "
                   "--no-colocate gives it a replica of its own behind the gateway."),
) -> None:
    """Raw vLLM OpenAI server vs frugal on one model, side by side in one run: throughput
    and TTFT per concurrency, and frugal's batching vs one request at a time."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from serving.bench.serve_bench import markdown, run_serve_bench

    console = Console(stderr=True)
    path = _checkpoint(model_path, console)
    levels = sorted(int(x) for x in concurrency.split(","))
    command = (f"frugal bench serve --model-path {model_path} --concurrency {concurrency} "
               f"--requests-per-level {requests_per_level} --max-tokens {max_tokens} "
               f"--rounds {rounds}{'' if stream else ' --no-stream'}"
               f"{f' --stream-interval {stream_interval}' if stream_interval > 1 else ''}"
               f"{'' if colocate else ' --no-colocate'} --out {out}")
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        result = run_serve_bench(
            path, model_id=model_id or path.name, levels=levels,
            requests_per_level=requests_per_level, rounds=rounds, max_tokens=max_tokens,
            out=Path(out), command=command, progress=progress, say=console.print, stream=stream,
            stream_interval=stream_interval, colocate=colocate)
    print(markdown(result))


@app.command("cpu-kernels")
def cpu_kernels(
    model_path: str = typer.Option("zoo/zoo-l", help="bf16 checkpoint to generate with."),
    rounds: int = typer.Option(3, min=1, help="Alternating rounds per kernel family."),
    prompts: int = typer.Option(128, min=1, help="Prompts per timed batch."),
    max_tokens: int = typer.Option(64, min=1, help="Output tokens per prompt (ignore_eos)."),
    out: str = typer.Option("docs/bench/cpu-kernels", help="Where results.md/.json go."),
) -> None:
    """vLLM's AMX attention kernels vs its AVX-512 `vec` kernels, side by side (AMX CPUs)."""
    from pathlib import Path

    from rich.console import Console

    from serving.bench.cpu_kernels import markdown, run
    from serving.cpu_features import feature_summary, has_amx

    console = Console(stderr=True)
    if not has_amx():
        console.print("[red]this CPU has no AMX (amx_tile flag)[/red]: nothing to compare")
        raise typer.Exit(1)
    command = (f"frugal bench cpu-kernels --model-path {model_path} --rounds {rounds} "
               f"--prompts {prompts} --max-tokens {max_tokens}")
    with console.status(f"{rounds} rounds x amx, vec (an engine start each)..."):
        runs = run(Path(model_path), rounds, prompts, max_tokens)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    report = markdown(runs, command, feature_summary().split(": ", 1)[1])
    (target / "results.md").write_text(report)
    (target / "results.json").write_text(
        json.dumps([r.model_dump() | {"tokens_per_s": r.tokens_per_s} for r in runs], indent=1))
    print(report)


@app.command("batch")
def batch(
    model_path: str = typer.Option("zoo/zoo-l", help="Checkpoint the server and the offline "
                                                     "engine load."),
    lines: int = typer.Option(2000, min=1, help="Lines of the batch (and of the offline and "
                                                "online runs)."),
    max_tokens: int = typer.Option(32, min=1, help="Output tokens per line (ignore_eos)."),
    rounds: int = typer.Option(2, min=1, help="Alternating rounds of offline/batch/online."),
    interactive_requests: int = typer.Option(
        192, min=8, help="Streaming requests per interactive measurement (4 concurrent)."),
    sharing_rounds: int = typer.Option(
        4, min=1, help="Rounds of interactive alone, then beside a batch (pooled)."),
    kills: int = typer.Option(5, min=0, help="kill -9 count of the crash part (0: skip it)."),
    seed: int = typer.Option(7, help="Seed of the crash part's kill points."),
    out: str = typer.Option("docs/bench/batch", help="Where results.json/.md, batch.png go."),
) -> None:
    """Lever 4 side by side in one run: batch vs offline LLM.chat vs online at 64
    concurrent; interactive TTFT with and without a batch; N kills, lines lost and run
    twice."""
    from pathlib import Path

    from rich.console import Console

    from serving.bench.batch_bench import markdown, run_batch_bench

    console = Console(stderr=True)
    path = _checkpoint(model_path, console)
    command = (f"frugal bench batch --model-path {model_path} --lines {lines} --max-tokens "
               f"{max_tokens} --rounds {rounds} --interactive-requests "
               f"{interactive_requests} --sharing-rounds {sharing_rounds} --kills {kills} "
               f"--seed {seed} --out {out}")
    result = run_batch_bench(
        path, model_id=path.name, lines=lines, max_tokens=max_tokens, rounds=rounds,
        interactive_requests=interactive_requests, kills=kills, seed=seed, out=Path(out),
        command=command, sharing_rounds=sharing_rounds, say=console.print)
    print(markdown(result))


@app.command("compaction")
def compaction(
    model_path: str = typer.Option("zoo/zoo-chat", help="The chat checkpoint (it is also "
                                                        "its own summariser)."),
    turns: str = typer.Option("5,10,20,40", help="Chat lengths, in turns before the question."),
    per_length: int = typer.Option(10, min=1, help="Chats per length (and per mode)."),
    seed: int = typer.Option(1_000_000_401, min=1_000_000_000, help="A held-out seed."),
    budget_tokens: int = typer.Option(256, min=16, help="Compaction budget."),
    keep_last_turns: int = typer.Option(2, min=0, help="Turns kept verbatim."),
    concurrency: int = typer.Option(4, min=1, help="Chats replayed at once."),
    out: str = typer.Option("docs/bench/compaction", help="Where results.json/.md and "
                                                          "compaction.png go."),
) -> None:
    """Lever 8 side by side: long chats replayed turn by turn without compaction, with
    the summariser, and with the facts and truncate fallbacks (tokens, $, accuracy,
    summariser calls, TTFT)."""
    import asyncio
    from pathlib import Path

    from rich.console import Console

    from serving.bench.compaction_bench import (
        bench_config,
        markdown,
        plot,
        run_bench,
        summarise,
    )
    from serving.evaluation.launcher import frugal_server

    console = Console(stderr=True)
    path = _checkpoint(model_path, console).resolve()
    lengths = [int(t) for t in turns.split(",")]
    command = (f"frugal bench compaction --model-path {model_path} --turns {turns} "
               f"--per-length {per_length} --seed {seed} --budget-tokens {budget_tokens} "
               f"--keep-last-turns {keep_last_turns} --concurrency {concurrency} --out {out}")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    console.print("starting frugal (four deployments of the chat model)...")
    with frugal_server(bench_config(path, budget_tokens, keep_last_turns)) as server:
        chats = asyncio.run(run_bench(server.url, path, lengths, per_length, seed,
                                      concurrency, say=console.print))
    rows = summarise(chats)
    # Every turn of every chat is kept, one conversation per line (a few MB indented).
    (target / "results.json").write_text("{\n" + ",\n".join([
        f'"command": {json.dumps(command)}',
        f'"rows": {json.dumps([r.model_dump() for r in rows], indent=1)}',
        '"conversations": [\n' + ",\n".join(json.dumps(c.model_dump()) for c in chats) + "\n]",
    ]) + "\n}\n")
    report = markdown(rows, command, budget_tokens, keep_last_turns)
    (target / "results.md").write_text(report)
    plot(chats, rows, target / "compaction.png", budget_tokens)
    print(report)


@app.command("bill")
def bill(
    config: str = typer.Option("deployments/local.yaml", help="The deployments YAML the "
                               "server runs (for its baseline and chat models)."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="A running server "
                                 "(`make run`); ignored with --price-by params."),
    price_by: str = typer.Option("yaml", help="yaml: the server's prices; params: start a "
                                 "server from --config with prices proportional to each "
                                 "model's weight bytes."),
    seed: int = typer.Option(1_000_002_501, min=1_000_000_000, help="A held-out seed."),
    tasks: int = typer.Option(288, min=1, help="Single-turn task requests."),
    chats: int = typer.Option(8, min=0, help="Multi-turn chats (10 and 20 turns)."),
    workload: str = typer.Option("", help="Your own traffic: JSONL of BillRequest lines."),
    levers: str = typer.Option(",".join(("routing", "reasoning", "cache", "structured",
                                         "batch", "compaction")),
                               help="Levers of the frugal run, each also ablated."),
    concurrency: int = typer.Option(8, min=1, help="Online requests at once."),
    min_quality: float = typer.Option(0.0, min=0.0, max=1.0, help="model='auto' requests' "
                                      "quality target (frugal.min_quality); 0: the "
                                      "server's router.min_quality."),
    out: str = typer.Option("", help="Where results.md/.json and waterfall.png go "
                            "(default: docs/bench/bill, docs/bench/bill-params)."),
    json_path: str = typer.Option("", "--json", help="Also write the report's JSON here."),
    pushgateway: str = typer.Option("", help="Also push the totals to this Prometheus "
                                    "Pushgateway (host:port)."),
) -> None:
    """The bill: one reference workload naive, frugal, and frugal minus each lever, side
    by side on one server; $ from the responses' own usage.cost (docs/bill.md)."""
    import asyncio
    import contextlib
    import tempfile
    from pathlib import Path

    import httpx
    from rich.console import Console

    from serving.bench.bill import LEVERS, run_bill
    from serving.bench.bill_prices import params_priced
    from serving.bench.bill_report import markdown, publish, waterfall
    from serving.bench.bill_workload import BillMix, generate_workload, load_workload
    from serving.config import load_config
    from serving.evaluation.launcher import frugal_server

    console = Console(stderr=True)
    chosen = tuple(lever for lever in levers.split(",") if lever)
    unknown = set(chosen) - set(LEVERS)
    if unknown or price_by not in ("yaml", "params"):
        console.print(f"[red]unknown lever(s) {sorted(unknown)} or --price-by {price_by}"
                      f"[/red]; levers: {', '.join(LEVERS)}; --price-by yaml|params")
        raise typer.Exit(2)
    served = load_config(config)
    chat_model = next((m.model_id for m in served.models if m.frugal.compaction.enabled),
                      served.baseline_model)
    traffic = (load_workload(Path(workload)) if workload
               else generate_workload(BillMix(tasks=tasks, chats=chats), seed))
    command = (f"frugal bench bill --config {config} --price-by {price_by} --seed {seed} "
               f"--tasks {tasks} --chats {chats} --concurrency {concurrency}"
               + (f" --workload {workload}" if workload else "")
               + (f" --min-quality {min_quality}" if min_quality else "")
               + (f" --levers {levers}" if chosen != LEVERS else ""))
    absent = {"quantization": "no quantized model in the ladder of " + config}
    if any(m.resolved_engine_kwargs().get("quantization") for m in served.models):
        absent = {}
    with contextlib.ExitStack() as stack:
        if price_by == "params":
            priced, sizes = params_priced(served)
            state = stack.enter_context(tempfile.TemporaryDirectory(prefix="frugal-bill-"))
            priced.store.state_dir = state
            console.print("starting frugal with size-proportional prices ("
                          + ", ".join(f"{m} {n / 1e6:.2f} MB" for m, n in sizes.items())
                          + " of weights)...")
            server = stack.enter_context(frugal_server(
                priced.model_dump(mode="json", exclude_none=True)))
            base_url = server.url
        ids = {m["id"] for m in httpx.get(f"{base_url}/models", timeout=30).json()["data"]}
        if "routing" in chosen and "auto" not in ids:
            absent["routing"] = "the server has no model='auto' (no router scorecard)"
            chosen = tuple(lever for lever in chosen if lever != "routing")
        report = asyncio.run(run_bill(base_url, traffic, served.baseline_model, chat_model,
                                      chosen, absent, concurrency, say=console.print,
                                      min_quality=min_quality or None))
    target = Path(out or ("docs/bench/bill-params" if price_by == "params"
                          else "docs/bench/bill"))
    target.mkdir(parents=True, exist_ok=True)
    prices = ("size-proportional (--price-by params: the baseline's price scaled by "
              "weight bytes)" if price_by == "params" else f"the server's own ({config})")
    text = markdown(report, command, prices)
    (target / "results.md").write_text(text)
    data = {"command": command, **report.model_dump()}
    (target / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
    waterfall(report, target / "waterfall.png")
    publish(report, target / "bill.prom", pushgateway)
    print(text)


@app.command("load")
def load(
    config: str = typer.Option("deployments/local.yaml", help="Deployments YAML to serve."),
    model: str = typer.Option("zoo-s", help="The model the load goes to."),
    multipliers: str = typer.Option("4:120,16:30", help="Phases as MULTIPLIER:SECONDS of "
                                                          "nominal concurrency, in order."),
    rounds: int = typer.Option(2, min=1, help="Rounds of all phases (memory is read after "
                                              "each, so growth shows round over round)."),
    max_tokens: int = typer.Option(16, min=1, help="Output tokens per request (ignore_eos)."),
    nominal: int = typer.Option(0, min=0, help="Nominal concurrency; 0: the model's "
                                               "max_ongoing_requests x replicas."),
    out: str = typer.Option("docs/bench/load", help="Where results.json/.md go."),
) -> None:
    """The server at multiples of its nominal concurrency: every request answered or shed
    with Retry-After (0 lost), latency percentiles, shed rate, memory round over round."""
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from serving.bench.load_bench import markdown, run_load_bench
    from serving.config import ConfigError, load_config
    from serving.evaluation.launcher import frugal_server

    console = Console(stderr=True)
    try:
        served = load_config(config)
    except ConfigError as exc:
        console.print(f"[red]invalid config[/red]\n{exc.render()}")
        raise typer.Exit(1) from None
    try:
        target = served.model(model)
    except KeyError:
        console.print(f"[red]{config} serves no model {model!r}[/red]")
        raise typer.Exit(1) from None
    deployment = target.deployment_config
    replicas = deployment.num_replicas or (
        deployment.autoscaling_config.max_replicas if deployment.autoscaling_config else 1)
    command = (f"frugal bench load --config {config} --model {model} --multipliers "
               f"{multipliers} --rounds {rounds} --max-tokens {max_tokens}"
               + (f" --nominal {nominal}" if nominal else ""))
    nominal = nominal or deployment.max_ongoing_requests * replicas
    phases = [(int(m), float(s)) for m, s in
              (part.split(":") for part in multipliers.split(","))]
    with tempfile.TemporaryDirectory(prefix="frugal-load-") as state:
        served.store.state_dir = state  # the bench's own store, not the YAML's
        console.print(f"starting frugal on {config}...")
        with frugal_server(served.model_dump(mode="json", exclude_none=True)) as server:
            report = run_load_bench(server.url, server.session_id, model, nominal=nominal,
                                    phases=phases, rounds=rounds, max_tokens=max_tokens,
                                    command=command, say=console.print)
    _write_results(Path(out), markdown(report), report.model_dump_json(indent=1))


@app.command("faults")
def faults(
    model_path: str = typer.Option("zoo/zoo-s", help="Checkpoint of the faults' server."),
    out: str = typer.Option("docs/bench/faults", help="Where results.json/.md go."),
) -> None:
    """Faults on a real server: frugal serve killed at three moments (processes left),
    an engine and a gateway replica killed (what clients see, time to recover), kill -9
    and restart (time to ready, stored state intact), checkpoints that cannot load."""
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from serving.bench import faults as f
    from serving.bench.faults import FaultsReport, markdown
    from serving.evaluation.launcher import Spawned, stop_session

    console = Console(stderr=True)
    path = _checkpoint(model_path, console).resolve()
    model = path.name
    command = f"frugal bench faults --model-path {model_path}"
    with tempfile.TemporaryDirectory(prefix="frugal-faults-") as scratch:
        root = Path(scratch)
        config = f.fault_config(path, root / "state", model)
        kills = []
        for moment in f.MOMENTS:
            console.print(f"killing frugal serve at: {moment}...")
            kills.append(f.kill_server(config, moment, log_dir=root / "logs"))
            console.print(f"  {kills[-1]}")
        console.print("engine and gateway replica faults...")
        server = Spawned(config, log_dir=root / "logs")
        try:
            url = server.wait_ready()
            recoveries = [f.kill_engine(url, model, server.session_id)]
            console.print(f"  {recoveries[-1]}")
            victim = url.rsplit(":", 1)[0] + f":{server.port + 1}/v1"
            recoveries.append(f.kill_gateway_replica(url, victim, model))
            console.print(f"  {recoveries[-1]}")
        finally:
            stop_session(server.process)
            server.close_log()
        console.print("kill -9 and restart on the same store...")
        restart = f.restart_with_store(config, model, log_dir=root / "logs")
        console.print(f"  {restart}")
        failures = []
        for case, broken in f.broken_checkpoints(path, root / "broken").items():
            console.print(f"a checkpoint that cannot load: {case}...")
            bad = f.fault_config(broken, root / "state-bad", model)
            failures.append(f.failed_start(bad, case, model, log_dir=root / "logs"))
            console.print(f"  {failures[-1]}")
    report = FaultsReport(command=command, kills=kills, recoveries=recoveries,
                          restart=restart, start_failures=failures)
    _write_results(Path(out), markdown(report), report.model_dump_json(indent=1))
