"""PNG plots of the scorecard and the route benchmark (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.router.scorecard import Scorecard


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """(name, cost, quality) points that no cheaper-or-equal point beats on quality."""
    front, best = [], -1.0
    for name, cost, quality in sorted(points, key=lambda p: (p[1], -p[2])):
        if quality > best:
            front.append((name, cost, quality))
            best = quality
    return front


def _mean_item_cost(scorecard: Scorecard, model: str) -> float:
    card = scorecard.models[model]
    score = card.score
    return (
        score.prompt_tokens * card.price.input_per_million
        + score.completion_tokens * card.price.output_per_million
    ) * 1e-6 / max(1, score.items)


def plot_scorecard(scorecard: Scorecard, out_dir: Path) -> list[Path]:
    """`pareto.png` (accuracy vs $ per 1k requests) and `accuracy_by_difficulty.png`."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    points = [
        (m, _mean_item_cost(scorecard, m) * 1000, card.score.accuracy)
        for m, card in scorecard.models.items()
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue")
    for name, cost, quality in points:
        ax.annotate(name, (cost, quality), textcoords="offset points", xytext=(5, 5))
    front = pareto_front(points)
    ax.plot([p[1] for p in front], [p[2] for p in front], "--", color="tab:orange",
            label="Pareto front")
    ax.set_xlabel("$ per 1k requests of the suite (derived price)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Quality vs cost ({scorecard.suite})")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    pareto = out_dir / "pareto.png"
    fig.savefig(pareto, dpi=120)
    plt.close(fig)

    cards = scorecard.models.values()
    families = sorted({f for c in cards for f in c.score.accuracy_by_difficulty})
    fig, axes = plt.subplots(1, max(1, len(families)), figsize=(4 * max(1, len(families)), 3.5),
                             squeeze=False)
    for ax, family in zip(axes[0], families, strict=False):
        for model, card in scorecard.models.items():
            cells = card.score.accuracy_by_difficulty.get(family, {})
            ax.plot([int(d) for d in cells], list(cells.values()), marker="o", label=model)
        ax.set_title(family)
        ax.set_xlabel("difficulty")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend()
    fig.tight_layout()
    by_difficulty = out_dir / "accuracy_by_difficulty.png"
    fig.savefig(by_difficulty, dpi=120)
    plt.close(fig)
    return [pareto, by_difficulty]


def plot_route(policies: dict[str, dict[str, Any]], out: Path, title: str,
               cells: dict[str, dict[str, Any]] | None = None) -> Path:
    """Accuracy vs total $ per routing policy; with `cells`, each cell alone in grey and
    their Pareto front (no other cell is both cheaper and more accurate)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if cells:
        points = sorted((row["cost_usd"], row["accuracy"], name) for name, row in cells.items())
        front, best = [], -1.0
        for cost, accuracy, _ in points:
            if accuracy > best:
                front.append((cost, accuracy))
                best = accuracy
        ax.step([c for c, _ in front], [a for _, a in front], where="post", color="0.6",
                linestyle="--", label="cells' Pareto front")
        for cost, accuracy, name in points:
            ax.scatter(cost, accuracy, s=25, color="0.6", marker="s")
            ax.annotate(name, (cost, accuracy), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="0.4")
        ax.legend(loc="lower right", fontsize=8)
    for name, row in policies.items():
        ax.scatter(row["cost_usd"], row["accuracy"], s=50)
        ax.annotate(name, (row["cost_usd"], row["accuracy"]), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel("total $ for the workload")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
