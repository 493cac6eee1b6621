"""`frugal router train`: fit the `auto` router's predictor from a scorecard."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="The model='auto' router (lever 1).", no_args_is_help=True)
console = Console(stderr=True)


@app.command("train")
def train(
    config_path: Path = typer.Argument(
        Path("deployments/local.yaml"), help="Deployments YAML (router.scorecard/predictor)."
    ),
    scorecard: Path | None = typer.Option(None, help="Scorecard JSON (default: the YAML's)."),
    out: Path | None = typer.Option(None, help="Predictor file (default: the YAML's)."),
) -> None:
    """Train P(correct | request) per model and the cascade's answer confidence."""
    from serving.config import ConfigError, load_config
    from serving.router.predictor import train_predictor
    from serving.router.scorecard import Scorecard

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        console.print(f"[red]{exc.render()}[/red]")
        raise typer.Exit(2) from None
    source = scorecard or (Path(config.router.scorecard) if config.router.scorecard else None)
    target = out or (Path(config.router.predictor) if config.router.predictor else None)
    if source is None or target is None:
        console.print("[red]set router.scorecard and router.predictor, or pass "
                      "--scorecard and --out[/red]")
        raise typer.Exit(2)
    card = Scorecard.load(source)
    predictor = train_predictor(card)
    predictor.save(target)
    for model, cv in predictor.meta.cv.items():
        console.print(
            f"{model}: cross-validated AUC {cv['auc']:.3f}, log loss {cv['log_loss']:.3f}"
        )
    console.print(f"trained on {predictor.meta.trained_items} items (L2 {predictor.meta.l2}); "
                  f"wrote {target}")
