"""The Grafana dashboard only queries metrics the gateway (or `frugal bench bill`) really
exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from serving import metrics
from serving.bench.bill_report import BILL_METRICS

DASHBOARD = Path(__file__).resolve().parents[1] / "deployments" / "grafana" / "frugal-cost.json"


def exported_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in ("", "_total", "_bucket", "_count", "_sum"):
                names.add(value._name + suffix)
    return names | set(BILL_METRICS)  # the bill's gauges, written by `frugal bench bill`


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"frugal_[a-z_]+", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported_names(), queried - exported_names()
    assert {"frugal_cost_usd_total", "frugal_saved_usd_total"} <= queried
