"""`frugal keys ...`: create, list, update, revoke API keys and read their spend.

Works on the store directly (the deployments YAML's `store`, or `--store-url`), so it
needs no running server and no admin key over HTTP; whoever can run it can read the
database anyway. `create` prints the key alone on stdout (`KEY=$(frugal keys create
--name team-a)`), once: the store keeps only its hash.

Exit codes: 0 done, 1 an unknown key or a name already taken, 2 a bad option value.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from serving.tenants.keys import BudgetPeriod, KeyRecord, KeySettings

if TYPE_CHECKING:
    from serving.tenants.store import KeyStore

app = typer.Typer(help="API keys: budgets, rate limits, model lists (docs/tenants.md).",
                  no_args_is_help=True)
out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Path, typer.Option(
    "--config", "-c", help="Deployments YAML whose `store` holds the keys.")]
StoreOption = Annotated[str | None, typer.Option(
    "--store-url", help="SQLAlchemy URL of the store (default: the YAML's; "
    "FRUGAL_STORE_URL wins over both).")]
DEFAULT_CONFIG = Path("deployments/local.yaml")


def open_store(config: Path, store_url: str | None) -> KeyStore:
    import os

    from serving.config import load_config
    from serving.store.db import open_engine, session_factory
    from serving.tenants.store import KeyStore

    url = os.environ.get("FRUGAL_STORE_URL") or store_url
    if url is None:
        url = load_config(config).store.database_url()
    return KeyStore(session_factory(open_engine(url)))


def _models(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter("list at least one model", param_hint="--models")
    return names


def _settings(**values: object) -> KeySettings:
    try:
        return KeySettings.model_validate(values)
    except Exception as exc:  # pydantic's message names the field
        err.print(f"[red]bad key settings:[/red] {exc}")
        raise typer.Exit(2) from None


def _find(store: KeyStore, id_or_name: str) -> KeyRecord:
    record = store.resolve(id_or_name)
    if record is None:
        err.print(f"[red]no key with id or name {id_or_name!r}[/red]")
        raise typer.Exit(1)
    return record


@app.command()
def create(
    name: Annotated[str, typer.Option(help="A unique name: team-a, ci, ...")],
    budget_usd: Annotated[float | None, typer.Option(help="Spend allowed per period.")] = None,
    budget_period: Annotated[BudgetPeriod, typer.Option()] = BudgetPeriod.MONTH,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated models it may call (auto included); default all.")] = None,
    min_quality: Annotated[float | None, typer.Option(
        help="Its default quality target for model='auto'.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    store_url: StoreOption = None,
) -> None:
    """Make a key; print it once (only its hash is kept)."""
    settings = _settings(name=name, budget_usd=budget_usd, budget_period=budget_period,
                         rpm=rpm, tpm=tpm, models=_models(models), min_quality=min_quality)
    try:
        record, key = open_store(config, store_url).create(settings)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    print(key)
    err.print(f"created {record.id} ({record.name}); the key is shown only this once")


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _when(stamp: int | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


@app.command("list")
def list_keys(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    store_url: StoreOption = None,
) -> None:
    """The keys, with their limits and this period's spend."""
    store = open_store(config, store_url)
    table = Table("id", "name", "key", "budget", "spent", "rpm", "tpm", "models",
                  "min quality", "created", "revoked")
    for key in store.list(include_revoked=all_):
        spend = store.spend(key)
        budget = "-" if key.budget_usd is None else f"{_money(key.budget_usd)}/{key.budget_period}"
        table.add_row(key.id, key.name, key.hint, budget, _money(spend.spent_usd),
                      str(key.rpm or "-"), str(key.tpm or "-"),
                      ",".join(key.models) if key.models is not None else "all",
                      "-" if key.min_quality is None else f"{key.min_quality:g}",
                      _when(key.created_at), _when(key.revoked_at))
    out.print(table)


@app.command()
def update(
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
    budget_usd: Annotated[float | None, typer.Option()] = None,
    budget_period: Annotated[BudgetPeriod | None, typer.Option()] = None,
    rpm: Annotated[int | None, typer.Option()] = None,
    tpm: Annotated[int | None, typer.Option()] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models.")] = None,
    min_quality: Annotated[float | None, typer.Option()] = None,
    no_budget: Annotated[bool, typer.Option("--no-budget", help="Remove the budget.")] = False,
    no_rpm: Annotated[bool, typer.Option("--no-rpm")] = False,
    no_tpm: Annotated[bool, typer.Option("--no-tpm")] = False,
    all_models: Annotated[bool, typer.Option("--all-models")] = False,
    no_min_quality: Annotated[bool, typer.Option("--no-min-quality")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    store_url: StoreOption = None,
) -> None:
    """Change a key's settings; replicas see them within `tenants.key_cache_s`."""
    store = open_store(config, store_url)
    record = _find(store, key)
    changes: dict[str, object] = {}
    for field, value, clear in (("budget_usd", budget_usd, no_budget), ("rpm", rpm, no_rpm),
                                ("tpm", tpm, no_tpm), ("models", _models(models), all_models),
                                ("min_quality", min_quality, no_min_quality)):
        if clear:
            changes[field] = None
        elif value is not None:
            changes[field] = value
    if budget_period is not None:
        changes["budget_period"] = budget_period
    try:
        updated = store.update(record.id, **changes)
    except Exception as exc:
        err.print(f"[red]bad key settings:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"updated {updated.id} ({updated.name})")


@app.command()
def revoke(
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
    config: ConfigOption = DEFAULT_CONFIG,
    store_url: StoreOption = None,
) -> None:
    """Stop a key on every replica (within `tenants.key_cache_s`)."""
    store = open_store(config, store_url)
    record = store.revoke(_find(store, key).id)
    err.print(f"revoked {record.id} ({record.name})")


@app.command()
def usage(
    key: Annotated[str | None, typer.Argument(help="One key's id or name; default all.")] = None,
    period: Annotated[BudgetPeriod, typer.Option(help="The current day, week, month "
                                                 "or all time.")] = BudgetPeriod.MONTH,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    store_url: StoreOption = None,
) -> None:
    """Spend, savings and tokens per key over the current period (from the ledger)."""
    store = open_store(config, store_url)
    keys = {k.id: k for k in store.list(include_revoked=True)}
    key_id = _find(store, key).id if key is not None else None
    rows = store.usage(key_id, period, time.time())
    if as_json:
        print(json.dumps([{**row.model_dump(), "name": keys[row.key_id].name
                           if row.key_id in keys else None} for row in rows], indent=2))
        return
    table = Table("key", "name", "period", "requests", "batch", "prompt", "cached",
                  "completion", "spent", "saved", "budget left")
    for row in rows:
        record = keys.get(row.key_id)
        left = store.spend(record).remaining_usd if record is not None else None
        table.add_row(row.key_id, record.name if record else "(YAML key)", row.period,
                      f"{row.requests:,}", f"{row.batch_requests:,}", f"{row.prompt_tokens:,}",
                      f"{row.cached_tokens:,}", f"{row.completion_tokens:,}",
                      _money(row.cost_usd), _money(row.saved_usd), _money(left))
    out.print(table)
