"""services.scorer.protocol on small datasets generated here with PIL (challenge layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from services.core.errors import InvalidArgument
from services.core.track import Track
from services.scorer.protocol import (
    QualityItem,
    crop_to_scale,
    downscaled_upscaled,
    prepare_quality_pair,
    quality_items,
    read_rgb,
    timing_image_path,
    timing_input,
)

U8 = NDArray[np.uint8]


def random_image(seed: int, height: int, width: int) -> U8:
    # smooth-ish content so that bicubic resizing does something non-trivial
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height, width, 3)).astype(np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (np.sin(xx / 3.0) + np.cos(yy / 5.0))[..., None] * 60.0
    return np.clip(base * 0.5 + ramp + 64.0, 0, 255).astype(np.uint8)


def save(image: U8, path: Path, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)
    return path


def pil_round_trip(image: U8) -> U8:
    """SPEC section 2, track A step 1: bicubic /4 then x4 on uint8 images with PIL."""
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    small = pil.resize((w // 4, h // 4), Image.Resampling.BICUBIC)
    return np.array(small.resize((w, h), Image.Resampling.BICUBIC))


def decoded(path: Path) -> U8:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


# --------------------------------------------------------------------------------------------
# crop and round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(7, 13, (4, 12)), (8, 8, (8, 8)), (9, 4, (8, 4)), (1359, 2039, (1356, 2036)),
     (4, 5, (4, 4)), (11, 6, (8, 4))],
)
def test_crop_to_scale(height: int, width: int, expected: tuple[int, int]) -> None:
    image = random_image(height * 7 + width, height, width)
    cropped = crop_to_scale(image)
    assert cropped.shape == (*expected, 3)
    # the crop keeps the top-left corner
    np.testing.assert_array_equal(cropped, image[: expected[0], : expected[1]])


@pytest.mark.parametrize(("height", "width"), [(3, 10), (10, 3), (2, 2), (0, 8)])
def test_crop_to_scale_too_small(height: int, width: int) -> None:
    with pytest.raises(InvalidArgument):
        crop_to_scale(np.zeros((height, width, 3), np.uint8))


@pytest.mark.parametrize(("height", "width"), [(32, 48), (44, 20), (100, 60), (8, 4)])
def test_downscaled_upscaled_is_pil_bicubic_round_trip(height: int, width: int) -> None:
    image = random_image(height + width, height, width)
    out = downscaled_upscaled(image)
    assert out.dtype == np.uint8
    assert out.shape == image.shape
    np.testing.assert_array_equal(out, pil_round_trip(image))
    assert not np.array_equal(out, image)  # it did lose detail


# --------------------------------------------------------------------------------------------
# track A
# --------------------------------------------------------------------------------------------


@pytest.fixture
def dataset_a(tmp_path: Path) -> Path:
    root = tmp_path / "div2k"
    save(random_image(1, 41, 37), root / "original" / "10.png")  # odd sizes: cropped to 40x36
    save(random_image(2, 32, 24), root / "original" / "2.png")
    save(random_image(3, 20, 28), root / "original" / "1.png")
    (root / "original" / "notes.txt").write_text("not an image")
    save(random_image(4, 20, 20), root / "original" / "skipped.jpg")  # track A reads .png only
    (root / "original" / "sub.png").mkdir()  # a folder, not an image
    save(random_image(5, 30, 42), root / "HD_res" / "11.png")
    save(random_image(6, 27, 33), root / "HD_res" / "3.png")
    return root


def test_track_a_quality_items_in_natural_order(dataset_a: Path) -> None:
    items = quality_items(Track.A, dataset_a)
    assert [item.name for item in items] == ["1.png", "2.png", "10.png"]
    for item in items:
        assert item.target == dataset_a / "original" / item.name
        assert item.source is None


def test_track_a_quality_pair(dataset_a: Path) -> None:
    item = next(i for i in quality_items(Track.A, dataset_a) if i.name == "10.png")
    model_input, target = prepare_quality_pair(Track.A, item)
    original = decoded(dataset_a / "original" / "10.png")
    expected_target = original[:40, :36]
    np.testing.assert_array_equal(target, expected_target)
    assert model_input.dtype == np.float32
    assert model_input.shape == (1, 40, 36, 3)
    expected_input = pil_round_trip(expected_target).astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(model_input[0], expected_input)
    assert model_input.min() >= 0.0 and model_input.max() <= 1.0


def test_track_a_timing_input(dataset_a: Path) -> None:
    assert timing_image_path(dataset_a) == dataset_a / "HD_res" / "3.png"
    model_input = timing_input(Track.A, dataset_a)
    hd = decoded(dataset_a / "HD_res" / "3.png")[:24, :32]  # 27x33 cropped to 24x32
    expected = pil_round_trip(hd).astype(np.float32) / np.float32(255.0)
    assert model_input.shape == (1, 24, 32, 3)
    assert model_input.dtype == np.float32
    np.testing.assert_array_equal(model_input[0], expected)


def test_track_a_without_png(tmp_path: Path) -> None:
    (tmp_path / "original").mkdir()
    save(random_image(1, 8, 8), tmp_path / "original" / "a.jpg")
    with pytest.raises(InvalidArgument, match="png"):
        quality_items(Track.A, tmp_path)


def test_grey_image_becomes_rgb(tmp_path: Path) -> None:
    grey = random_image(9, 16, 12)[..., 0]
    path = tmp_path / "original" / "1.png"
    path.parent.mkdir()
    Image.fromarray(grey, mode="L").save(path)
    model_input, target = prepare_quality_pair(Track.A, QualityItem(name="1.png", target=path))
    assert target.shape == (16, 12, 3)
    for channel in range(3):
        np.testing.assert_array_equal(target[..., channel], grey)
    assert model_input.shape == (1, 16, 12, 3)


# --------------------------------------------------------------------------------------------
# track B
# --------------------------------------------------------------------------------------------


def make_dataset_b(root: Path, numbers: list[int], size: int = 100) -> Path:
    for n in numbers:
        save(random_image(100 + n, size, size), root / "patches" / "iphone" / f"{n}.jpg",
             quality=90)
        save(random_image(200 + n, size, size), root / "patches" / "canon" / f"{n}.jpg",
             quality=90)
    save(random_image(7, 18, 32), root / "HD_res" / "1.png")
    return root


def test_track_b_pairs_in_natural_order(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path / "dped", [10, 2, 1, 33, 3])
    items = quality_items(Track.B, root)
    assert [item.name for item in items] == ["1.jpg", "2.jpg", "3.jpg", "10.jpg", "33.jpg"]
    for item in items:
        assert item.source == root / "patches" / "iphone" / item.name
        assert item.target == root / "patches" / "canon" / item.name


def test_track_b_quality_pair(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path, [4])
    (item,) = quality_items(Track.B, root)
    model_input, target = prepare_quality_pair(Track.B, item)
    iphone = decoded(root / "patches" / "iphone" / "4.jpg")
    canon = decoded(root / "patches" / "canon" / "4.jpg")
    assert model_input.shape == (1, 100, 100, 3)
    assert model_input.dtype == np.float32
    np.testing.assert_array_equal(model_input[0], iphone.astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(target, canon)


def test_track_b_timing_input_is_the_hd_image(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path, [1])
    model_input = timing_input(Track.B, root)
    hd = decoded(root / "HD_res" / "1.png")  # 18x32: not cropped in track B
    np.testing.assert_array_equal(model_input[0], hd.astype(np.float32) / np.float32(255.0))


def test_track_b_missing_canon_file_is_named(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path, [1, 2, 3])
    (root / "patches" / "canon" / "2.jpg").unlink()
    with pytest.raises(InvalidArgument, match=r"2\.jpg"):
        quality_items(Track.B, root)


def test_track_b_missing_iphone_file_is_named(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path, [1, 2])
    save(random_image(5, 100, 100), root / "patches" / "canon" / "17.jpg")
    with pytest.raises(InvalidArgument, match=r"17\.jpg"):
        quality_items(Track.B, root)


def test_track_b_patch_sizes_must_agree(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path, [1])
    save(random_image(5, 100, 96), root / "patches" / "canon" / "1.jpg")
    (item,) = quality_items(Track.B, root)
    with pytest.raises(InvalidArgument, match="1.jpg"):
        prepare_quality_pair(Track.B, item)


def test_track_b_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "patches" / "iphone").mkdir(parents=True)
    (tmp_path / "patches" / "canon").mkdir(parents=True)
    with pytest.raises(InvalidArgument):
        quality_items(Track.B, tmp_path)


# --------------------------------------------------------------------------------------------
# missing folders, unreadable images
# --------------------------------------------------------------------------------------------


def test_missing_dataset(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for track in Track:
        with pytest.raises(InvalidArgument) as info:
            quality_items(track, missing)
        assert str(missing) in str(info.value)


def test_missing_track_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        quality_items(Track.A, tmp_path)
    assert str(tmp_path / "original") in str(info.value)


@pytest.mark.parametrize("present", ["iphone", "canon"])
def test_missing_track_b_folder(tmp_path: Path, present: str) -> None:
    (tmp_path / "patches" / present).mkdir(parents=True)
    absent = "canon" if present == "iphone" else "iphone"
    with pytest.raises(InvalidArgument) as info:
        quality_items(Track.B, tmp_path)
    assert str(tmp_path / "patches" / absent) in str(info.value)


def test_missing_hd_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        timing_image_path(tmp_path)
    assert str(tmp_path / "HD_res") in str(info.value)
    (tmp_path / "HD_res").mkdir()
    with pytest.raises(InvalidArgument) as info:
        timing_input(Track.A, tmp_path)
    assert str(tmp_path / "HD_res") in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"hello world" * 50])
def test_unreadable_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "original" / "1.png"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(InvalidArgument) as info:
        read_rgb(path)
    assert str(path) in str(info.value)
    (item,) = quality_items(Track.A, tmp_path)
    with pytest.raises(InvalidArgument):
        prepare_quality_pair(Track.A, item)


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    root = make_dataset_b(tmp_path, [1])
    path = root / "patches" / "iphone" / "1.jpg"
    path.write_bytes(path.read_bytes()[:200])
    (item,) = quality_items(Track.B, root)
    with pytest.raises(InvalidArgument, match="cannot read"):
        prepare_quality_pair(Track.B, item)


def test_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        read_rgb(tmp_path / "absent.png")
