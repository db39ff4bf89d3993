"""The challenge's evaluation protocol (SPEC.md section 2) computed directly, without our
services: a plain TensorFlow session runs the .pb, tests/reference.py gives the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.reference import msssim_numpy_ref, msssim_tf_ref, psnr_ref, track_a_input_ref


@dataclass(frozen=True)
class ImageFigures:
    name: str
    psnr: float
    msssim: float


def run_graph(pb: Path | bytes, images: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs from a plain TensorFlow session, as the official scripts ran it."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb if isinstance(pb, bytes) else pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return [session.run("output:0", {"input:0": image}) for image in images]


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def track_a_figures(pb: Path, targets: list[Path]) -> list[ImageFigures]:
    """Bicubic x4 round trip, model, 16-px crop, clip, PSNR and tf-flavour MS-SSIM."""
    figures = []
    for path in targets:
        target = _read(path)
        h, w = target.shape[0] // 4 * 4, target.shape[1] // 4 * 4
        target = target[:h, :w]
        model_input = track_a_input_ref(target).astype(np.float32)[None] / np.float32(255)
        (output,) = run_graph(pb, [model_input])
        out = np.clip(output[0, 16:-16, 16:-16], 0, 1)
        ref = np.clip(target[16:-16, 16:-16].astype(np.float32) / np.float32(255), 0, 1)
        figures.append(ImageFigures(path.name, psnr_ref(out, ref), msssim_tf_ref(out, ref)))
    return figures


def track_b_figures(pb: Path, names: list[str], patches: Path) -> list[ImageFigures]:
    """Model on iphone/N.jpg; PSNR on clipped output; NumPy MS-SSIM on the unclipped output."""
    inputs = [_read(patches / "iphone" / n).astype(np.float32)[None] / np.float32(255)
              for n in names]
    outputs = run_graph(pb, inputs)
    figures = []
    for name, output in zip(names, outputs, strict=True):
        target = _read(patches / "canon" / name).astype(np.float32) / np.float32(255)
        figures.append(ImageFigures(
            name,
            psnr_ref(np.clip(output[0], 0, 1), target),
            msssim_numpy_ref(output[0].astype(np.float64) * 255, target.astype(np.float64) * 255,
                             max_val=255),
        ))
    return figures
