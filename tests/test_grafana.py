"""``deploy/grafana/dagger-adapter.json``: a Grafana dashboard whose every query is valid PromQL
and names only metrics a real worker exposes (and that shows every metric the worker has)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from tests.test_telemetry import scrape
from tests.test_worker import StartWorker, start_worker

__all__ = ["start_worker"]

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dagger-adapter.json"
METRIC = re.compile(r"\bdagger_adapter_[a-z_]+\b")
# Grafana's variables, as Grafana substitutes them before the query reaches Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$job": ".*"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("_info",)}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def exposed(text: str) -> set[str]:
    """Every series name the exposition declares, with or without samples yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "dagger-adapter" and board["title"] and board["schemaVersion"] >= 36
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"} and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "job"]


def test_every_query_is_promql() -> None:
    for expr in queries(dashboard()):
        if expr.startswith("label_values("):  # Grafana's own function around a metric
            expr = expr.split("(", 1)[1].split(",", 1)[0]
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        promql_parser.parse(expr)  # raises on a syntax error


async def test_the_dashboard_queries_exactly_the_metrics_a_worker_exposes(start_worker: StartWorker) -> None:
    worker = await start_worker(metrics_port=0, metrics_address="127.0.0.1")
    assert worker.metrics_port is not None
    text, _ = await scrape(worker.metrics_port)
    available = exposed(text)
    queried = {name for expr in queries(dashboard()) for name in METRIC.findall(expr)}
    assert queried - available == set(), "the dashboard queries metrics the worker does not expose"
    families = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("dagger_adapter_")}
    shown = {f for f in families if any(name.startswith(f) for name in queried)}
    assert families - shown == set(), "metrics the dashboard does not show"
