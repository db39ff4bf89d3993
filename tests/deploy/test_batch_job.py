"""The Indexed Job `pirm batch` builds: valid for Kubernetes, and shaped as issue 7 asks."""

from __future__ import annotations

import pytest
import yaml

from services.batch.job import BatchSpec, batch_job_name, build_job, manifest
from services.cli.main import main
from tests.deploy.manifests import assert_hardened, validate

SPEC = BatchSpec(name="pirm-batch-b-20261125-142501", track="B", models="teams/a.pb,teams/b.pb",
                 data="/pirm2018/dped", shards=6, namespace="eval")


def test_job_is_a_valid_kubernetes_object() -> None:
    validate(manifest(build_job(SPEC)))


def test_job_runs_one_pod_per_shard_with_per_shard_retries() -> None:
    spec = manifest(build_job(SPEC))["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 6
    assert spec["backoffLimitPerIndex"] == 2
    assert spec["maxFailedIndexes"] == 3
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule == {"action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_each_pod_evaluates_its_shard_against_the_scorer() -> None:
    (container,) = manifest(build_job(SPEC))["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "shard", "--index", "$(JOB_COMPLETION_INDEX)", "--shards", "6", "--track", "B",
        "--models", "/data/teams/a.pb,/data/teams/b.pb", "--data", "/data/pirm2018/dped",
        "--scorer", "scorer:50053", "--batch-id", "pirm-batch-b-20261125-142501",
    ]


def test_pods_read_the_data_volume_and_are_hardened() -> None:
    pod = manifest(build_job(SPEC))["spec"]["template"]["spec"]
    assert_hardened(pod)
    (container,) = pod["containers"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {
        "claimName": "pirm-data", "readOnly": True}} in pod["volumes"]


def test_job_name_leaves_room_for_the_pods_hostnames() -> None:
    name = batch_job_name("A", now=0)
    assert name == "pirm-batch-a-19700101-000000"
    assert len(f"{name}-99999") <= 63


def test_dry_run_prints_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["batch", "--track", "a", "--models", "models", "--data", "div2k", "--shards", "3",
              "--namespace", "eval", "--dry-run"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    validate(printed)
    assert printed["metadata"]["namespace"] == "eval"
    assert printed["metadata"]["name"].startswith("pirm-batch-a-")
    assert printed["spec"]["completions"] == 3
