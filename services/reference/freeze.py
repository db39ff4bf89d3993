"""Frozen graphs (.pb) of the reference models from their checkpoints: the network of
networks.py restored from the checkpoint, its variables turned into constants, and the frozen
graph checked against the network run from the checkpoint itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.core.errors import FailedPrecondition
from services.reference.networks import REFERENCES, Reference, build

# The frozen graph must give the checkpoint's outputs to this (SPEC.md section 8, issue 17).
TOLERANCE = 1e-5
CHECK_SHAPE = (1, 96, 128, 3)


@dataclass(frozen=True)
class Frozen:
    name: str
    graph_def: bytes  # the serialized frozen GraphDef
    max_error: float  # max |frozen graph - checkpoint's network| on the check image


def freeze(reference: Reference, models: Path | None) -> bytes:
    """The serialized frozen GraphDef (`input:0` -> `output:0`) of `reference`, after checking
    it against the checkpoint's network on a random image. Without `models` (no challenge
    data), the same network with random weights (seeded): its shape and cost, not its skill."""
    return freeze_checked(reference, models).graph_def


def freeze_checked(reference: Reference, models: Path | None) -> Frozen:
    """freeze(), with the check's figure: FailedPrecondition beyond TOLERANCE."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        tf.identity(build(tf, x, reference), name="output")
        saver = tf.compat.v1.train.Saver()
        probe = np.random.default_rng(0).random(CHECK_SHAPE, dtype=np.float32)
        with tf.compat.v1.Session(graph=graph) as session:
            if models is None:
                session.run(tf.compat.v1.global_variables_initializer())
            else:
                saver.restore(session, str(models / reference.checkpoint))
            expected = session.run("output:0", {"input:0": probe})
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["output"])
    frozen = tf.compat.v1.graph_util.extract_sub_graph(frozen, ["output"])
    data = frozen.SerializeToString()
    check = tf.Graph()
    with check.as_default():
        tf.compat.v1.import_graph_def(frozen, name="")
    with tf.compat.v1.Session(graph=check) as session:
        actual = session.run("output:0", {"input:0": probe})
    error = float(np.max(np.abs(actual - expected)))
    if not error <= TOLERANCE:
        raise FailedPrecondition(f"the frozen {reference.name} differs from its checkpoint's "
                                 f"network by {error:.2e} (more than {TOLERANCE:g})")
    return Frozen(reference.name, bytes(data), error)


def freeze_all(models: Path | None, out: Path, names: list[str] | None = None
               ) -> dict[str, tuple[Path, float]]:
    """Writes <name>.pb for each reference (all by default) into `out`; returns each path and
    its check's figure."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names or list(REFERENCES):
        frozen = freeze_checked(REFERENCES[name], models)
        path = out / f"{name}.pb"
        path.write_bytes(frozen.graph_def)
        written[name] = (path, frozen.max_error)
    return written
