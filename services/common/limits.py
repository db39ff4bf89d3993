"""Limits on untrusted input that more than one service enforces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.errors import InvalidArgument

DEFAULT_MAX_MODEL_BYTES = 100 * 1024 * 1024  # the challenge's rule (SPEC.md section 1)


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
