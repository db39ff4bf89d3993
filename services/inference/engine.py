"""Loaded models and the TensorFlow sessions that run them, one per model and device."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ banner is not our log
import tensorflow as tf  # noqa: E402

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.limits import DEFAULT_MAX_MODEL_BYTES, check_model_size
from services.inference.graphs import GraphSpec, parse_graph, repository_path
from services.inference.timing import DeviceTiming, TimingOptions, measure

DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class EngineSettings:
    intra_op_threads: int = os.cpu_count() or 1
    inter_op_threads: int = 1
    default_device: str = "cpu"
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    repository: Path | None = None
    node: str = field(default_factory=socket.gethostname)


class DeviceLock:
    """Shared for quality inference, exclusive for timing: a timed run never shares its device
    with our own load."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True  # new readers wait from now on
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class LoadedModel:
    def __init__(self, spec: GraphSpec, graph_def: tf.compat.v1.GraphDef, settings: EngineSettings):
        self.spec = spec
        self._graph_def = graph_def
        self._settings = settings
        self._sessions: dict[str, tf.compat.v1.Session] = {}
        self._lock = threading.Lock()

    def session(self, device: str) -> tf.compat.v1.Session:
        with self._lock:
            if device not in self._sessions:
                self._sessions[device] = self._open_session(device)
            return self._sessions[device]

    def _open_session(self, device: str) -> tf.compat.v1.Session:
        graph = tf.Graph()
        with graph.as_default(), tf.device(f"/{device.upper()}:0"):
            try:
                tf.compat.v1.import_graph_def(self._graph_def, name="")
                graph.get_tensor_by_name(self.spec.input_tensor)
                graph.get_tensor_by_name(self.spec.output_tensor)
            except (ValueError, KeyError, tf.errors.OpError) as error:
                raise InvalidArgument(
                    f"model {self.spec.name!r} cannot be imported: {error}"
                ) from error
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=self._settings.intra_op_threads,
            inter_op_parallelism_threads=self._settings.inter_op_threads,
            allow_soft_placement=False,
        )
        return tf.compat.v1.Session(graph=graph, config=config)

    def run(self, device: str, image: np.ndarray) -> np.ndarray:
        session = self.session(device)
        try:
            output = session.run(self.spec.output_tensor, {self.spec.input_tensor: image})
        except tf.errors.OpError as error:
            first_line = str(error.message).strip().splitlines()[0]
            raise InvalidArgument(
                f"model {self.spec.name!r} failed on an input of shape {image.shape}: {first_line}"
            ) from error
        output = np.asarray(output)
        if output.shape != image.shape:
            raise InvalidArgument(
                f"model {self.spec.name!r} returned shape {output.shape} for an input of shape "
                f"{image.shape}; the output must have the input's shape [1, H, W, 3]"
            )
        return output

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()


class Engine:
    """The models this service holds, by name, and the device locks that keep timing clean."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._device_locks = {device: DeviceLock() for device in DEVICES}

    def load(
        self, name: str, data: bytes, input_tensor: str = "", output_tensor: str = ""
    ) -> GraphSpec:
        graph_def, spec = parse_graph(
            name, data, input_tensor, output_tensor, self.settings.max_model_bytes
        )
        with self._lock:
            existing = self._models.get(name)
            if existing and existing.spec == spec:
                return existing.spec
        model = LoadedModel(spec, graph_def, self.settings)
        model.session(self.settings.default_device)  # import now: errors surface at load time
        with self._lock:
            previous = self._models.pop(name, None)
            self._models[name] = model
        if previous:
            previous.close()
        return spec

    def load_from_repository(
        self, name: str, version: str, input_tensor: str = "", output_tensor: str = ""
    ) -> GraphSpec:
        path = repository_path(self.settings.repository, name, version)
        check_model_size(path.stat().st_size, self.settings.max_model_bytes)  # before reading
        return self.load(name, path.read_bytes(), input_tensor, output_tensor)

    def models(self) -> list[GraphSpec]:
        with self._lock:
            return [m.spec for m in self._models.values()]

    def unload(self, name: str) -> None:
        with self._lock:
            model = self._models.pop(name, None)
        if model is None:
            raise NotFound(f"no model named {name!r} is loaded")
        model.close()

    def infer(self, name: str, image: np.ndarray, device: str = "") -> tuple[np.ndarray, float]:
        """Runs the model once; returns its output and the wall time of the run in ms."""
        model, device = self._model(name), self._device(device)
        image = _as_model_input(image)
        with self._device_locks[device].shared():
            start = time.perf_counter_ns()
            output = model.run(device, image)
            return output, (time.perf_counter_ns() - start) / 1e6

    def benchmark(
        self, name: str, image: np.ndarray, options: TimingOptions, device: str = ""
    ) -> DeviceTiming:
        """Times the model on one input, alone on its device."""
        model, device = self._model(name), self._device(device)
        image = _as_model_input(image)
        model.run(device, image)  # fail fast on a broken model, before taking the lock
        with self._device_locks[device].exclusive():
            timing = measure(lambda: model.run(device, image), options)
        return DeviceTiming(
            timing=timing,
            device=device,
            intra_op_threads=self.settings.intra_op_threads,
            inter_op_threads=self.settings.inter_op_threads,
            node=self.settings.node,
            input_shape=tuple(image.shape),
        )

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            model.close()

    def _model(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r} is loaded; call LoadModel first")
        return model

    def _device(self, device: str) -> str:
        device = device or self.settings.default_device
        if device not in DEVICES:
            raise InvalidArgument(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise FailedPrecondition(
                "this inference node has no GPU; run the request on a GPU node or use device cpu"
            )
        return device


def _as_model_input(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = image[np.newaxis]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3 or 0 in image.shape:
        raise InvalidArgument(f"model input must be [1, H, W, 3], got shape {image.shape}")
    if image.dtype != np.float32:
        raise InvalidArgument(f"model input must be float32 in [0, 1], got {image.dtype}")
    return image
