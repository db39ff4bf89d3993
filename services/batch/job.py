"""The Indexed Job of a batch evaluation: pod i runs `pirm shard --index i`, which evaluates
shard i of (models x images) and reports to the scorer. Built with the `kubernetes` client's
models, so the same objects are printed by --dry-run and sent to the API server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml
from kubernetes import client

from services.batch.shard import shard_arguments

# Where the data volume (datasets and submitted models) is mounted, as in the scorer's pod, so
# that a dataset path means the same thing to a shard and to the scorer.
DATA_MOUNT = PurePosixPath("/data")
# Expanded by the kubelet from the variable the Job controller gives each pod of an Indexed Job.
SHARD_INDEX = "$(JOB_COMPLETION_INDEX)"
UID = 10001  # the image's user (deploy/docker/Dockerfile)
LABELS = {"app.kubernetes.io/name": "pirm-batch", "app.kubernetes.io/part-of": "pirm-eval"}


@dataclass(frozen=True)
class BatchSpec:
    """One `pirm batch` run. Paths are on the data volume (PVC `data_claim`)."""

    name: str
    track: str
    models: str  # a folder of .pb files, or a comma-separated list of them
    data: str  # the dataset folder, challenge layout
    shards: int = 4
    namespace: str = "pirm-cpu"
    image: str = "pirm-eval:0.1.0"
    data_claim: str = "pirm-data"
    scorer: str = "scorer:50053"  # as the Job's pods reach it
    retries_per_shard: int = 2


def batch_job_name(track: str, now: float | None = None) -> str:
    """pirm-batch-a-20261125-142501: unique per second, short enough for the pods' hostnames
    (name-index must fit 63 characters)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"pirm-batch-{track.lower()}-{stamp}"


def on_data_volume(path: str) -> str:
    return str(DATA_MOUNT / path.lstrip("/"))


def shard_args(spec: BatchSpec) -> list[str]:
    """The container's arguments (the image's entrypoint is `pirm`). The Job's name is the
    batch id: the shards' jobs are the same, and another run of `pirm batch` makes new ones."""
    models = ",".join(on_data_volume(p) for p in spec.models.split(",") if p)
    return shard_arguments(SHARD_INDEX, spec.shards, spec.track, models,
                           on_data_volume(spec.data), spec.scorer, batch_id=spec.name)


def build_job(spec: BatchSpec) -> client.V1Job:
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=spec.name, namespace=spec.namespace,
            labels={**LABELS, "pirm.eval/track": spec.track},
        ),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=spec.shards,
            parallelism=spec.shards,
            # Retries count per shard: one bad shard does not use up the others' retries.
            backoff_limit_per_index=spec.retries_per_shard,
            # A systematic fault (scorer unreachable, wrong image) fails most shards: stop
            # the rest instead of letting them fail one by one.
            max_failed_indexes=spec.shards // 2,
            pod_failure_policy=client.V1PodFailurePolicy(rules=[
                # A pod evicted by a node drain or preemption is not the shard's fault.
                client.V1PodFailurePolicyRule(
                    action="Ignore",
                    on_pod_conditions=[client.V1PodFailurePolicyOnPodConditionsPattern(
                        type="DisruptionTarget", status="True")],
                ),
            ]),
            ttl_seconds_after_finished=24 * 3600,
            template=shard_pod_template(spec),
        ),
    )


INTERNAL_TOKEN_SECRET = "pirm-internal-token"  # deploy/k8s/README.md


def shard_pod_template(spec: BatchSpec) -> client.V1PodTemplateSpec:
    container = client.V1Container(
        name="shard",
        image=spec.image,
        args=shard_args(spec),
        # The shards call inference and metrics as the scorer does: with its internal token.
        env=[client.V1EnvVar(name="PIRM_TOKEN", value_from=client.V1EnvVarSource(
            secret_key_ref=client.V1SecretKeySelector(name=INTERNAL_TOKEN_SECRET, key="token")))],
        # A client of the scorer: it reads images and sends requests, the services compute.
        resources=client.V1ResourceRequirements(
            requests={"cpu": "250m", "memory": "512Mi"},
            limits={"cpu": "1", "memory": "1Gi"},
        ),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[
            client.V1VolumeMount(name="data", mount_path=str(DATA_MOUNT), read_only=True),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=LABELS),
        spec=client.V1PodSpec(
            # podFailurePolicy requires Never: the Job, not the kubelet, decides on retries.
            restart_policy="Never",
            automount_service_account_token=False,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=UID, run_as_group=UID,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            containers=[container],
            volumes=[
                client.V1Volume(
                    name="data",
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name=spec.data_claim, read_only=True),
                ),
                client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
            ],
        ),
    )


def manifest(obj: Any) -> dict[str, Any]:
    """The object as the API server receives it (camelCase keys, unset fields left out)."""
    result: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)
    return result


def manifest_yaml(obj: Any) -> str:
    return yaml.safe_dump(manifest(obj), sort_keys=False)
