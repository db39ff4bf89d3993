"""deploy/k8s as written: every object valid for Kubernetes, every file used, and the cluster's
rules (ports, probes, QoS, security, network) consistent with the services' code. The rules
are checked on the base here and on the rendered overlays too where kubectl can render them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from pirm.v1 import inference_pb2, metrics_pb2, scorer_pb2

from services.batch.job import DATA_MOUNT
from services.batch.job import LABELS as BATCH_LABELS
from services.common.cluster import DEFAULT_STUDY_WEB_PORT
from services.common.config import DEFAULT_PORTS, add_server_flags
from services.scorer.clients import DNS_PREFIX
from tests.deploy.manifests import (
    K8S,
    METRICS_PORTS,
    OVERLAYS,
    REPO,
    assert_hardened,
    base_documents,
    by_kind,
    container,
    kustomization_dirs,
    listed_files,
    load_documents,
    pod_spec,
    render,
    resource_documents,
    validate,
)

GRPC_SERVICES = {
    "inference": inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    "metrics": metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    "scorer": scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"].full_name,
}
MIB = 1024 * 1024
STUDY_WEB = "study-web"


@pytest.mark.parametrize("doc", [
    pytest.param(doc, id=f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}")
    for path, doc in resource_documents()
])
def test_every_manifest_is_a_valid_kubernetes_object(doc: dict[str, Any]) -> None:
    validate(doc)


def test_every_manifest_file_is_used_by_a_kustomization() -> None:
    listed = {path for d in kustomization_dirs() for _, path in listed_files(d)}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set(), "manifests no kustomization lists"
    # Everything listed exists, but the dashboard of the optional component (issue 6).
    missing = {p for p in listed if not p.exists() and K8S in p.parents}
    assert missing == set()


@pytest.fixture(params=["base", *OVERLAYS])
def cluster(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The objects of the base as written, or of an overlay as kubectl renders it."""
    if request.param == "base":
        return base_documents()
    return render(K8S / "overlays" / request.param)


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def grpc_workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The three gRPC services (the study's rating page is HTTP)."""
    return {name: w for name, w in workloads(docs).items() if name in DEFAULT_PORTS}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = by_kind(docs, "ConfigMap")["pirm-config"]["data"]
    return data


def test_pods_are_hardened(cluster: list[dict[str, Any]]) -> None:
    assert set(workloads(cluster)) == {*DEFAULT_PORTS, STUDY_WEB}
    for workload in workloads(cluster).values():
        assert_hardened(pod_spec(workload))


def test_ports_probes_and_services_match_the_code(cluster: list[dict[str, Any]]) -> None:
    settings = config(cluster)
    services = by_kind(cluster, "Service")
    for name, workload in grpc_workloads(cluster).items():
        port = DEFAULT_PORTS[name]
        assert settings[f"PIRM_{name.upper()}_PORT"] == str(port)
        assert settings[f"PIRM_{name.upper()}_HOST"] == "[::]"  # not loopback in a pod
        c = container(workload)
        assert c["args"] == ["serve", name]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"grpc": port, "metrics": METRICS_PORTS[name]}
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORTS[name])
        # Ready once the service itself reports SERVING; alive while the server answers.
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": port, "service": GRPC_SERVICES[name]}
        assert c["livenessProbe"]["grpc"] == {"port": port}
        service = services[name]
        assert service["spec"]["clusterIP"] == "None"  # per-pod gRPC balancing
        assert service["spec"]["ports"] == [{"name": "grpc", "port": port, "targetPort": "grpc"}]
    for name in ("inference", "metrics"):
        # Every pod of the headless Service, by the scorer's own DNS expansion.
        target = settings[f"PIRM_{name.upper()}_TARGET"]
        assert target == f"{DNS_PREFIX}{name}:{DEFAULT_PORTS[name]}"


