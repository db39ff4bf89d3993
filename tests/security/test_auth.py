"""Authentication and authorisation against real servers: bearer tokens per team, organiser
and internal caller; a team sees only its own jobs; inference and metrics serve the scorer's
internal token only; health needs no token; --insecure-dev binds loopback only. The cluster
here runs as production would: clients reach the scorer over TLS, the scorer reaches inference
and metrics over mutual TLS."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pirm.v1 import common_pb2, metrics_pb2, metrics_pb2_grpc, scorer_pb2, scorer_pb2_grpc

from services.common.auth import INTERNAL_ONLY, Principal, Role, Tokens, load_tokens
from services.common.config import add_server_flags
from services.common.server import RunningServer, server_security
from services.common.transport import ServerSecurity, ServerTls
from services.core.channel import ChannelSecurity, open_channel
from services.core.errors import InvalidArgument
from services.core.tensors import to_tensor
from services.core.track import Track
from services.inference.server import create_server as create_inference
from services.metrics.server import create_server as create_metrics
from services.scorer.samples import srcnn_graph_def
from services.scorer.server import ScorerConfig
from services.scorer.server import create_server as create_scorer
from tests.cluster import TEST_TIMING, sample_dataset
from tests.integration.helpers import wait_job
from tests.security.certs import Authority, Pem

TOKENS = {
    "alpha": "alpha-token-0123456789",
    "beta": "beta-token-0123456789",
    "jury": "jury-token-0123456789",
    "scorer": "internal-token-0123456789",
}
TOKENS_TEXT = f"""# role name token
team alpha {TOKENS['alpha']}
team beta {TOKENS['beta']}   # a second team
organiser jury {TOKENS['jury']}
internal scorer {TOKENS['scorer']}
"""
Code = grpc.StatusCode


# -- tokens, without servers --------------------------------------------------------------


def test_tokens_file_maps_each_token_to_its_caller(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS_TEXT)
    tokens = load_tokens(path)
    assert tokens is not None
    assert tokens.principal(TOKENS["alpha"]) == Principal(Role.TEAM, "alpha")
    assert tokens.principal(TOKENS["jury"]) == Principal(Role.ORGANISER, "jury")
    assert tokens.principal(TOKENS["scorer"]) == Principal(Role.INTERNAL, "scorer")
    assert tokens.principal(TOKENS["alpha"] + "x") is None
    assert tokens.principal("") is None
    assert tokens.internal_token == TOKENS["scorer"]
    # Only digests are kept for the lookup.
    assert all(TOKENS["alpha"].encode() != digest for digest, _ in tokens.principals)
    inline = load_tokens(None, TOKENS_TEXT.replace("\n", ";"))
    assert inline is not None and inline.principal(TOKENS["beta"]) == Principal(Role.TEAM, "beta")
    assert load_tokens(None, "") is None


@pytest.mark.parametrize(("text", "message"), [
    ("team alpha", "line 1: expected `role name token`"),
    ("player alpha 0123456789abcdef", "role must be team, organiser or internal"),
    ("team alpha short", "at least 16 characters"),
    ("team a 0123456789abcdef\nteam b 0123456789abcdef", "line 2: this token is already"),
    ("# nothing\n", "has no tokens"),
])
def test_malformed_tokens_file_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Tokens.parse(text, "tokens")


def test_unauthenticated_server_must_bind_loopback() -> None:
    with pytest.raises(InvalidArgument, match="binds loopback only"):
        ServerSecurity().check_address("0.0.0.0:50052")
    ServerSecurity().check_address("127.0.0.1:0")
    ServerSecurity().check_address("[::1]:0")
    tokens = Tokens.parse(TOKENS_TEXT, "tokens")
    ServerSecurity(tokens).check_address("0.0.0.0:50052")


def serve_metrics(*flags: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "serve", "metrics", "--port", "0",
         "--metrics-port", "0", *flags],
        capture_output=True, text=True, timeout=60, env=env)


def test_server_without_tokens_or_insecure_dev_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIRM_")}
    missing = serve_metrics(env=env)
    assert missing.returncode != 0 and "no tokens: give --tokens-file" in missing.stderr


def security_of(*flags: str) -> ServerSecurity:
    parser = argparse.ArgumentParser()
    add_server_flags(parser, "metrics")
    args = parser.parse_args(list(flags))
    args.tokens_inline = ""  # whatever this process's environment says
    security = server_security(args, INTERNAL_ONLY)
    security.check_address(f"{args.host}:{args.port}")
    return security


@pytest.mark.parametrize(("flags", "message"), [
    ((), "no tokens: give --tokens-file"),
    (("--insecure-dev", "--host", "0.0.0.0"), "binds loopback only"),
    (("--tokens-file", "{teams}"), "no internal caller"),
    (("--tokens-file", "{all}", "--insecure-dev"), "choose one"),
    (("--tokens-file", "{all}", "--tls-cert", "cert.pem"), "needs both --tls-cert and"),
    (("--tokens-file", "{all}", "--tls-client-ca", "ca.pem"), "needs --tls-cert and"),
])
def test_contradictory_security_flags_stop_the_server(tmp_path: Path, flags: tuple[str, ...],
                                                      message: str) -> None:
    (tmp_path / "teams").write_text(f"team alpha {TOKENS['alpha']}\n")
    (tmp_path / "all").write_text(TOKENS_TEXT)
    named = [f.format(teams=tmp_path / "teams", all=tmp_path / "all") for f in flags]
    with pytest.raises((SystemExit, InvalidArgument), match=message):
        security_of("--port", "0", *named)
    assert security_of("--insecure-dev").tokens is None
    assert security_of("--tokens-file", str(tmp_path / "all"), "--host", "0.0.0.0").tokens


# -- a cluster with authentication ----------------------------------------------------------


@dataclass
class SecureCluster:
    inference: RunningServer
    metrics: RunningServer
    scorer: RunningServer
    dataset: Path
    ca: Authority
    scorer_client: Pem  # the scorer's client certificate towards inference and metrics

    def client(self, token: str | None, **tls: Path) -> ChannelSecurity:
        return ChannelSecurity(token, tls_ca=tls.get("ca", self.ca.pem.cert),
                               tls_cert=tls.get("cert"), tls_key=tls.get("key"))

    def scorer_stub(self, who: str | None) -> scorer_pb2_grpc.ScorerServiceStub:
        channel = open_channel(f"127.0.0.1:{self.scorer.port}", 64,
                               self.client(TOKENS[who] if who else None))
        return scorer_pb2_grpc.ScorerServiceStub(channel)

    def internal(self, token: str | None = TOKENS["scorer"]) -> ChannelSecurity:
        return self.client(token, cert=self.scorer_client.cert, key=self.scorer_client.key)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    state = tmp_path_factory.mktemp("secure")
    ca = Authority(state / "pki")
    server, scorer_client = ca.issue("server", server=True), ca.issue("scorer", server=False)
    tokens = Tokens.parse(TOKENS_TEXT, "tokens")
    mutual = ServerSecurity(tokens, INTERNAL_ONLY, ServerTls(server.cert, server.key,
                                                             client_ca=ca.pem.cert))
    inference = create_inference("127.0.0.1:0", security=mutual)
    metrics = create_metrics("127.0.0.1:0", security=mutual)
    scorer = create_scorer("127.0.0.1:0", ScorerConfig(
        inference=f"127.0.0.1:{inference.port}", metrics=f"127.0.0.1:{metrics.port}",
        store=state / "scorer.db", state_dir=state, timing=TEST_TIMING,
        security=ServerSecurity(tokens, tls=ServerTls(server.cert, server.key)),
        backends=ChannelSecurity(tokens.internal_token, ca.pem.cert, scorer_client.cert,
                                 scorer_client.key)))
    dataset = sample_dataset(state / "data", Track.B, patches_per_photo=1)
    yield SecureCluster(inference, metrics, scorer, dataset, ca, scorer_client)
    for running in (scorer, metrics, inference):
        running.stop(grace=1.0)


def submit(stub: scorer_pb2_grpc.ScorerServiceStub, dataset: Path, team: str = ""
           ) -> scorer_pb2.Job:
    return stub.SubmitJob(scorer_pb2.SubmitJobRequest(
        track=common_pb2.TRACK_B, graph_def=srcnn_graph_def(), dataset=str(dataset), team=team,
        model_name="srcnn"), timeout=60)


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def test_scorer_refuses_calls_without_a_known_token(secure: SecureCluster) -> None:
    request = scorer_pb2.ListJobsRequest()
    code, details = status_of(lambda: secure.scorer_stub(None).ListJobs(request, timeout=10))
    assert code == Code.UNAUTHENTICATED and "needs a bearer token" in details
    channel = open_channel(f"127.0.0.1:{secure.scorer.port}", 64, secure.client("x" * 20))
    code, details = status_of(
        lambda: scorer_pb2_grpc.ScorerServiceStub(channel).ListJobs(request, timeout=10))
    assert code == Code.UNAUTHENTICATED and "not known" in details
    # Health stays open to probes (over TLS, without a token).
    with open_channel(f"127.0.0.1:{secure.scorer.port}", 64, secure.client(None)) as probe:
        health = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_team_submits_for_itself_and_sees_only_its_jobs(secure: SecureCluster) -> None:
    alpha, beta, jury = (secure.scorer_stub(who) for who in ("alpha", "beta", "jury"))
    job = submit(alpha, secure.dataset)
    assert job.team == "alpha"  # the token's team, though the request named none
    code, details = status_of(lambda: submit(alpha, secure.dataset, team="beta"))
    assert code == Code.PERMISSION_DENIED and "belongs to team 'alpha'" in details
    by_id = scorer_pb2.GetJobRequest(job_id=job.job_id)
    # To another team, alpha's job does not exist: not readable, watchable or cancellable.
    for call in (lambda: beta.GetJob(by_id, timeout=10),
                 lambda: list(beta.WatchJob(by_id, timeout=10)),
                 lambda: beta.GetJobImages(scorer_pb2.GetJobImagesRequest(job_id=job.job_id),
                                           timeout=10),
                 lambda: beta.GetImageCrops(scorer_pb2.GetImageCropsRequest(
                     job_id=job.job_id, images=["0.jpg"]), timeout=10),
                 lambda: beta.CancelJob(scorer_pb2.CancelJobRequest(job_id=job.job_id),
                                        timeout=10)):
        code, details = status_of(call)
        assert (code, details) == (Code.NOT_FOUND, f"no job with id {job.job_id!r}")
    assert job.job_id not in {j.job_id for j in beta.ListJobs(
        scorer_pb2.ListJobsRequest(), timeout=10).jobs}
    code, _ = status_of(lambda: beta.ListJobs(scorer_pb2.ListJobsRequest(team="alpha"),
                                              timeout=10))
    assert code == Code.PERMISSION_DENIED
    # The scorer reaches inference and metrics with its internal token: every image is
    # inferred and measured (the timing stage that follows is not this test's business).
    for update in alpha.WatchJob(by_id, timeout=300):
        assert update.state != scorer_pb2.JOB_STATE_FAILED, update.error
        if update.progress.images_done == update.progress.images_total:
            break
    assert update.progress.images_done == update.progress.images_total > 0
    assert [j.job_id for j in alpha.ListJobs(scorer_pb2.ListJobsRequest(), timeout=10).jobs] \
        == [job.job_id]
    # Organisers see and cancel every team's jobs; leaderboards are open to every caller.
    assert job.job_id in {j.job_id for j in jury.ListJobs(scorer_pb2.ListJobsRequest(),
                                                          timeout=10).jobs}
    beta.Leaderboard(scorer_pb2.LeaderboardRequest(track=common_pb2.TRACK_B), timeout=10)
    jury.CancelJob(scorer_pb2.CancelJobRequest(job_id=job.job_id), timeout=10)
    assert wait_job(alpha, job.job_id).state == scorer_pb2.JOB_STATE_CANCELLED


def test_only_organisers_set_mos_and_report_shard_results(secure: SecureCluster) -> None:
    alpha = secure.scorer_stub("alpha")
    code, details = status_of(lambda: alpha.SetMos(
        scorer_pb2.SetMosRequest(job_id="any", mos=4.0), timeout=10))
    assert code == Code.PERMISSION_DENIED and "organiser or internal tokens only" in details
    code, _ = status_of(lambda: alpha.ReportImageResults(
        scorer_pb2.ReportImageResultsRequest(job_id="any"), timeout=10))
    assert code == Code.PERMISSION_DENIED
    code, details = status_of(lambda: secure.scorer_stub("jury").SetMos(
        scorer_pb2.SetMosRequest(job_id="nope", mos=4.0), timeout=10))
    assert code == Code.NOT_FOUND  # past the role check


@pytest.mark.parametrize("who", [None, "alpha", "jury"])
def test_internal_services_serve_the_internal_token_only(secure: SecureCluster,
                                                         who: str | None) -> None:
    target = np.full((192, 192, 3), 0.5, np.float32)
    output = target + np.float32(0.1)  # MSE 0.01: PSNR 10 log10(1 / 0.01) = 20 dB
    request = metrics_pb2.EvaluateRequest(output=to_tensor(output), target=to_tensor(target))

    def evaluate(token: str | None) -> metrics_pb2.EvaluateResponse:
        channel = open_channel(f"127.0.0.1:{secure.metrics.port}", 64, secure.internal(token))
        return metrics_pb2_grpc.MetricsServiceStub(channel).Evaluate(request, timeout=30)

    code, details = status_of(lambda: evaluate(TOKENS[who] if who else None))
    expected = Code.UNAUTHENTICATED if who is None else Code.PERMISSION_DENIED
    assert code == expected, details
    assert evaluate(TOKENS["scorer"]).psnr == pytest.approx(20.0, abs=1e-4)


def test_reflection_needs_a_token_too(secure: SecureCluster) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def list_services(token: str | None) -> list[str]:
        channel = open_channel(f"127.0.0.1:{secure.inference.port}", 64, secure.internal(token))
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
        return [s.name for r in responses for s in r.list_services_response.service]

    code, _ = status_of(lambda: list_services(None))
    assert code == Code.UNAUTHENTICATED
    assert "pirm.v1.InferenceService" in list_services(TOKENS["scorer"])


# -- TLS ------------------------------------------------------------------------------------


def test_scorer_speaks_tls_only(secure: SecureCluster, tmp_path: Path) -> None:
    request = scorer_pb2.ListJobsRequest()
    with grpc.insecure_channel(f"127.0.0.1:{secure.scorer.port}") as plain:
        code, _ = status_of(lambda: scorer_pb2_grpc.ScorerServiceStub(plain).ListJobs(
            request, timeout=10))
    assert code == Code.UNAVAILABLE
    stranger = Authority(tmp_path / "other", "another CA")  # a server it cannot vouch for
    channel = open_channel(f"127.0.0.1:{secure.scorer.port}", 64,
                           secure.client(TOKENS["jury"], ca=stranger.pem.cert))
    code, _ = status_of(lambda: scorer_pb2_grpc.ScorerServiceStub(channel).ListJobs(
        request, timeout=10))
    assert code == Code.UNAVAILABLE
    assert secure.scorer_stub("jury").ListJobs(request, timeout=10) is not None


def test_internal_services_need_a_client_certificate_of_our_ca(secure: SecureCluster,
                                                               tmp_path: Path) -> None:
    image = np.full((192, 192, 3), 0.5, np.float32)
    request = metrics_pb2.EvaluateRequest(output=to_tensor(image), target=to_tensor(image))
    target = f"127.0.0.1:{secure.metrics.port}"

    def evaluate(security: ChannelSecurity) -> metrics_pb2.EvaluateResponse:
        with open_channel(target, 64, security) as channel:
            return metrics_pb2_grpc.MetricsServiceStub(channel).Evaluate(request, timeout=30)

    # The internal token alone is not enough: without a certificate the handshake fails.
    code, _ = status_of(lambda: evaluate(secure.client(TOKENS["scorer"])))
    assert code == Code.UNAVAILABLE
    forged = Authority(tmp_path / "forger", "forger CA").issue("scorer", server=False)
    code, _ = status_of(lambda: evaluate(secure.client(TOKENS["scorer"], cert=forged.cert,
                                                       key=forged.key)))
    assert code == Code.UNAVAILABLE
    assert evaluate(secure.internal()).msssim == pytest.approx(1.0, abs=1e-12)
