"""`frugal cache report`: how well each API key's prompts use the prefix cache."""

from __future__ import annotations

from collections import defaultdict

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Prompt-cache advisor.", no_args_is_help=True)


class PrefixStats(BaseModel):
    api_key: str
    prefix: str
    prompt_tokens: float
    cached_tokens: float

    @property
    def hit_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class KeyAdvice(BaseModel):
    api_key: str
    prompts: float
    late_fixed: float

    @property
    def flagged(self) -> bool:
        return self.late_fixed > 0 and self.late_fixed >= 0.1 * self.prompts


class CacheReport(BaseModel):
    prefixes: list[PrefixStats]
    keys: list[KeyAdvice]


def read_report(metrics_text: str) -> CacheReport:
    """Build the report from a Prometheus text exposition of the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    tokens: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    keys: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "frugal_prefix_prompt_tokens_total":
                tokens[(labels["api_key"], labels["prefix"])]["prompt"] += sample.value
            elif sample.name == "frugal_prefix_cached_tokens_total":
                tokens[(labels["api_key"], labels["prefix"])]["cached"] += sample.value
            elif sample.name == "frugal_prompts_total":
                keys[labels["api_key"]]["prompts"] += sample.value
            elif sample.name == "frugal_late_fixed_prompts_total":
                keys[labels["api_key"]]["late"] += sample.value
    prefixes = [
        PrefixStats(api_key=k, prefix=p, prompt_tokens=v["prompt"], cached_tokens=v["cached"])
        for (k, p), v in tokens.items()
    ]
    prefixes.sort(key=lambda s: s.prompt_tokens, reverse=True)
    advice = [
        KeyAdvice(api_key=k, prompts=v["prompts"], late_fixed=v["late"]) for k, v in keys.items()
    ]
    return CacheReport(prefixes=prefixes, keys=advice)


@app.command("report")
def report(
    url: str = typer.Option("http://127.0.0.1:8000", help="The frugal endpoint (no /v1)."),
    top: int = typer.Option(20, help="Prefixes to show, most prompt tokens first."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Hit ratio per API key and prompt prefix, and keys whose prompts put the varying
    part before the fixed part."""
    import httpx

    text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=30).text
    result = read_report(text)
    if json_out:
        typer.echo(result.model_dump_json(indent=2))
        return
    console = Console()
    table = Table(title="Prefix cache by API key and prompt prefix")
    table.add_column("api key")
    table.add_column("prefix")
    for column in ("prompt tokens", "cached tokens", "hit ratio"):
        table.add_column(column, justify="right")
    for stats in result.prefixes[:top]:
        table.add_row(stats.api_key, stats.prefix, f"{stats.prompt_tokens:,.0f}",
                      f"{stats.cached_tokens:,.0f}", f"{stats.hit_ratio:.0%}")
    console.print(table)
    for key in result.keys:
        if key.flagged:
            console.print(
                f"[yellow]{key.api_key}[/yellow]: {key.late_fixed:.0f} of {key.prompts:.0f} "
                "prompts repeat a long part of an earlier prompt after a varying start. Put "
                "the fixed part (system prompt, documents, examples) first and the varying "
                "part (the question) last, so the prefix cache can reuse it."
            )
