"""The challenge's evaluation protocol (SPEC.md section 2): which images, how they become model
inputs and targets, and how the metrics service must measure each pair.

A dataset folder has the challenge repository's layout:
  track A: original/*.png (quality), HD_res/*.png (timing)
  track B: patches/iphone/N.jpg + patches/canon/N.jpg (quality), HD_res/*.png (timing)
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.errors import InvalidArgument
from services.core.quality import Flavor, PairQuality, QualityOptions
from services.core.tensors import as_unit_float32
from services.core.track import Track

SCALE = 4  # track A: x4 super-resolution
BORDER = 16  # track A: pixels cropped from each side before measuring
# Largest image a dataset may hold: 4x a DIV2K original, far below what would strain a node.
MAX_IMAGE_PIXELS = 12_000_000

QUALITY_OPTIONS = {
    # Track A: both images clipped, tf.image.ssim_multiscale's definition.
    Track.A: QualityOptions(
        crop_border=BORDER, clip_psnr_input=True, clip_msssim_input=True, flavor=Flavor.TF
    ),
    # Track B: PSNR on clipped images, NumPy MS-SSIM on the unclipped output.
    Track.B: QualityOptions(
        crop_border=0, clip_psnr_input=True, clip_msssim_input=False, flavor=Flavor.NUMPY
    ),
}


@dataclass(frozen=True)
class QualityItem:
    """One image of the quality set: a target and, in track B, the model's own input file."""

    name: str
    target: Path
    source: Path | None = None


def quality_items(track: Track, dataset: Path) -> list[QualityItem]:
    """The quality set in a stable order; InvalidArgument when the folder is not a dataset."""
    _require_dir(dataset, "dataset")
    if track is Track.A:
        folder = _require_dir(dataset / "original", "track A quality folder")
        targets = _sorted_images(folder, (".png",))
        if not targets:
            raise InvalidArgument(f"{folder} has no .png images")
        return [QualityItem(name=p.name, target=p) for p in targets]
    iphone = _require_dir(dataset / "patches" / "iphone", "track B input folder")
    canon = _require_dir(dataset / "patches" / "canon", "track B target folder")
    sources = {p.name: p for p in _sorted_images(iphone, (".jpg", ".jpeg", ".png"))}
    targets_by_name = {p.name: p for p in _sorted_images(canon, (".jpg", ".jpeg", ".png"))}
    unpaired = sorted(set(sources) ^ set(targets_by_name), key=natural_key)
    if unpaired:
        shown = ", ".join(unpaired[:10]) + (" ..." if len(unpaired) > 10 else "")
        raise InvalidArgument(
            f"dataset {dataset} has {len(unpaired)} unpaired patches (each iphone/N.jpg needs "
            f"canon/N.jpg): {shown}"
        )
    if not sources:
        raise InvalidArgument(f"{iphone} has no images")
    return [
        QualityItem(name=name, target=targets_by_name[name], source=sources[name])
        for name in sorted(sources, key=natural_key)
    ]


def check_defined(track: Track, name: str, quality: PairQuality) -> None:
    """An image's figures must have values to enter a mean: InvalidArgument saying why not."""
    if math.isnan(quality.msssim):
        raise InvalidArgument(
            f"image {name}: MS-SSIM is undefined (NaN): the output is anti-correlated with the "
            f"target at some scale, where the challenge's {QUALITY_OPTIONS[track].flavor.value} "
            "MS-SSIM has no value; check the model's output range and colour order")
    if math.isnan(quality.psnr):
        raise InvalidArgument(f"image {name}: PSNR is NaN; only numbers (or inf for an exact "
                              "output) can be averaged")


def timing_image_path(dataset: Path) -> Path:
    """The first HD (1280x720) image of the dataset, on which runtime is measured."""
    folder = _require_dir(dataset / "HD_res", "HD timing folder")
    images = _sorted_images(folder, (".png", ".jpg"))
    if not images:
        raise InvalidArgument(f"{folder} has no images to time the model on")
    return images[0]


def prepare_quality_pair(track: Track, item: QualityItem) -> tuple[np.ndarray, np.ndarray]:
    """(model input float32 [1, H, W, 3] in [0, 1], target uint8 [H, W, 3])."""
    pixels, target = prepare_quality_pixels(track, item)
    return as_unit_float32(pixels), target


