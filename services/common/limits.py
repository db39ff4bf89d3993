"""Limits on untrusted input that more than one service enforces."""

from __future__ import annotations

from services.common.errors import InvalidArgument

DEFAULT_MAX_MODEL_BYTES = 100 * 1024 * 1024  # the challenge's rule (SPEC.md section 1)


def check_model_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidArgument(
            f"model file is {size:,} bytes ({size / 2**20:.1f} MiB); the limit is "
            f"{max_bytes:,} bytes ({max_bytes / 2**20:.1f} MiB)"
        )
