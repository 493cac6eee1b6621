"""`frugal bench eval` (the scorecard) and `frugal bench route` (routing policies).

Heavy imports (numpy, matplotlib, httpx) happen inside the commands so `frugal --help`
stays instant.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=True)

DEFAULT_CONFIG = Path("deployments/local.yaml")


def _load(config_path: Path) -> Any:
    from serving.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]{exc.render()}[/red]")
        raise typer.Exit(2) from None


def _base_url(config: Any, base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/")
    return f"http://{config.http_options.host}:{config.http_options.port}/v1"


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


async def _score_all(
    base_url: str, models: list[str], items: list[Any], concurrency: int, think: bool,
    throughput: bool,
) -> dict[str, Any]:
    from serving.evaluation.scoring import evaluate_model

    scores = {}
    with _progress() as progress:
        for model in models:
            task = progress.add_task(model, total=len(items))
            scores[model] = await evaluate_model(
                base_url,
                model,
                items,
                concurrency=concurrency,
                think=think,
                throughput=throughput,
                progress=lambda n, task=task: progress.advance(task, n),
            )
            score = scores[model]
            progress.update(task, description=f"{model}: accuracy {score.accuracy:.3f}")
    return scores


def eval_command(
    config_path: Path = typer.Argument(DEFAULT_CONFIG, help="Deployments YAML."),
    base_url: str | None = typer.Option(None, help="Endpoint (default: the YAML's http_options)."),
    suite: Path | None = typer.Option(
        None, help="JSONL of {messages, expected} or {messages, checker} (default: demo suite)."
    ),
    per_cell: int = typer.Option(40, help="Demo items per family x difficulty."),
    seed: int | None = typer.Option(None, help="Demo suite seed (default: EVAL_SEED)."),
    models: str | None = typer.Option(None, help="Comma-separated subset of the YAML's models."),
    concurrency: int = typer.Option(16, help="Requests in flight per model."),
    think: bool = typer.Option(False, help="Evaluate with reasoning_effort=high; the cards "
                               "are the models' `@high` cells (MODEL@high), which "
                               "model='auto' uses for requests that ask for high effort."),
    out: Path | None = typer.Option(
        None, help="Scorecard JSON (default: the YAML's router.scorecard, else "
        "router/scorecard.json beside the YAML)."
    ),
    plots: Path | None = typer.Option(None, help="Folder for PNGs (default: beside --out)."),
    train_router: bool = typer.Option(
        True, help="Retrain the router predictor named in the YAML from the new scorecard."
    ),
    merge: bool = typer.Option(
        False, help="Keep the other models' cards of the existing --out scorecard (it must "
        "be of the same suite): add one model without scoring the rest again."
    ),
) -> None:
    """Score every model of the YAML through the running endpoint; write the scorecard."""
    from serving.bench.eval import build_scorecard
    from serving.bench.plots import plot_scorecard
    from serving.evaluation.items import load_user_items
    from serving.router.scorecard import cell_id
    from serving.zoo.tasks import EVAL_SEED, mixed_suite

    config = _load(config_path)
    if suite is not None:
        items = load_user_items(suite)
        suite_name, seed = suite.name, None
    else:
        seed = EVAL_SEED if seed is None else seed
        items = mixed_suite(per_cell, seed)
        suite_name = f"demo mixed_suite(n_per_cell={per_cell}, seed={seed})"
    chosen = models.split(",") if models else [m.model_id for m in config.models]
    unknown = [m for m in chosen if m not in {c.model_id for c in config.models}]
    if unknown:
        console.print(f"[red]not in {config_path}: {', '.join(unknown)}[/red]")
        raise typer.Exit(2)
    # Router data lives beside the YAML that names it (deployments/router/ for the shipped one).
    out = out or Path(config.router.scorecard or config_path.parent / "router" / "scorecard.json")
    cells = [cell_id(m, "high") if think else m for m in chosen]
    keep = _kept_cards(out, items, cells, config) if merge else None
    url = _base_url(config, base_url)
    console.print(f"scoring {len(chosen)} models on {len(items)} items via {url}")
    scores = asyncio.run(_score_all(url, chosen, items, concurrency, think, True))
    if think:
        scores = {cell_id(model, "high"): score for model, score in scores.items()}
    scorecard = build_scorecard(config, scores, items, suite=suite_name, seed=seed, keep=keep)
    scorecard.save(out)
    pngs = plot_scorecard(scorecard, plots or out.parent)
    _print_scorecard(scorecard)
    console.print(f"wrote {out} and {', '.join(str(p) for p in pngs)}")
    if train_router and config.router.predictor:
        from serving.router.predictor import train_predictor

        predictor = train_predictor(scorecard)
        predictor.save(config.router.predictor)
        console.print(f"retrained the router predictor: {config.router.predictor}")


def _kept_cards(path: Path, items: list[Any], chosen: list[str], config: Any) -> dict[str, Any]:
    """The existing scorecard's cards of the served models not scored now; exit 2 when it
    is missing or of another suite (its scores would not be comparable)."""
    from serving.bench.eval import suite_hash
    from serving.router.scorecard import Scorecard, base_model

    if not path.exists():
        console.print(f"[red]--merge: no scorecard at {path}[/red]")
        raise typer.Exit(2)
    old = Scorecard.load(path)
    if old.suite_hash != suite_hash(items):
        console.print(f"[red]--merge: {path} is of another suite ({old.suite}); use the "
                      "same --suite/--per-cell/--seed[/red]")
        raise typer.Exit(2)
    served = {m.model_id for m in config.models}
    return {m: card for m, card in old.models.items()
            if m not in chosen and base_model(m) in served}


def _print_scorecard(scorecard: Any) -> None:
    from rich.table import Table

    table = Table(title=f"scorecard: {scorecard.suite}")
    for column in ("model", "accuracy", "in $/1M", "out $/1M", "TTFT p50/p95 ms",
                   "ITL p50/p95 ms", "prefill/decode tok/s"):
        table.add_column(column)
    for model, card in scorecard.models.items():
        s = card.score

        def ms(p: Any) -> str:
            return "-" if p.p50 is None else f"{p.p50 * 1e3:.0f}/{p.p95 * 1e3:.0f}"

        tput = s.throughput
        table.add_row(
            model,
            f"{s.accuracy:.3f}",
            f"{card.price.input_per_million:.4f}",
            f"{card.price.output_per_million:.4f}",
            ms(s.ttft_s),
            ms(s.itl_s),
            "-" if tput is None else
            f"{tput.prefill_tokens_per_s:.0f}/{tput.decode_tokens_per_s:.0f}",
        )
    console.print(table)


def _refuse_unreachable(scores: dict[str, Any], items: int, url: str) -> None:
    """Exit 1 when every request to some model failed: a report of all-wrong answers
    would be a silent lie."""
    unreachable = [m for m, score in scores.items() if score.errors == items]
    if unreachable:
        first = next(r.error for r in scores[unreachable[0]].results if r.error)
        console.print(f"[red]every request to {', '.join(unreachable)} failed at {url} "
                      f"(first: {first}); nothing written[/red]")
        raise typer.Exit(1)


async def _score_cells(
    base_url: str, cells: list[str], items: list[Any], concurrency: int
) -> dict[str, Any]:
    """Every cell's answers: the models without thinking, then the `MODEL@high` cells
    (the same models at reasoning_effort=high), keyed by cell."""
    from serving.router.scorecard import base_model, cell_effort

    other = sorted({cell_effort(c) for c in cells} - {None, "high"})
    if other:
        console.print(f"[red]cells at effort {', '.join(other)}: only high is measured "
                      "(frugal bench eval --think)[/red]")
        raise typer.Exit(2)
    plain = [c for c in cells if cell_effort(c) is None]
    high = [c for c in cells if cell_effort(c) == "high"]
    scores = await _score_all(base_url, plain, items, concurrency, False, False)
    if high:
        thought = await _score_all(base_url, [base_model(c) for c in high], items,
                                   concurrency, True, False)
        scores.update({cell: thought[base_model(cell)] for cell in high})
    return {cell: scores[cell] for cell in cells}


async def _auto_over_http(
    base_url: str, items: list[Any], min_quality: float | None, concurrency: int
) -> list[dict[str, Any]]:
    """`model="auto"` through the gateway, stating no effort: the cell it routed to,
    the answering model, billed $ and correctness."""
    import httpx

    from serving.evaluation.items import grade
    from serving.evaluation.scoring import THINK_MAX_TOKENS

    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(item: Any) -> dict[str, Any]:
            body: dict[str, Any] = {"model": "auto", "messages": item.messages,
                                    "temperature": 0, "max_tokens": THINK_MAX_TOKENS}
            if min_quality is not None:
                body["frugal"] = {"min_quality": min_quality}
            async with gate:
                response = await client.post("/chat/completions", json=body)
            response.raise_for_status()
            data = response.json()
            text = data["choices"][0]["message"].get("content") or ""
            return {
                "model": data["model"],
                "cost_usd": ((data.get("usage") or {}).get("cost") or {}).get("total_usd", 0.0),
                "correct": grade(item, text),
                "route": response.headers.get("x-frugal-route", ""),
            }

        return await asyncio.gather(*(one(item) for item in items))


def route_command(
    config_path: Path = typer.Option(DEFAULT_CONFIG, "--config", help="Deployments YAML."),
    seed: int = typer.Option(1_000_000_123, help="Workload seed (an eval seed not trained on)."),
    out: Path = typer.Option(Path("docs/bench/route.json"), help="Report JSON."),
    base_url: str | None = typer.Option(None, help="Endpoint (default: the YAML's http_options)."),
    per_cell: int = typer.Option(30, help="Items per family x difficulty."),
    min_quality: float | None = typer.Option(None, help="Quality target (default: the YAML's)."),
    scorecard: Path | None = typer.Option(None, help="Override the YAML's router.scorecard."),
    predictor: Path | None = typer.Option(None, help="Override the YAML's router.predictor."),
    concurrency: int = typer.Option(16, help="Requests in flight per model."),
    via_http: bool = typer.Option(
        False, help="Also send model='auto' through the gateway (needs the router wired)."
    ),
    results_file: Path | None = typer.Option(
        None, "--results", help="Where the per-item answers are saved (default: OUT.results.json)."
    ),
    reuse_results: bool = typer.Option(
        False,
        help="Apply the policies to the per-item answers saved by an earlier run "
        "(--results, same seed and --per-cell) instead of asking the models again.",
    ),
    price_by: str = typer.Option(
        "config",
        help="Prices the router and the bill use: 'config' (the YAML's list prices, else "
        "derived from measured throughput) or 'params' (proportional to parameter count, "
        "anchored on the largest model's price: a compute-bound node).",
    ),
) -> None:
    """auto (model and effort) vs models-only auto, always-largest (with and without
    thinking), always-smallest, random and the oracles on a held-out workload."""
    import random

    from serving.bench.plots import plot_route
    from serving.bench.route_bench import (
        PolicyResult,
        RouteReport,
        RouteResults,
        apply_policies,
        cell_points,
        cells_table,
        check_held_out,
        markdown_table,
        ratios,
    )
    from serving.router.predictor import scorecard_id
    from serving.router.runtime import Router, validate_min_quality
    from serving.router.scorecard import Scorecard
    from serving.zoo.tasks import EVAL_SEED_MIN, mixed_suite

    config = _load(config_path)
    if scorecard is not None:
        config.router.scorecard = str(scorecard.resolve())
    if predictor is not None:
        config.router.predictor = str(predictor.resolve())
    config.router.enabled = True
    router = Router.load(config)
    if router is None:
        console.print("[red]no router: set router.scorecard (run `frugal bench eval`)[/red]")
        raise typer.Exit(2)
    card = Scorecard.load(config.router.scorecard)
    if price_by not in ("config", "params"):
        console.print(f"[red]--price-by must be 'config' or 'params', not {price_by!r}[/red]")
        raise typer.Exit(2)
    if price_by == "params":
        from serving.bench.route_bench import params_priced

        router = params_priced(router, config, card)
        if via_http:
            console.print("[yellow]--via-http bills at the server's prices: skipped[/yellow]")
            via_http = False
    try:
        check_held_out(card, seed)
        target = validate_min_quality(min_quality) if min_quality is not None else None
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if seed < EVAL_SEED_MIN:
        console.print(f"[yellow]seed {seed} is a training seed of the zoo models[/yellow]")
    items = mixed_suite(per_cell, seed)
    random.Random(seed).shuffle(items)  # a mixed workload, not blocks of one family
    url = _base_url(config, base_url)
    results_path = results_file or out.with_suffix(".results.json")
    saved = None
    if reuse_results:
        saved = RouteResults.load_matching(results_path, seed, per_cell, router.candidates)
        if saved is None:
            console.print(f"[yellow]no saved answers for this workload in {results_path}: "
                          "asking the models[/yellow]")
    reused = saved is not None
    if saved is None:
        scores = asyncio.run(_score_cells(url, router.candidates, items, concurrency))
        _refuse_unreachable(scores, len(items), url)
        saved = RouteResults(
            seed=seed, per_cell=per_cell, models={m: s.results for m, s in scores.items()}
        )
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(saved.model_dump_json() + "\n")
    results = saved.result_maps()
    policies = apply_policies(router, items, results, router.prices, min_quality=target, seed=seed)
    measured = (
        "offline: every candidate answered every item via the endpoint (greedy); policies "
        "applied to those per-item results, Router.choose/escalation per item for auto"
    )
    if reused:
        measured += f" (answers reused from {results_path.name})"
    route_match = None
    if via_http:
        from serving.router.runtime import ANY_EFFORT

        rows = asyncio.run(_auto_over_http(url, items, target, concurrency))
        counts: dict[str, int] = {}
        for row in rows:
            cell = row["route"].split(";", 1)[0]
            counts[cell] = counts.get(cell, 0) + 1
        policies["auto-http"] = PolicyResult(
            cost_usd=sum(r["cost_usd"] for r in rows),
            accuracy=sum(r["correct"] for r in rows) / len(rows),
            share={m: counts.get(m, 0) / len(rows) for m in router.candidates},
            escalations=sum("escalated" in r["route"] for r in rows),
            requests=len(rows),
        )
        offline = [router.choose(i.messages, target, ANY_EFFORT).cell for i in items]
        route_match = sum(row["route"].split(";", 1)[0] == cell
                          for row, cell in zip(rows, offline, strict=True)) / len(rows)
        measured += ("; auto-http: model='auto' through the gateway, cost from usage.cost, "
                     f"routed to the offline policy's cell for {route_match:.1%} of items")
    values, met = ratios(policies)
    report = RouteReport(
        seed=seed,
        items=len(items),
        min_quality=target if target is not None else router.default_min_quality,
        scorecard=scorecard_id(card),
        candidates=router.candidates,
        prices={m: p.model_dump() for m, p in router.prices.items() if m in router.candidates},
        measured=measured + f"; prices: {price_by}",
        policies=policies,
        cells=cell_points(router.candidates, items, results, router.prices),
        ratios=values,
        targets_met=met,
        http_route_match=route_match,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.model_dump_json(indent=1) + "\n")
    table = markdown_table(policies)
    out.with_suffix(".md").write_text(table + "\n\n" + cells_table(report.cells) + "\n")
    plot_route({k: v.model_dump() for k, v in policies.items()}, out.with_suffix(".png"),
               f"routing policies, {len(items)} held-out items (seed {seed})",
               cells={k: v.model_dump() for k, v in report.cells.items()})
    console.print(table)
    console.print(json.dumps({"ratios": values, "targets_met": met}, indent=1))
    console.print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


def promote_command(
    candidate: str = typer.Argument(..., help="A model the YAML serves that the router's "
                                    "scorecard does not know yet (a new checkpoint or "
                                    "quantization)."),
    config_path: Path = typer.Option(DEFAULT_CONFIG, "--config", help="Deployments YAML."),
    base_url: str | None = typer.Option(None, help="Endpoint (default: the YAML's http_options)."),
    band: float = typer.Option(0.01, min=0, max=1, help="Quality band: promote when the "
                               "candidate's accuracy is at least a dearer model's minus this."),
    think: bool = typer.Option(True, help="Also score the candidate at reasoning_effort=high "
                               "(its MODEL@high cell) when the scorecard has such cells and "
                               "the YAML gives it a reasoning parser."),
    concurrency: int = typer.Option(16, help="Requests in flight."),
    yaml_out: Path | None = typer.Option(None, help="Where the YAML change goes (default: "
                                         "beside the YAML, NAME.promoted.yaml)."),
    dry_run: bool = typer.Option(False, help="Score and decide; write nothing."),
) -> None:
    """Score CANDIDATE on the scorecard's own suite; when it is cheaper than a model it
    matches within the band, add it to the scorecard (running gateways reload it) and
    write the YAML change."""
    import difflib

    import yaml

    from serving.bench.eval import build_scorecard
    from serving.bench.promote import decide, write_atomically, yaml_change
    from serving.pricing import price_table
    from serving.router.predictor import train_predictor
    from serving.router.scorecard import Scorecard, cell_effort, cell_id

    config = _load(config_path)
    served = {m.model_id: m for m in config.models}
    if candidate not in served:
        console.print(f"[red]{candidate} is not served by {config_path}: add it to the YAML "
                      "first (the router sends it nothing until it is promoted)[/red]")
        raise typer.Exit(2)
    if not config.router.scorecard or not Path(config.router.scorecard).exists():
        console.print("[red]no router scorecard to promote into: run `frugal bench eval` "
                      "first[/red]")
        raise typer.Exit(2)
    card_path = Path(config.router.scorecard)
    scorecard = Scorecard.load(card_path)
    if candidate in scorecard.models:
        console.print(f"[red]{candidate} is already in {card_path}[/red]")
        raise typer.Exit(2)
    items = scorecard.items
    url = _base_url(config, base_url)
    console.print(f"scoring {candidate} on the scorecard's {len(items)} items via {url}")
    scores = asyncio.run(_score_all(url, [candidate], items, concurrency, False, True))
    _refuse_unreachable(scores, len(items), url)
    has_cells = any(cell_effort(m) == "high" for m in scorecard.models)
    if think and has_cells and served[candidate].engine_kwargs.get("reasoning_parser"):
        thought = asyncio.run(_score_all(url, [candidate], items, concurrency, True, False))
        scores[cell_id(candidate, "high")] = thought[candidate]
    merged = build_scorecard(config, scores, items, suite=scorecard.suite,
                             seed=scorecard.seed, keep=dict(scorecard.models))
    prices = price_table(config, {m: c.score.throughput for m, c in merged.models.items()
                                  if c.score.throughput is not None})
    verdict = decide(scorecard, candidate, merged.models[candidate], prices, band)
    _print_verdict(verdict)
    if not verdict.promoted or dry_run:
        if dry_run:
            console.print("--dry-run: nothing written")
        raise typer.Exit(0 if verdict.promoted or dry_run else 1)
    # The predictor first: a gateway that sees the new scorecard finds its predictor.
    if config.router.predictor:
        predictor_path = Path(config.router.predictor)
        tmp = predictor_path.with_name(f".{predictor_path.name}.tmp")
        train_predictor(merged).save(tmp)
        os.replace(tmp, predictor_path)
    write_atomically(card_path, (merged.model_dump_json(indent=1) + "\n").encode())
    raw = yaml.safe_load(config_path.read_text())
    changed = yaml_change(raw, candidate, verdict.replaces)
    target = yaml_out or config_path.with_name(f"{config_path.stem}.promoted.yaml")
    before = yaml.safe_dump(raw, sort_keys=False).splitlines()
    after = yaml.safe_dump(changed, sort_keys=False).splitlines()
    target.write_text(yaml.safe_dump(changed, sort_keys=False))
    (verdict_path := card_path.with_name("promotion.json")).write_text(
        verdict.model_dump_json(indent=1) + "\n")
    console.print("\n".join(difflib.unified_diff(before, after, str(config_path), str(target),
                                                 lineterm="", n=1)))
    console.print(f"promoted {candidate} (replaces {verdict.replaces}): wrote {card_path}, "
                  f"{config.router.predictor or 'no predictor'}, {verdict_path} and {target}; "
                  "running gateways reload the scorecard within router.reload_check_s")


def _print_verdict(verdict: Any) -> None:
    from rich.table import Table

    table = Table(title=f"promote {verdict.candidate}: "
                        f"{'PROMOTED' if verdict.promoted else 'not promoted'}")
    for column in ("model", "accuracy", "$ per item"):
        table.add_column(column)
    for row in verdict.standings:
        mark = " (candidate)" if row.model == verdict.candidate else (
            " (replaced)" if row.model == verdict.replaces else "")
        table.add_row(row.model + mark, f"{row.accuracy:.3f}", f"{row.usd_per_item:.3e}")
    console.print(table)
    console.print(verdict.reason)
