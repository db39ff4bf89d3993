"""Datasets named by a client are confined to the scorer's data folders: no `..` and no
symbolic link leads out of them, and the refusal does not tell what lies outside."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from pirm.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

from services.core.channel import open_channel
from services.core.errors import InvalidArgument
from services.core.limits import confined_path
from services.core.track import Track
from services.scorer.samples import make_sample_dataset, srcnn_graph_def
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from tests.cluster import TEST_TIMING, Cluster


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    (inside / "set").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    (inside / "escape").symlink_to(outside / "secret")
    return inside, outside


def test_paths_inside_a_root_resolve(roots: tuple[Path, Path]) -> None:
    inside, _ = roots
    assert confined_path(str(inside / "set"), [inside]) == (inside / "set").resolve()
    assert confined_path(str(inside / "set" / ".." / "set"), [inside]) == (inside / "set").resolve()


@pytest.mark.parametrize("relative", ["../elsewhere/secret", "escape", "set/../../elsewhere"])
def test_dot_dot_and_symlinks_cannot_leave_the_roots(roots: tuple[Path, Path],
                                                     relative: str) -> None:
    inside, outside = roots
    with pytest.raises(InvalidArgument) as refused:
        confined_path(str(inside / relative), [inside])
    message = str(refused.value)
    assert str(inside) in message  # names where datasets may be
    if relative == "escape":
        assert str(outside) not in message  # but not where the link leads


def test_no_roots_means_no_confinement(roots: tuple[Path, Path]) -> None:
    _, outside = roots
    assert confined_path(str(outside), []) == outside.resolve()


def test_scorer_refuses_datasets_outside_its_roots(cluster: Cluster, tmp_path: Path) -> None:
    root = tmp_path / "data"
    allowed = make_sample_dataset(root, Track.B, patches_per_photo=1)
    outside = make_sample_dataset(tmp_path / "private", Track.B, patches_per_photo=1)
    (root / "link").symlink_to(outside)
    config = ScorerConfig(inference=cluster.target(cluster.inference),
                          metrics=cluster.target(cluster.metrics), store=tmp_path / "scorer.db",
                          state_dir=tmp_path, timing=TEST_TIMING, data_roots=(root,))
    scorer = create_scorer("127.0.0.1:0", config)
    try:
        with open_channel(f"127.0.0.1:{scorer.port}", 64) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)

            def submit(dataset: Path) -> scorer_pb2.Job:
                return stub.SubmitJob(scorer_pb2.SubmitJobRequest(
                    track=common_pb2.TRACK_B, graph_def=srcnn_graph_def(),
                    dataset=str(dataset)), timeout=60)

            for escape in (outside, root / "link", root / ".." / "private" / "dped"):
                with pytest.raises(grpc.RpcError) as refused:
                    submit(escape)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "outside the data folders" in (refused.value.details() or "")
            accepted = submit(allowed)
            assert accepted.dataset == str(allowed.resolve())
            stub.CancelJob(scorer_pb2.CancelJobRequest(job_id=accepted.job_id))
    finally:
        scorer.stop(grace=1.0)
