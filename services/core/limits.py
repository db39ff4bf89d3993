"""Limits on untrusted input that more than one part of the project enforces, and their
defaults."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.core.errors import InvalidArgument

MIB = 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 100 * MIB  # the challenge's rule (SPEC.md section 1)
# The challenge's 3.5 GB of RAM on a 1280x720 image (SPEC.md section 1).
DEFAULT_MEMORY_LIMIT_MB = 3584
# An HD float32 image is 1280*720*3*4 = 11 MB; full-size DIV2K images about 33 MB.
DEFAULT_MAX_MESSAGE_MB = 64


def check_model_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidArgument(
            f"model file is {size:,} bytes ({size / 2**20:.1f} MiB); the limit is "
            f"{max_bytes:,} bytes ({max_bytes / 2**20:.1f} MiB)"
        )


def confined_path(path: str, roots: Sequence[Path]) -> Path:
    """The path, resolved (symbolic links followed, `..` removed), if it lies inside one of
    `roots`; InvalidArgument otherwise. No roots: no confinement (a local, single-user setup).
    The message names the roots, not what lies outside them."""
    resolved = Path(path).resolve()
    if not roots:
        return resolved
    if any(resolved.is_relative_to(root.resolve()) for root in roots):
        return resolved
    allowed = ", ".join(str(root) for root in roots)
    raise InvalidArgument(
        f"dataset {path!r} is outside the data folders this scorer may read ({allowed}); "
        "put the dataset there or ask the operator to add its folder (PIRM_DATA_ROOTS)"
    )
