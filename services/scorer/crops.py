"""What reports show of a job's images: each image's stored figures, and crops of the model's
input, output and target for a few images, made by running the job's model again (outputs are
not stored: a DIV2K output is 30 MB of float32). Free of gRPC."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.errors import InvalidArgument
from services.core.quality import PairQuality
from services.scorer.evaluation import InferenceBackend, load_job_model
from services.scorer.jobs import Job
from services.scorer.protocol import natural_key, prepare_quality_pair, quality_items
from services.scorer.store import JobStore

MAX_CROP_IMAGES = 8  # each costs a model run on the inference service
DEFAULT_CROP_SIZE = 128
MAX_CROP_SIZE = 1024


@dataclass(frozen=True)
class ImageCrops:
    """The same centre window of the model input, output and target, as PNG bytes."""

    image: str
    input_png: bytes
    output_png: bytes
    target_png: bytes


def job_images(store: JobStore, job_id: str) -> list[tuple[str, PairQuality]]:
    """The figures of each image of the job measured so far, in the dataset's order."""
    store.get_job(job_id)  # NotFound for an unknown job, not an empty list
    figures = store.image_results(job_id)
    return [(name, PairQuality(psnr=figures[name][0], msssim=figures[name][1]))
            for name in sorted(figures, key=natural_key)]


def image_crops(job: Job, store: JobStore, inference: InferenceBackend, names: list[str],
                size: int = 0) -> list[ImageCrops]:
    """Runs the job's model on the named images of its dataset and crops input, output and
    target at the centre of each image (the whole image if it is smaller)."""
    size = size or DEFAULT_CROP_SIZE
    if not 0 < size <= MAX_CROP_SIZE:
        raise InvalidArgument(f"crop size must be 1..{MAX_CROP_SIZE} px, not {size}")
    if not 0 < len(names) <= MAX_CROP_IMAGES:
        raise InvalidArgument(f"ask for crops of 1 to {MAX_CROP_IMAGES} images, not {len(names)}")
    items = {item.name: item for item in quality_items(job.spec.track, Path(job.spec.dataset))}
    unknown = [name for name in names if name not in items]
    if unknown:
        raise InvalidArgument(f"job {job.job_id}: images {', '.join(unknown)} are not in its "
                              f"dataset {job.spec.dataset}")
    model = load_job_model(job.spec, store, inference)
    crops = []
    for name in names:
        model_input, target = prepare_quality_pair(job.spec.track, items[name])
        output = inference.infer(model, model_input)
        window = centre_window(target.shape[0], target.shape[1], size)
        crops.append(ImageCrops(
            image=name,
            input_png=png_bytes(to_uint8(model_input[0])[window]),
            output_png=png_bytes(to_uint8(output[0])[window]),
            target_png=png_bytes(target[window]),
        ))
    return crops


def centre_window(height: int, width: int, size: int) -> tuple[slice, slice]:
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return slice(top, top + size), slice(left, left + size)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A model image in [0, 1] as 8 bits; outputs beyond the range are clipped, as the metrics'
    PSNR clips them."""
    return np.asarray(np.round(np.clip(image, 0.0, 1.0) * 255.0), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()
