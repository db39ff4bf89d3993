"""The challenge's tracks and phases (SPEC.md sections 1 and 7), and how leaderboards rank."""

from __future__ import annotations

from enum import StrEnum


class Track(StrEnum):
    A = "A"  # super-resolution x4
    B = "B"  # iPhone-to-DSLR enhancement


class Phase(StrEnum):
    VALIDATION = "validation"
    FINAL = "final"


RANKINGS = ("a", "b", "c")


class EntryPolicy(StrEnum):
    BEST = "best"
    LATEST = "latest"
