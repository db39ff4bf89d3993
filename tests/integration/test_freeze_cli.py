"""`pirm freeze` on the challenge's real checkpoints: the frozen graphs it writes give what the
DPED residual network computes with the checkpoint's weights, here computed again in NumPy
from the checkpoint's variables (the network as the DPED code defines it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import DATA, require_data
from tests.integration.test_cli import PIRM

MODELS = DATA / "models_pretrained"
# name -> residual blocks of the DPED generator (its conv layers: 2 per block + 4).
RESNETS = {"div2k_resnet_6_16": 1, "dped_resnet_8_32": 2}


def conv_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A stride-1 'SAME' convolution of an [H, W, C] image with [k, k, C, O] weights."""
    k = w.shape[0]
    pad = (k - 1) // 2
    padded = np.pad(x, ((pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(0, 1))
    return np.einsum("yxcij,ijco->yxo", windows, w) + b


def dped_resnet(image: np.ndarray, v: dict[str, np.ndarray], blocks: int) -> np.ndarray:
    """DPED's generator (models.py of the DPED code): conv 9x9 + ReLU; residual blocks of two
    conv 3x3 + instance norm (shift, scale: tf.Variable in creation order) + ReLU; two conv
    3x3 + ReLU; conv 9x9; tanh * 0.58 + 0.5."""
    def w(i: int) -> tuple[np.ndarray, np.ndarray]:
        return v[f"generator/W{i}"], v[f"generator/b{i}"]

    def norm(y: np.ndarray, index: int) -> np.ndarray:
        shift = v["generator/Variable" + (f"_{index}" if index else "")]
        scale = v[f"generator/Variable_{index + 1}"]
        return scale * (y - y.mean((0, 1))) / np.sqrt(y.var((0, 1)) + 1e-3) + shift

    y = np.maximum(conv_same(image, *w(1)), 0)
    layer, norms = 2, 0
    for _ in range(blocks):
        inner = np.maximum(norm(conv_same(y, *w(layer)), norms), 0)
        y = np.maximum(norm(conv_same(inner, *w(layer + 1)), norms + 2), 0) + y
        layer, norms = layer + 2, norms + 4
    for _ in range(2):
        y = np.maximum(conv_same(y, *w(layer)), 0)
        layer += 1
    return np.tanh(conv_same(y, *w(layer))) * 0.58 + 0.5


def run_frozen(path: Path, image: np.ndarray) -> Any:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run("output:0", {"input:0": image[None].astype(np.float32)})[0]


def test_freeze_writes_checked_graphs_equal_to_the_checkpoints_network(tmp_path: Path) -> None:
    import tensorflow as tf

    require_data("models_pretrained", "div2k_resnet_6_16.index")

    done = subprocess.run([PIRM, "freeze", "--models", str(MODELS), "--out", str(tmp_path),
                           "--only", *RESNETS, "--json"],
                          capture_output=True, text=True, timeout=600, check=True)
    written = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert set(written) == set(RESNETS)
    for name, blocks in RESNETS.items():
        entry = written[name]
        assert 0 <= entry["max_abs_error"] <= 1e-5 and entry["tolerance"] == 1e-5
        assert f"{name} (track {entry['track']})" in done.stderr  # the check's figure, said
        reader = tf.train.load_checkpoint(str(MODELS / name))
        variables = {key: reader.get_tensor(key).astype(np.float64)
                     for key in reader.get_variable_to_shape_map()}
        image = np.random.default_rng(7).random((24, 32, 3))
        expected = dped_resnet(image, variables, blocks)
        actual = run_frozen(Path(entry["path"]), image)
        assert actual.shape == expected.shape
        assert float(np.max(np.abs(actual - expected))) < 1e-4, name


def test_freeze_without_checkpoints_says_what_to_give(tmp_path: Path) -> None:
    done = subprocess.run([PIRM, "freeze", "--models", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "give --models" in done.stderr
    assert "Traceback" not in done.stderr
