"""The calls `pirm batch` makes to the Kubernetes API server: create the Job, watch it until
it has finished, and read its pods to show each shard's state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from kubernetes import client, config, watch

# Set by the Job controller on each pod of an Indexed Job.
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class ShardPod:
    """One pod of the Job: one attempt at shard `index`."""

    index: int
    name: str
    phase: str  # Pending, Running, Succeeded, Failed


@dataclass(frozen=True)
class JobProgress:
    name: str
    shards: int
    succeeded: int
    active: int
    failed_shards: str  # the Job's failedIndexes, e.g. "1,3-4"
    outcome: str | None  # "Complete" or "Failed" once the Job has finished
    pods: list[ShardPod]

    def summary(self) -> str:
        line = f"{self.name}: {self.succeeded}/{self.shards} shards done, {self.active} running"
        if self.failed_shards:
            line += f", failed shards {self.failed_shards}"
        pending = [p for p in self.pods if p.phase not in ("Succeeded", "Failed")]
        if pending:
            line += " (" + ", ".join(f"shard {p.index} {p.phase}" for p in pending) + ")"
        return line


def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """The API server of the kubeconfig's current context, as kubectl finds it (--kubeconfig,
    else $KUBECONFIG, else ~/.kube/config)."""
    config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


def create_job(api: client.ApiClient, namespace: str, job: client.V1Job) -> client.V1Job:
    return client.BatchV1Api(api).create_namespaced_job(namespace, job)


def follow_job(api: client.ApiClient, namespace: str, name: str) -> Iterator[JobProgress]:
    """One progress report per change of the Job, the last one once it has finished. The
    client resumes an expired watch from the last resourceVersion it saw."""
    jobs = client.BatchV1Api(api)
    watcher = watch.Watch()
    for event in watcher.stream(jobs.list_namespaced_job, namespace,
                                field_selector=f"metadata.name={name}"):
        progress = job_progress(event["object"], shard_pods(api, namespace, name))
        yield progress
        if progress.outcome:
            watcher.stop()
            return


def shard_pods(api: client.ApiClient, namespace: str, name: str) -> list[ShardPod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={name}")
    shards = [shard_pod(pod) for pod in pods.items]
    return sorted(shards, key=lambda p: (p.index, p.name))


def shard_pod(pod: client.V1Pod) -> ShardPod:
    metadata = pod.metadata or client.V1ObjectMeta()
    index = (metadata.annotations or {}).get(INDEX_ANNOTATION, "-1")
    phase = pod.status.phase if pod.status else None
    return ShardPod(int(index), metadata.name or "", phase or "Unknown")


def job_progress(job: client.V1Job, pods: list[ShardPod]) -> JobProgress:
    status = job.status or client.V1JobStatus()
    return JobProgress(
        name=(job.metadata or client.V1ObjectMeta()).name or "",
        shards=(job.spec.completions if job.spec else None) or 0,
        succeeded=status.succeeded or 0,
        active=status.active or 0,
        failed_shards=status.failed_indexes or "",
        outcome=job_outcome(status),
        pods=pods,
    )


def job_outcome(status: client.V1JobStatus) -> str | None:
    """Complete or Failed: the Job's terminal conditions (SuccessCriteriaMet and FailureTarget
    come first, while pods still terminate)."""
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def error_message(error: client.ApiException) -> str:
    """`409 Conflict: jobs.batch "x" already exists`: the status and the API server's reason."""
    try:
        detail = json.loads(error.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        detail = ""
    return f"{error.status} {error.reason}" + (f": {detail}" if detail else "")