def prepare_quality_pixels(track: Track, item: QualityItem) -> tuple[np.ndarray, np.ndarray]:
    """(model input as uint8 pixels [1, H, W, 3], target uint8 [H, W, 3]): what the pipeline
    sends, a quarter of the float32 input's bytes; the inference service feeds value / 255."""
    if track is Track.A:
        target = crop_to_scale(read_rgb(item.target))
        return downscaled_upscaled(target)[np.newaxis], target
    assert item.source is not None
    source, target = read_rgb(item.source), read_rgb(item.target)
    if source.shape != target.shape:
        raise InvalidArgument(
            f"patch {item.name}: iphone {source.shape} and canon {target.shape} differ in size"
        )
    return source[np.newaxis], target


def timing_input(track: Track, dataset: Path) -> np.ndarray:
    """The model input built from the HD timing image (track A: its bicubic x4 round trip)."""
    image = read_rgb(timing_image_path(dataset))
    if track is Track.A:
        image = downscaled_upscaled(crop_to_scale(image))
    return to_model_input(image)


def timing_probes(track: Track, dataset: Path, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Model inputs (uint8 [1, H, W, 3]) that the timing check runs the model on besides the
    timing input (services/inference/integrity.py): mosaics of the quality images, one of the
    timing input's size and one of a quarter of it, so that a model that recognises the timing
    input (public: it is the challenge's HD image) finds neither. In track A the mosaic is the
    bicubic x4 round trip of the targets, as the model's inputs are."""
    items = quality_items(track, dataset)
    height, width = shape[1], shape[2]
    sizes = [(height, width), (height // 2 // SCALE * SCALE, width // 2 // SCALE * SCALE)]
    probes = []
    for start, (h, w) in enumerate(sizes):
        # The quarter starts from the next image, so that the two probes differ.
        order = items[start % len(items):] + items[:start % len(items)]
        canvas = _mosaic((read_rgb(i.target if track is Track.A else i.source or i.target)
                          for i in order), h, w)
        probes.append((downscaled_upscaled(canvas) if track is Track.A else canvas)[np.newaxis])
    return probes


def _mosaic(images: Iterator[np.ndarray], height: int, width: int) -> np.ndarray:
    """A height x width canvas filled row by row with the images (each cropped to the room
    left), the images taken again from the first when they run out."""
    canvas = np.zeros((height, width, 3), np.uint8)
    turn = itertools.cycle(images)  # reads only the images it uses
    y = 0
    while y < height:
        x, row = 0, 0
        while x < width:
            tile = next(turn)[:height - y, :width - x]
            canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
            x += tile.shape[1]
            row = max(row, tile.shape[0])
        y += row
    return canvas


def timing_input_shape(track: Track, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The shape of `timing_input` for an image of `size` (width, height): [1, H, W, 3] in both
    tracks, since track A's bicubic x4 round trip returns the size it starts from (SPEC.md
    sections 1-2), after the crop to multiples of 4."""
    width, height = size
    if track is Track.A:
        width, height = (width // SCALE) * SCALE, (height // SCALE) * SCALE
    return 1, height, width, 3


def crop_to_scale(image: np.ndarray) -> np.ndarray:
    """Crops to the largest multiple of 4 so that the x4 round trip returns the exact size."""
    h, w = (image.shape[0] // SCALE) * SCALE, (image.shape[1] // SCALE) * SCALE
    if h == 0 or w == 0:
        raise InvalidArgument(f"image {image.shape[1]}x{image.shape[0]} is smaller than {SCALE} px")
    return image[:h, :w]


def downscaled_upscaled(image: np.ndarray) -> np.ndarray:
    """Bicubic /4 then x4 on uint8 images with PIL, as scipy.misc.imresize did."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((w // SCALE, h // SCALE), Image.Resampling.BICUBIC)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def to_model_input(image: np.ndarray) -> np.ndarray:
    return as_unit_float32(image)[np.newaxis]


def read_rgb(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An 8-bit RGB image; its size is checked from the header before anything is decoded, so
    that a small file that expands to gigabytes (a decompression bomb) is refused cheaply."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"image {path.name} is {width}x{height} = {width * height:,} pixels; the "
                    f"limit is {max_pixels:,} (the challenge's images are at most 2040x1356)")
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidArgument(f"cannot read image {path}: {error}") from error


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InvalidArgument(f"{what} {path} does not exist (see the dataset layout in README)")
    return path


def _sorted_images(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file()),
        key=lambda p: natural_key(p.name),
    )


def natural_key(name: str) -> list[object]:
    """Sort key of dataset file names: 2.jpg before 10.jpg, as the challenge numbers them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
