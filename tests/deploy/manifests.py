"""Helpers of the deployment tests: reading the manifests, validating them against the
Kubernetes OpenAPI schemas (offline, strict), and rendering overlays with `kubectl kustomize`."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
# The oldest release the manifests target (Jobs' backoffLimitPerIndex is on by default from
# 1.29) and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.31", "1.37"]
# Custom resources have no schema in kubernetes-validate: their required fields instead.
CUSTOM_RESOURCE_FIELDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): ["metadata.name", "spec.selector",
                                                 "spec.podMetricsEndpoints"],
}
# The services' Prometheus ports (issue 6's defaults).
METRICS_PORTS = {"inference": 9101, "metrics": 9102, "scorer": 9103}
MIN_KUSTOMIZE_MAJOR = 4  # components and `patches` entries


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def listed_files(directory: Path) -> Iterator[tuple[str, Path]]:
    """(role, path) of every local file or folder a kustomization names."""
    spec = kustomization(directory)
    for role in ("resources", "components"):
        for entry in spec.get(role, []):
            yield role, (directory / entry).resolve()
    for patch in spec.get("patches", []):
        yield "patches", (directory / patch["path"]).resolve()
    for generator in spec.get("configMapGenerator", []):
        for entry in generator.get("files", []):
            yield "files", (directory / entry.split("=")[-1]).resolve()


def resource_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every complete object of the tree (patches are partial: they are checked rendered)."""
    files = sorted({path for d in kustomization_dirs() for role, path in listed_files(d)
                    if role == "resources" and path.is_file()})
    return [(path, doc) for path in files for doc in load_documents(path)]


def field(obj: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None  # type: ignore[assignment]
    return obj


def validate(doc: dict[str, Any]) -> None:
    """Strict schema validation in every targeted version, or a custom resource's fields."""
    required = CUSTOM_RESOURCE_FIELDS.get((doc["apiVersion"], doc["kind"]))
    if required is not None:
        missing = [name for name in required if not field(doc, name)]
        assert not missing, f"{doc['kind']} {doc['metadata'].get('name')} lacks {missing}"
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{name} is not a valid Kubernetes {version} object at {path}: "
                        f"{error.message}")


@functools.cache
def kustomize_problem() -> str | None:
    """Why overlays cannot be rendered here, or None when they can."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed (`make test-tools` installs Debian's kubernetes-client)"
    output = subprocess.run(["kubectl", "version", "--client", "-o", "json"],
                            capture_output=True, text=True, check=True).stdout
    kustomize = json.loads(output).get("kustomizeVersion", "")
    major = int(kustomize.lstrip("v").split(".")[0]) if kustomize else 0
    if major < MIN_KUSTOMIZE_MAJOR:
        return (f"kubectl's kustomize {kustomize or '(before v4)'} predates components; "
                f"v{MIN_KUSTOMIZE_MAJOR}+ (kubectl 1.21 or later) renders the overlays")
    return None


def render(directory: Path, *flags: str) -> list[dict[str, Any]]:
    problem = kustomize_problem()
    if problem:
        pytest.skip(problem)
    return [doc for doc in yaml.safe_load_all(kustomize(directory, flags)) if doc]


@functools.cache
def kustomize(directory: Path, flags: tuple[str, ...]) -> str:
    result = subprocess.run(["kubectl", "kustomize", *flags, str(directory)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def base_documents() -> list[dict[str, Any]]:
    """The base's objects as written, for the checks that need no kubectl."""
    base = K8S / "base"
    return [doc for role, path in listed_files(base) if role == "resources"
            for doc in load_documents(path)]


def assert_hardened(spec: dict[str, Any]) -> None:
    """Non-root, read-only root file system, no capabilities, default seccomp, no API token."""
    assert spec["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in spec["containers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, c["name"]
        assert context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, c["name"]
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{c['name']}: no writable /tmp (NUMBA_CACHE_DIR, HOME)"
