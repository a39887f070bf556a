"""deploy/grafana/rpn-pipeline.json: every query asks for metrics the pipeline exports (no Grafana needed).

The exported names are derived from the code: the metric families declared in pipeline/monitor/metrics.py (and in
pipeline/cluster/ once it exists) are rebuilt with prometheus-client and rendered, so the `_total`, `_bucket`, `_sum`,
`_count` and `_info` suffixes are the library's own, not guessed.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "rpn-pipeline.json"
METRICS_SOURCES = [ROOT / "pipeline" / "monitor" / "metrics.py"]
CLUSTER_PACKAGE = ROOT / "pipeline" / "cluster"

# The cluster mode's metrics, as agreed with pipeline/cluster (docs/cluster-kubernetes.md#metrics): name as declared
# in prometheus-client -> kind.
CLUSTER_METRICS = {
    "rpn_cluster_camera_moves": "counter",  # {reason}: cameras moved to another worker; exported as ..._total
    "rpn_cluster_worker_cameras": "gauge",  # {worker, node}: cameras placed on each worker
}

FAMILY_KINDS = {
    "CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge", "InfoMetricFamily": "info",
    "Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Info": "info",
}
# PromQL functions and aggregations the dashboard may call, and its other keywords.
PROMQL_FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "count",
    "count_over_time", "count_values", "delta", "deriv", "floor", "group", "histogram_quantile", "idelta",
    "increase", "irate", "label_replace", "last_over_time", "max", "max_over_time", "min", "min_over_time",
    "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sort", "sort_desc", "stddev", "stdvar",
    "sum", "sum_over_time", "time", "topk", "vector",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def declared_metrics(path: Path) -> dict[str, str]:
    """name -> kind of every metric family a module declares with prometheus-client (first argument a literal)."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        first = node.args[0]
        if (func in FAMILY_KINDS and isinstance(first, ast.Constant) and isinstance(first.value, str)
                and first.value.startswith("rpn_")):  # not collections.Counter("...") and the like
            found[first.value] = FAMILY_KINDS[func]
    return found


class _Families(Collector):
    def __init__(self, kinds: dict[str, str]) -> None:
        self.kinds = kinds

    def collect(self) -> Iterator[Any]:
        for name, kind in self.kinds.items():
            if kind == "counter":
                yield CounterMetricFamily(name, "doc", value=0)
            elif kind == "gauge":
                yield GaugeMetricFamily(name, "doc", value=0)
            elif kind == "info":
                yield InfoMetricFamily(name, "doc", value={})


def exported_names(kinds: dict[str, str]) -> set[str]:
    """The sample names prometheus-client exports for these metric families."""
    registry = CollectorRegistry()
    registry.register(_Families({n: k for n, k in kinds.items() if k != "histogram"}))
    for name, kind in kinds.items():
        if kind == "histogram":
            Histogram(name, "doc", registry=registry).observe(0)
    text = generate_latest(registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def known_metrics() -> set[str]:
    kinds = dict(CLUSTER_METRICS)
    sources = [*METRICS_SOURCES, *sorted(CLUSTER_PACKAGE.rglob("*.py"))]
    for path in sources:
        kinds.update(declared_metrics(path))
    return exported_names(kinds)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects; raises ValueError on a function it does not know."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)                              # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                             # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)                            # Grafana variables
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", s):
        token = match.group(0)
        called = s[match.end():].lstrip().startswith("(")
        if called:
            if token not in PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {token!r} in {expr!r}")
        elif token.lower() not in PROMQL_KEYWORDS and not re.fullmatch(r"e\d+", token):
            names.add(token)
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable (label_values(metric, label) -> metric)."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
            yield from walk(panel.get("panels", []))
    yield from walk(board["panels"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert inner, f"variable {var['name']}: expected label_values(metric, label), got {query!r}"
            yield f"variable {var['name']}", inner.group(1)


def test_every_query_uses_exported_metrics() -> None:
    known = known_metrics()
    used: set[str] = set()
    for where, expr in queries(dashboard()):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: {sorted(names - known)} not exported by the pipeline ({expr!r})"
        used |= names
    # The dashboard covers what operators look at first.
    for name in ("rpn_camera_fps", "rpn_camera_frames_dropped_total", "rpn_frame_age_seconds_bucket",
                 "rpn_engine_batch_latency_seconds_bucket", "rpn_publisher_buffered_entries",
                 "rpn_cluster_worker_cameras", "rpn_cluster_camera_moves_total"):
        assert name in used, f"no panel shows {name}"


def test_the_check_refuses_unknown_metrics_and_functions() -> None:
    known = known_metrics()
    assert metric_names('sum by (camera) (rate(rpn_camera_frames_dropped_total{camera=~"$camera"}[5m]))') == {
        "rpn_camera_frames_dropped_total"}
    # The counter without its _total suffix is not what Prometheus stores.
    assert not metric_names("rate(rpn_camera_frames_dropped[5m])") <= known
    assert not metric_names("rpn_camera_fsp") <= known
    with pytest.raises(ValueError, match="histogram_quantil"):
        metric_names("histogram_quantil(0.9, rpn_frame_age_seconds_bucket)")


def test_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "rpn-pipeline" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        # Every $variable a query uses is defined ($__rate_interval is Grafana's own).
        for target in panel["targets"]:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var.startswith("__") or var in variables, f"{panel['title']}: ${var} undefined"


def test_cluster_metrics_are_declared_by_the_cluster_package() -> None:
    if not CLUSTER_PACKAGE.is_dir():
        pytest.skip("pipeline/cluster is not in this tree yet")
    declared: dict[str, str] = {}
    for path in CLUSTER_PACKAGE.rglob("*.py"):
        declared.update(declared_metrics(path))
    for name, kind in CLUSTER_METRICS.items():
        assert declared.get(name) == kind or declared.get(f"{name}_total") == kind, (
            f"pipeline/cluster does not declare the {kind} {name} the dashboard shows")
