"""The Grafana dashboard and the alert rules read only metrics the service exports.

Three layers: the PromQL name extraction itself; every name used in
deploy/grafana/dashboards/flexcode.json and deploy/prometheus/alerts.yml belongs to the
service's metric contract (and every contract metric has a panel); and, against a live
app built on a tiny bundle, every used name appears in GET /metrics.
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

# The service's metric families (service/metrics.py), by their exposition base names.
CONTRACT = {
    "flexcode_http_request_duration_seconds",
    "flexcode_beam_search_duration_seconds",
    "flexcode_batch_size",
    "flexcode_cache_hits",
    "flexcode_cache_misses",
    "flexcode_items_added",
    "flexcode_catalog_items",
    "flexcode_redis_up",
    "flexcode_model_info",
}
# Series Prometheus writes itself for every scrape target; the service does not export them.
PROMETHEUS_SYNTHETIC = {"up"}

_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")
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


def base_name(name: str) -> str:
    """A sample or family name without its histogram/counter suffix."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


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


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("flexcode_batch_size_bucket", "flexcode_batch_size"),
        ("flexcode_http_request_duration_seconds_count", "flexcode_http_request_duration_seconds"),
        ("flexcode_items_added_total", "flexcode_items_added"),
        ("flexcode_catalog_items", "flexcode_catalog_items"),
    ],
)
def test_base_name(name, base):
    assert base_name(name) == base


# --------------------------------------------------------------------------- contract


def test_files_have_expressions():
    assert len(dashboard_exprs()) >= 10
    assert len(alert_exprs()) >= 3


def test_dashboard_and_alerts_use_only_contract_metrics():
    unknown = {n for n in used_names() if base_name(n) not in CONTRACT | PROMETHEUS_SYNTHETIC}
    assert not unknown, f"not in the service's metric contract: {sorted(unknown)}"


def test_every_contract_metric_has_a_panel():
    shown = {base_name(n) for e in dashboard_exprs() for n in metric_names(e)}
    assert shown >= CONTRACT, f"no dashboard panel reads {sorted(CONTRACT - shown)}"


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


def exported_families(metrics_text: str) -> set[str]:
    """Base names of the families a Prometheus text exposition declares (# TYPE lines,
    present even for a labelled family with no sample yet)."""
    families = set()
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[:2] == ["#", "TYPE"]:
            families.add(base_name(parts[2]))
    return families


def test_exported_families_parser():
    text = (
        "# HELP flexcode_cache_hits_total hits\n# TYPE flexcode_cache_hits_total counter\n"
        "flexcode_cache_hits_total 3.0\n# TYPE flexcode_batch_size histogram\n"
    )
    assert exported_families(text) == {"flexcode_cache_hits", "flexcode_batch_size"}


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
    exported = exported_families(response.text)
    missing = {
        n for n in used_names() if n not in PROMETHEUS_SYNTHETIC and base_name(n) not in exported
    }
    assert not missing, f"read by the dashboard/alerts but not exported: {sorted(missing)}"
    assert exported >= CONTRACT, f"contract metrics not exported: {sorted(CONTRACT - exported)}"
