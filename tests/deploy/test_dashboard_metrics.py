"""The Grafana dashboard and the alert rules read only metrics the service exports.

Three layers: the PromQL name extraction itself; every name used in
deploy/grafana/dashboards/flexcode.json and deploy/prometheus/alerts.yml is, exactly, a
series of the service's metric contract (and every contract metric has a panel); and,
against a live app built on a tiny bundle, every used name is, exactly, a series that
GET /metrics exports. Names are compared whole: a histogram read as `_total`, or a
counter read without it, is a name Prometheus has no series for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "flexcode.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

# The service's metric families (service/metrics.py) and their types.
CONTRACT = {
    "flexcode_http_request_duration_seconds": "histogram",
    "flexcode_beam_search_duration_seconds": "histogram",
    "flexcode_batch_size": "histogram",
    "flexcode_cache_hits": "counter",
    "flexcode_cache_misses": "counter",
    "flexcode_items_added": "counter",
    "flexcode_catalog_items": "gauge",
    "flexcode_redis_up": "gauge",
    "flexcode_model_info": "gauge",
}
# Series Prometheus writes itself for every scrape target; the service does not export them.
PROMETHEUS_SYNTHETIC = {"up"}


def series_names(family: str, kind: str) -> set[str]:
    """The series a family of this type is queried by, in the Prometheus text format
    (prometheus_client also exports `<name>_created`; nothing reads it)."""
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    if kind == "summary":
        return {family, f"{family}_sum", f"{family}_count"}
    if kind == "counter":
        return {family if family.endswith("_total") else f"{family}_total"}
    return {family}


# Each queryable series of the contract -> its family.
CONTRACT_SERIES = {
    name: family for family, kind in CONTRACT.items() for name in series_names(family, kind)
}

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left"}
_KEYWORDS |= {"group_right", "bool", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads, as written (suffixes kept).

    Strings, label matchers, ranges, grouping label lists and Grafana variables are cut
    first; what is left that is neither a keyword nor followed by `(` (a function or an
    aggregation) is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries ([5m], [$__rate_interval])
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside ranges
    names = set()
    for match in _NAME.finditer(text):
        name = match.group(0)
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def _dashboard_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in _dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def used_names() -> set[str]:
    """Every metric name the dashboard and the alert rules read, suffixes kept."""
    return set().union(*(metric_names(e) for e in dashboard_exprs() + alert_exprs()))


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "histogram_quantile(0.99, sum by (le, route) "
            "(rate(flexcode_http_request_duration_seconds_bucket[$__rate_interval])))",
            {"flexcode_http_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_count{status=~"5..", route!="/x(y)"}[5m])) / sum(rate(a_count[5m])) > 0.05',
            {"a_count"},
        ),
        ("min by (instance) (flexcode_redis_up) == 0", {"flexcode_redis_up"}),
        ('up{job="flexcode-api"} == 0', {"up"}),
        ("sum(increase(x_total[$__range])) * 60 + 1e3", {"x_total"}),
        ("a and on (instance) b offset 5m unless ignoring(le) c", {"a", "b", "c"}),
        ("rate(x[5m:1m]) / scalar(y)", {"x", "y"}),
    ],
)
def test_metric_names(expr, expected):
    assert metric_names(expr) == expected


def unknown_names(names: set[str], known: set[str]) -> set[str]:
    """Names that are, as written, neither a known series nor one Prometheus adds."""
    return names - known - PROMETHEUS_SYNTHETIC


@pytest.mark.parametrize(
    "name",
    [
        "flexcode_batch_size_total",  # a histogram has no _total
        "flexcode_http_request_duration_seconds",  # nor a bare series
        "flexcode_cache_hits",  # a counter is read as _total
        "flexcode_redis_up_total",  # a gauge has no suffix
        "flexcode_catalog_items_count",
    ],
)
def test_a_wrong_suffix_is_an_unknown_name(name):
    assert unknown_names({name}, set(CONTRACT_SERIES)) == {name}


# --------------------------------------------------------------------------- contract


def test_files_have_expressions():
    assert len(dashboard_exprs()) >= 10
    assert len(alert_exprs()) >= 3


def test_dashboard_and_alerts_use_only_contract_metrics():
    unknown = unknown_names(used_names(), set(CONTRACT_SERIES))
    assert not unknown, f"not a series of the service's metric contract: {sorted(unknown)}"


def test_every_contract_metric_has_a_panel():
    names = {n for e in dashboard_exprs() for n in metric_names(e)}
    shown = {CONTRACT_SERIES[n] for n in names if n in CONTRACT_SERIES}
    assert shown == set(CONTRACT), f"no dashboard panel reads {sorted(set(CONTRACT) - shown)}"


def test_histograms_are_read_through_their_series():
    """A histogram family is only queryable as _bucket/_sum/_count, never bare."""
    histograms = {
        "flexcode_http_request_duration_seconds",
        "flexcode_beam_search_duration_seconds",
        "flexcode_batch_size",
    }
    bare = used_names() & histograms
    assert not bare, f"histograms used without _bucket/_sum/_count: {sorted(bare)}"


# --------------------------------------------------------------------------- live /metrics


def exported_series(metrics_text: str) -> set[str]:
    """The series names a Prometheus text exposition declares, from its # TYPE lines
    (present even for a labelled family with no sample yet), suffixes as exported."""
    series = set()
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            series |= series_names(parts[2], parts[3])
    return series


def test_exported_series_parser():
    text = (
        "# HELP flexcode_cache_hits_total hits\n# TYPE flexcode_cache_hits_total counter\n"
        "flexcode_cache_hits_total 3.0\n# TYPE flexcode_batch_size histogram\n"
        "# TYPE flexcode_redis_up gauge\n"
    )
    assert exported_series(text) == {
        "flexcode_cache_hits_total",
        "flexcode_batch_size_bucket",
        "flexcode_batch_size_sum",
        "flexcode_batch_size_count",
        "flexcode_redis_up",
    }


@pytest.fixture
def bundle_root(request, tmp_path) -> Path:
    """The service tests' `tiny_bundle` when it is visible from here, else one built the
    same way (tests/bundle_factory.py). If `tiny_bundle` lives in tests/service/conftest.py,
    importing it into this module is the one line that wires it in."""
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        factory = pytest.importorskip("tests.bundle_factory")
        factory.make_tiny_bundle(tmp_path / "bundles")
        return tmp_path / "bundles"


def test_live_metrics_export_every_used_name(bundle_root, tmp_path):
    pytest.importorskip("service.app", reason="service/ (the FastAPI app) is not there yet")
    from fastapi.testclient import TestClient

    fakes = pytest.importorskip("tests.service.fakes", reason="the service tests' fakes")
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        bundle_path=bundle_root,
        journal_path=tmp_path / "journal.sqlite3",
        redis_url="",
        environment="development",
    )
    # The tiny bundle's semantic space is not MiniLM's: the fake encoder matches it.
    app = create_app(settings, text_encoder=fakes.FakeTextEncoder())
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    exported = exported_series(response.text)
    missing = unknown_names(used_names(), exported)
    assert not missing, f"read by the dashboard/alerts but not exported: {sorted(missing)}"
    absent = set(CONTRACT_SERIES) - exported
    assert not absent, f"contract series not exported: {sorted(absent)}"
