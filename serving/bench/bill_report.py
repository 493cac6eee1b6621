"""The bill as a person reads it: a table, and a waterfall from the naive bill to the
frugal one, lever by lever, with accuracy beside each bar (docs/bill.md)."""

from __future__ import annotations

from pathlib import Path

from serving.bench.bill import BillReport

#: What the cost account calls each lever in `usage.cost.saved_by_lever` (reasoning and
#: structured output cut tokens, which the account's same-tokens baseline cannot see).
ACCOUNT_KEY = {"routing": "routing", "cache": "cache", "batch": "batch",
               "compaction": "compaction"}


def lever_savings(report: BillReport) -> dict[str, float]:
    """Each lever's measured share: what turning it off alone adds to the frugal bill."""
    return {lever: run.cost_usd - report.frugal.cost_usd
            for lever, run in report.by_lever.items()}


def markdown(report: BillReport, command: str, prices: str) -> str:
    naive, frugal = report.naive, report.frugal
    kept = frugal.accuracy / naive.accuracy if naive.accuracy else 0.0
    rows = [
        "# The bill, measured", "",
        f"Command: `{command}`", "",
        f"Prices: {prices}. Every $ is the sum of the responses' own `usage.cost.total_usd` "
        "(batch results at their discount).", "",
        f"**frugal costs {1 / report.ratio if report.ratio else 0:.3f}x naive "
        f"({report.ratio:.1f}x cheaper)**: ${frugal.cost_usd:.6f} against "
        f"${naive.cost_usd:.6f}, at {kept:.1%} of its accuracy ({frugal.accuracy:.2f} "
        f"against {naive.accuracy:.2f}). Target: 10x cheaper at 95% of the accuracy: "
        f"{'met' if report.ratio >= 10 and kept >= 0.95 else 'missed'}.", "",
        "| run | levers on | $ | x naive | accuracy | input tokens | cached | output tokens "
        "| summariser $ | requests | refused | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = {"naive": naive, "frugal": frugal,
            **{f"frugal - {k}": v for k, v in report.by_lever.items()}}
    for name, run in runs.items():
        share = run.cost_usd / naive.cost_usd if naive.cost_usd else 0.0
        rows.append(f"| {name} | {', '.join(run.levers) or '-'} | {run.cost_usd:.6f} | "
                    f"{share:.3f} | {run.accuracy:.2f} | {run.prompt_tokens} | "
                    f"{run.cached_tokens} | {run.completion_tokens} | "
                    f"{run.compaction_usd:.6f} | {run.requests} | {run.refused} | "
                    f"{run.wall_s:.0f} |")
    savings = lever_savings(report)
    rows += ["", "## Each lever's share of the saving", "",
             "Measured: the frugal bill with that lever alone turned off, minus the frugal "
             "bill. Account: the frugal run's `saved_by_lever`, summed over its responses.",
             "", "| lever | $ without it | measured saving $ | accuracy without it | "
             "account's saved_by_lever $ |", "|---|---|---|---|---|"]
    for lever, run in report.by_lever.items():
        key = ACCOUNT_KEY.get(lever)
        account = f"{frugal.saved_by_lever.get(key, 0.0):.6f}" if key else "(not counted)"
        rows.append(f"| {lever} | {run.cost_usd:.6f} | {savings[lever]:.6f} | "
                    f"{run.accuracy:.2f} | {account} |")
    if report.absent:
        rows += ["", "Not in this run:", ""]
        rows += [f"- {lever}: {why}" for lever, why in report.absent.items()]
    return "\n".join(rows) + "\n"


def waterfall(report: BillReport, path: Path) -> None:
    """naive bar, one step down per lever's measured saving, the rest (levers together
    save more or less than each alone) as one step, then the frugal bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    savings = sorted(lever_savings(report).items(), key=lambda kv: -kv[1])
    naive, frugal = report.naive.cost_usd, report.frugal.cost_usd
    interaction = naive - frugal - sum(s for _, s in savings)
    steps = [*savings, ("together", interaction)]
    labels, bottoms, heights, colors, notes = ["naive"], [0.0], [naive], ["#888888"], [
        f"acc {report.naive.accuracy:.2f}"]
    level = naive
    for lever, saved in steps:
        level -= saved
        labels.append(f"- {lever}")
        bottoms.append(min(level, level + saved))
        heights.append(abs(saved))
        colors.append("#2a9d8f" if saved >= 0 else "#e76f51")
        run = report.by_lever.get(lever)
        notes.append(f"acc w/o {run.accuracy:.2f}" if run else "")
    labels.append("frugal")
    bottoms.append(0.0)
    heights.append(frugal)
    colors.append("#264653")
    notes.append(f"acc {report.frugal.accuracy:.2f}")
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 4.5))
    ax.bar(labels, heights, bottom=bottoms, color=colors)
    for i, note in enumerate(notes):
        ax.text(i, bottoms[i] + heights[i], note, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("$ for the workload")
    ax.set_title(f"The bill: naive ${naive:.5f} -> frugal ${frugal:.5f} "
                 f"({report.ratio:.1f}x cheaper)")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: The bill's gauges (one registry of their own: the bench is not the server).
BILL_METRICS: dict[str, str] = {
    "frugal_bill_cost_usd": "$ of the reference workload, per run of the last bill",
    "frugal_bill_accuracy": "Accuracy of the reference workload, per run of the last bill",
    "frugal_bill_ratio": "Naive $ over frugal $ in the last bill",
}


def prometheus_registry(report: BillReport) -> object:
    """The bill's totals as gauges, labelled by run (`naive`, `frugal`, `without_<lever>`)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    cost, accuracy, ratio = (Gauge(name, doc, ["run"] if name != "frugal_bill_ratio" else [],
                                   registry=registry) for name, doc in BILL_METRICS.items())
    runs = {"naive": report.naive, "frugal": report.frugal,
            **{f"without_{k}": v for k, v in report.by_lever.items()}}
    for name, run in runs.items():
        cost.labels(run=name).set(run.cost_usd)
        accuracy.labels(run=name).set(run.accuracy)
    ratio.set(report.ratio)
    return registry


def publish(report: BillReport, textfile: Path, pushgateway: str = "") -> None:
    """Write the gauges for node_exporter's textfile collector, and push them to a
    Prometheus Pushgateway when one is given, so the dashboard shows the last bill."""
    from prometheus_client import push_to_gateway, write_to_textfile

    registry = prometheus_registry(report)
    write_to_textfile(str(textfile), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job="frugal_bench_bill", registry=registry)
