"""Stand-ins for the challenge's data on machines without ../shared/pirm2018: a small sample
dataset in the challenge layout made from scikit-image's bundled photos, and an SRCNN-shaped
frozen graph (the baseline's exact layer shapes, so the same runtime)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from services.core.track import Track

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINE_FILES = {Track.A: "div2k_srcnn.pb", Track.B: "dped_srcnn.pb"}
DATASET_FOLDERS = {Track.A: "div2k", Track.B: "dped"}
HD_SIZE = (1280, 720)
PATCH = 100


def challenge_data_candidate() -> Path:
    """Where the challenge data is looked for: $PIRM_DATA, else ../shared/pirm2018 beside the
    repository (whether or not it exists)."""
    configured = os.environ.get("PIRM_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "pirm2018"


def challenge_data_dir() -> Path | None:
    """$PIRM_DATA, else ../shared/pirm2018 beside the repository, if it exists."""
    candidate = challenge_data_candidate()
    return candidate if candidate.is_dir() else None


def srcnn_graph_def(seed: int = 0) -> bytes:
    """A frozen graph with SRCNN's layers (9x9x3x64, 5x5x64x32, 5x5x32x3, tanh head) whose
    weights pass the image through almost unchanged: a plausible baseline of the same cost."""
    import tensorflow as tf  # heavy: only when no real baseline is at hand

    rng = np.random.default_rng(seed)
    slope = 0.5  # the head computes tanh(slope * (x - 0.5)) / slope + 0.5, close to x

    def near_identity(k: int, cin: int, cout: int, gain: float) -> np.ndarray:
        w = rng.normal(0.0, 1e-4, (k, k, cin, cout)).astype(np.float32)
        for c in range(3):
            w[k // 2, k // 2, c, c] += gain
        return w

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="input")
        with tf.compat.v1.name_scope("generator"):
            h = tf.nn.relu(tf.nn.conv2d(x, near_identity(9, 3, 64, 1.0), 1, "SAME")
                           + np.zeros(64, np.float32))
            h = tf.nn.relu(tf.nn.conv2d(h, near_identity(5, 64, 32, 1.0), 1, "SAME")
                           + np.zeros(32, np.float32))
            h = tf.nn.conv2d(h, near_identity(5, 32, 3, slope), 1, "SAME") + np.float32(
                -0.5 * slope)
        y = tf.tanh(h) * np.float32(1.0 / slope) + np.float32(0.5)
        tf.identity(y, name="output")
    return graph.as_graph_def().SerializeToString()


def baseline_graph(track: Track, explicit: Path | None, cache_dir: Path) -> tuple[bytes, str]:
    """The track's baseline graph and where it came from: an explicit file, the challenge's
    own SRCNN from the data folder, or the generated SRCNN-shaped graph."""
    if explicit is not None:
        return explicit.read_bytes(), str(explicit)
    data = challenge_data_dir()
    if data is not None and (data / "models_pretrained" / BASELINE_FILES[track]).is_file():
        path = data / "models_pretrained" / BASELINE_FILES[track]
        return path.read_bytes(), str(path)
    path = cache_dir / "srcnn_shaped.pb"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(srcnn_graph_def())
        tmp.replace(path)
    return path.read_bytes(), f"{path} (generated, SRCNN-shaped)"


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def _hd(photo: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC)


def make_sample_dataset(root: Path, track: Track, patches_per_photo: int = 10,
                        hd_size: tuple[int, int] = HD_SIZE) -> Path:
    """Writes a small dataset in the challenge layout under root/<div2k|dped>; returns it.
    `hd_size` (width, height): the timing images' size; the challenge's is HD, a smaller one
    makes every timing cheaper where the size is not what is tested."""
    folder = root / DATASET_FOLDERS[track]
    if (folder / ".complete").exists():
        return folder
    photos = _photos()
    (folder / "HD_res").mkdir(parents=True, exist_ok=True)
    for index, photo in enumerate(photos[:2]):
        _hd(photo, hd_size).save(folder / "HD_res" / f"{index}.png")
    if track is Track.A:
        (folder / "original").mkdir(parents=True, exist_ok=True)
        for index, photo in enumerate(photos):
            Image.fromarray(photo).save(folder / "original" / f"{index}.png")
    else:
        _write_patch_pairs(folder / "patches", photos, patches_per_photo)
    (folder / ".complete").touch()
    return folder


def _write_patch_pairs(folder: Path, photos: list[np.ndarray], per_photo: int) -> None:
    """Canon-like targets are crops of the photos; iPhone-like inputs the same crops blurred,
    darkened and JPEG-compressed."""
    rng = np.random.default_rng(0)
    (folder / "iphone").mkdir(parents=True, exist_ok=True)
    (folder / "canon").mkdir(parents=True, exist_ok=True)
    number = 0
    for photo in photos:
        h, w = photo.shape[:2]
        for _ in range(per_photo):
            y, x = int(rng.integers(0, h - PATCH)), int(rng.integers(0, w - PATCH))
            canon = Image.fromarray(photo[y : y + PATCH, x : x + PATCH])
            degraded = np.asarray(canon.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
            iphone = Image.fromarray(np.clip(degraded * 0.85 + 8, 0, 255).astype(np.uint8))
            canon.save(folder / "canon" / f"{number}.jpg", quality=95)
            iphone.save(folder / "iphone" / f"{number}.jpg", quality=70)
            number += 1
