"""Prints the project's pinned runtime dependencies from pyproject.toml, one per line, less the
ones named with --without: the GPU image keeps its base image's CUDA build of TensorFlow
instead of the `tensorflow-cpu` pin."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def requirement_name(requirement: str) -> str:
    """`tensorflow-cpu==2.21.0` -> `tensorflow-cpu` (PEP 503 normalised)."""
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements(pyproject: Path, without: set[str]) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    excluded = {requirement_name(name) for name in without}
    return [r for r in dependencies if requirement_name(r) not in excluded]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--without", action="append", default=[], metavar="NAME")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args()
    print("\n".join(runtime_requirements(args.pyproject, set(args.without))))


if __name__ == "__main__":
    main()
