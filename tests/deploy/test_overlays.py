"""The overlays and optional components as `kubectl kustomize` renders them (skipped, saying
why, where kubectl or a recent enough kustomize is missing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import K8S, OVERLAYS, by_kind, container, pod_spec, render, validate


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_objects_in_its_namespace(overlay: str) -> None:
    docs = render(K8S / "overlays" / overlay)
    for doc in docs:
        validate(doc)
    namespace = f"pirm-{overlay}"
    assert by_kind(docs, "Namespace").keys() == {namespace}
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        namespace}
    images = {container(d)["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    assert all(image.rpartition(":")[2] for image in images), images  # tagged


def test_gpu_overlay_puts_inference_on_a_gpu_node() -> None:
    inference = by_kind(render(K8S / "overlays" / "gpu"), "Deployment")["inference"]
    spec, c = pod_spec(inference), container(inference)
    assert c["image"].startswith("pirm-eval-gpu:")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "PIRM_DEVICE", "value": "gpu"} in c["env"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"]


def test_optional_components_render_once_the_dashboard_exists(tmp_path: Path) -> None:
    """The dashboard (issue 6) is not on this branch: a stand-in shows the generator works."""
    tree = tmp_path / "deploy"
    shutil.copytree(K8S, tree / "k8s")
    dashboard = tree / "grafana" / "dashboards" / "pirm.json"
    dashboard.parent.mkdir(parents=True)
    dashboard.write_text(json.dumps({"title": "PIRM evaluation"}))
    # As the components' notes say: listed in an overlay, which puts them in its namespace.
    overlay = tree / "k8s" / "overlays" / "cpu"
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    spec["components"] = ["../../components/prometheus-operator",
                          "../../components/grafana-dashboard"]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    docs = render(overlay, "--load-restrictor", "LoadRestrictionsNone")
    for doc in docs:
        validate(doc)
    assert by_kind(docs, "PodMonitor")["pirm-eval"]["metadata"]["namespace"] == "pirm-cpu"
    (generated,) = [d for d in by_kind(docs, "ConfigMap").values()
                    if d["metadata"]["name"].startswith("pirm-grafana-dashboard-")]
    assert generated["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(generated["data"]["pirm.json"]) == {"title": "PIRM evaluation"}
