"""The Grafana dashboard and the Prometheus configs beside it: every panel's PromQL uses only
metric names the services really export, the panels issue 6 asks for exist, and the
provisioning and scrape configs agree with the dashboard and the services' ports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.common.config import DEFAULT_METRICS_PORTS
from services.common.telemetry import exported_registry
from services.inference import telemetry as inference_telemetry
from services.metrics import telemetry as metrics_telemetry
from services.scorer import telemetry as scorer_telemetry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pirm.json"
SERVICE_METRICS = {"inference": inference_telemetry.REGISTRY,
                   "metrics": metrics_telemetry.REGISTRY,
                   "scorer": scorer_telemetry.REGISTRY}
# The sample names a family of each type exposes (prometheus-client's text format).
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
                   "histogram": ("_bucket", "_count", "_sum", "_created"),
                   "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}


def exported_names(registry: CollectorRegistry) -> set[str]:
    """The sample names of every family the registry exports, labelled series or not yet."""
    return {family.name + suffix for family in registry.collect()
            for suffix in SAMPLE_SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers and range windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_metric_names_are_found_in_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{x="y(z)"}[5m])))'
            ' / on (job) b_total{job=~"pirm-.*"} * 1e6 + count(c)')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}


def test_every_panel_queries_metrics_the_services_export() -> None:
    exported = {service: exported_names(exported_registry(registry))
                for service, registry in SERVICE_METRICS.items()}
    every = set().union(*exported.values())
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, (panel["title"], target["expr"])
            assert used <= every, (panel["title"], used - every)
            for name in used:  # a service's own metric comes from that service
                owner = name.split("_")[1] if name.startswith("pirm_") else None
                assert owner is None or name in exported[owner], (panel["title"], name)


def test_dashboard_has_the_panels_operators_watch() -> None:
    titles = " | ".join(p["title"] for p in panels()).lower()
    for wanted in ("throughput (images/s)", "queue depth", "oldest queued job",
                   "job duration (p50, p95)",
                   "inference time per model and device", "metric compute time", "error rate",
                   "worker restarts"):
        assert wanted in titles, wanted


def test_dashboard_is_well_formed_for_grafana() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"][0]
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for ref in (panel["datasource"], *(t["datasource"] for t in panel["targets"])):
            assert ref == {"type": datasource["type"], "uid": datasource["uid"]}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "pirm.yaml").read_text()
    )["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_local_scrape_config_targets_each_service_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
               for job in config["scrape_configs"]}
    assert targets == {f"pirm-{service}": [f"localhost:{port}"]
                       for service, port in DEFAULT_METRICS_PORTS.items()}


def test_kubernetes_scrape_config_finds_pods_and_names_jobs_like_the_local_one() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    rules = job["relabel_configs"]
    keep = {r["source_labels"][0]: r["regex"] for r in rules if r.get("action") == "keep"}
    assert keep == {"__meta_kubernetes_pod_label_app_kubernetes_io_part_of": "pirm-eval",
                    "__meta_kubernetes_pod_container_port_name": "metrics"}
    (to_job,) = [r for r in rules if r.get("target_label") == "job"]
    assert to_job["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert to_job["replacement"] == "pirm-$1"  # deploy/k8s labels pods inference, metrics, ...


def test_promtool_accepts_the_local_scrape_config() -> None:
    """(Debian's build of Prometheus leaves Kubernetes discovery out, so promtool cannot check
    the Kubernetes config here.)"""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no `promtool` on PATH: `make test-tools` installs Debian's prometheus package")
    checked = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" /
                                                               "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