def test_the_rating_page_serves_http_with_its_probes_and_the_internal_token(
        cluster: list[dict[str, Any]]) -> None:
    settings = config(cluster)
    web = by_kind(cluster, "Deployment")[STUDY_WEB]
    c = container(web)
    assert c["args"] == ["serve", "study_web"]
    assert settings["PIRM_STUDY_WEB_PORT"] == str(DEFAULT_STUDY_WEB_PORT)
    assert settings["PIRM_STUDY_WEB_HOST"] not in ("127.0.0.1", "localhost")
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": DEFAULT_STUDY_WEB_PORT}
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "PIRM_SCORER_TARGET": f"scorer:{DEFAULT_PORTS['scorer']}"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    annotations = web["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULT_STUDY_WEB_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    secrets = {v["secret"]["secretName"] for v in pod_spec(web)["volumes"] if "secret" in v}
    assert secrets == {"pirm-internal-token"}  # not the teams' tokens
    service = by_kind(cluster, "Service")[STUDY_WEB]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert selects(service["spec"]["selector"], web)
    # raters reach the page's port (the default policy denies everything else)
    policy = by_kind(cluster, "NetworkPolicy")["study-web-from-raters"]["spec"]
    assert selects(policy["podSelector"]["matchLabels"], web)
    assert [port["port"] for rule in policy["ingress"] for port in rule["ports"]] == [
        DEFAULT_STUDY_WEB_PORT]


def names_read_by_the_services() -> set[str]:
    """PIRM_* names in the code, and those add_server_flags derives for each service."""
    source = "\n".join(p.read_text() for p in (REPO / "services").rglob("*.py"))
    names = set(re.findall(r"PIRM_[A-Z0-9_]*[A-Z0-9]", source))
    for service in DEFAULT_PORTS:
        parser = argparse.ArgumentParser()
        add_server_flags(parser, service)
        for action in parser._actions:
            names.update(re.findall(r"env (PIRM_\w+)", action.help or ""))
    return names


def test_configuration_names_are_read_by_the_services(cluster: list[dict[str, Any]]) -> None:
    configured = set(config(cluster))
    for workload in workloads(cluster).values():
        configured.update(e["name"] for e in container(workload).get("env", []))
    assert configured - names_read_by_the_services() == set()


def test_timing_pods_have_whole_cpus_and_room_for_a_model(
    cluster: list[dict[str, Any]],
) -> None:
    resources = container(workloads(cluster)["inference"])["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS"
    assert float(resources["limits"]["cpu"]).is_integer(), "static CPU manager: whole cores"
    model_limit = int(config(cluster)["PIRM_MEMORY_LIMIT_MB"]) * MIB
    assert memory_bytes(resources["limits"]["memory"]) > model_limit
    for workload in workloads(cluster).values():
        limits = container(workload)["resources"]["limits"]
        assert {"cpu", "memory"} <= set(limits), workload["metadata"]["name"]


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** ("_KMGT".index(unit[0]) if unit else 0)


def test_drain_fits_in_the_termination_grace_period(cluster: list[dict[str, Any]]) -> None:
    grace = float(config(cluster)["PIRM_GRACE_SECONDS"])
    for workload in workloads(cluster).values():
        assert grace < pod_spec(workload)["terminationGracePeriodSeconds"]


def test_scorer_owns_its_store_and_reads_the_data_volume(cluster: list[dict[str, Any]]) -> None:
    scorer = by_kind(cluster, "StatefulSet")["scorer"]
    assert scorer["spec"]["replicas"] == 1  # SQLite: one writer
    claims = {t["metadata"]["name"] for t in scorer["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m for m in container(scorer)["volumeMounts"]}
    settings = config(cluster)
    for setting in ("PIRM_STORE", "PIRM_STATE_DIR"):
        assert Path(settings[setting]).is_relative_to(mounts["store"]["mountPath"])
    assert "store" in claims
    # Datasets are paths on the scorer's file system: the same mount as the batch shards'.
    assert mounts["data"]["mountPath"] == str(DATA_MOUNT) and mounts["data"]["readOnly"]
    assert Path(settings["PIRM_DATA"]).is_relative_to(DATA_MOUNT)


def test_autoscalers_and_disruption_budgets_cover_inference_and_metrics(
    cluster: list[dict[str, Any]],
) -> None:
    deployments = by_kind(cluster, "Deployment")
    for name in ("inference", "metrics"):
        target = by_kind(cluster, "HorizontalPodAutoscaler")[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        budget = by_kind(cluster, "PodDisruptionBudget")[name]["spec"]
        assert selects(budget["selector"]["matchLabels"], deployments[name])


def selects(match_labels: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return match_labels.items() <= labels.items()


def test_only_the_scorer_and_batch_shards_reach_inference_and_metrics(
    cluster: list[dict[str, Any]],
) -> None:
    policies = by_kind(cluster, "NetworkPolicy").values()
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)
    for name in ("inference", "metrics"):
        workload = by_kind(cluster, "Deployment")[name]
        allowed = [rule for p in policies
                   if selects(p["spec"]["podSelector"].get("matchLabels", {}), workload)
                   for rule in p["spec"].get("ingress", [])]
        assert allowed, f"nothing may reach {name}"
        for rule in allowed:
            ports = {p["port"] for p in rule["ports"]}
            (peer,) = rule["from"]
            if "podSelector" in peer:
                assert peer["podSelector"]["matchLabels"] in (
                    {"app.kubernetes.io/name": "scorer"},
                    {"app.kubernetes.io/name": BATCH_LABELS["app.kubernetes.io/name"]})
                assert ports == {DEFAULT_PORTS[name]}
            else:  # Prometheus, on the metrics ports only
                assert peer == {"namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                assert ports <= set(METRICS_PORTS.values())


def test_pod_monitor_scrapes_each_service_on_its_metrics_port() -> None:
    (monitor,) = load_documents(K8S / "components" / "prometheus-operator" / "pod-monitor.yaml")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/name"
    assert sorted(expression["values"]) == sorted(DEFAULT_PORTS)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for workload in grpc_workloads(base_documents()).values():
        assert endpoint["port"] in {p["name"] for p in container(workload)["ports"]}
