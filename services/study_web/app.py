"""The rating page's HTTP side (Flask): a rater's link `/rate/<token>` (crowdsourcing
platforms append workerId and assignmentId) serves a plain HTML/CSS/JS page; the page calls
the JSON API below, each route one call of the scorer's study API. Method names never leave
the scorer: a task is an opaque id, its images come as `input` and `result`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from flask import Flask, Response, jsonify, request, send_file
from pirm.v1 import scorer_pb2
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from services.client import ScorerClient

STATIC = Path(__file__).parent / "static"
ACTIVE_WINDOW_S = 300.0  # a rater who made a request this recently counts as active
# The scorer's status, as the page's HTTP status; the scorer's message is the page's text.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 503,  # the web service's own token: not the rater's fault
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class Telemetry:
    """Ratings recorded (new, or repeats of one already stored), raters active lately."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ratings = Counter("pirm_study_ratings", "Ratings received by the rating page",
                               ["recorded"], registry=self.registry)
        self.errors = Counter("pirm_study_page_errors", "Rating page requests refused",
                              ["status"], registry=self.registry)
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        Gauge("pirm_study_active_raters", f"Raters with a request in the last "
              f"{ACTIVE_WINDOW_S:.0f} s", registry=self.registry).set_function(self.active)

    def saw(self, token: str) -> None:
        with self._lock:
            self._seen[token] = time.monotonic()

    def active(self) -> float:
        cutoff = time.monotonic() - ACTIVE_WINDOW_S
        with self._lock:
            self._seen = {t: at for t, at in self._seen.items() if at >= cutoff}
            return float(len(self._seen))


def task_json(task: scorer_pb2.StudyTask, token: str) -> dict[str, Any]:
    if task.finished:
        return {"finished": True, "done": task.done, "total": task.total,
                "completion_code": task.completion_code}
    base = f"/api/rate/{token}/image/{task.task_id}"
    return {"finished": False, "task_id": task.task_id, "done": task.done, "total": task.total,
            "result_left": task.result_left, "input": f"{base}/input.png",
            "result": f"{base}/result.png"}


def create_app(client: ScorerClient, ready: Callable[[], bool],
               telemetry: Telemetry | None = None) -> Flask:
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    telemetry = telemetry or Telemetry()
    app.config["telemetry"] = telemetry

    @app.errorhandler(grpc.RpcError)
    def scorer_refused(error: grpc.RpcError) -> tuple[Response, int]:
        code = error.code()
        status = HTTP_STATUS.get(code, 502)
        telemetry.errors.labels(str(status)).inc()
        message = error.details() if status < 500 else (
            "the rating service cannot reach the study right now; try again in a minute")
        return jsonify(error=message), status

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        serving = ready()
        return Response("ready\n" if serving else "the scorer is not serving\n",
                        mimetype="text/plain"), 200 if serving else 503

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(telemetry.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/rate/<token>")
    def page(token: str) -> Response:
        response = send_file(STATIC / "rate.html", mimetype="text/html", max_age=0)
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/api/rate/<token>/task")
    def current(token: str) -> Response:
        args = request.args
        task = client.next_study_task(
            token, worker_id=args.get("workerId") or args.get("worker_id") or "",
            assignment_id=args.get("assignmentId") or args.get("assignment_id") or "")
        telemetry.saw(token)  # a token the scorer knows: a rater
        return _no_store(jsonify(task_json(task, token)))

    @app.post("/api/rate/<token>/answer")
    def answer(token: str) -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("task_id"), str) or \
                not isinstance(body.get("level"), int):
            return jsonify(error='send JSON {"task_id": "...", "level": 1-4}'), 400
        task = client.rate_study_task(token, body["task_id"], body["level"])
        telemetry.saw(token)
        telemetry.ratings.labels("new" if task.recorded_now else "repeat").inc()
        return _no_store(jsonify({**task_json(task, token), "recorded_level":
                                  task.recorded_level, "recorded_now": task.recorded_now})), 200

    @app.get("/api/rate/<token>/image/<task_id>/<side>.png")
    def image(token: str, task_id: str, side: str) -> Response:
        png = client.study_image(token, task_id, side)
        response = Response(png, mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=3600"  # a task's images never change
        return response

    return app


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
