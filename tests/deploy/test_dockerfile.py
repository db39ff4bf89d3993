"""deploy/docker/Dockerfile read as text (no Docker engine here): the rules that can be
checked without building."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch

from deploy.docker.requirements import runtime_requirements
from services.common.config import DEFAULT_PORTS
from tests.deploy.manifests import METRICS_PORTS, REPO

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"
PYPROJECT = REPO / "pyproject.toml"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|[\w.+-]+-dev)\b")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def parse_stages(text: str) -> list[Stage]:
    lines = re.sub(r"\\\n", " ", text).splitlines()
    defaults: dict[str, str] = {}
    stages: list[Stage] = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            image, _, name = args.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image.strip())
            stages.append(Stage(name.strip(), base))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


STAGES = parse_stages(DOCKERFILE.read_text())


def final_stages() -> dict[str, Stage]:
    """Stages no other stage builds on: the images."""
    text = " ".join(f"{s.base} {args}" for s in STAGES for _, args in s.instructions)
    used = set(re.findall(r"from=([\w-]+)", text)) | {s.base for s in STAGES}
    return {s.name: s for s in STAGES if s.name not in used}


def test_the_images_are_cpu_and_gpu() -> None:
    images = final_stages()
    assert set(images) == {"cpu", "gpu"}
    assert re.fullmatch(r"python:3\.11-slim", images["cpu"].base)
    assert re.fullmatch(r"tensorflow/tensorflow:2\.21\.\d+-gpu", images["gpu"].base)


def test_images_run_as_a_numeric_non_root_user() -> None:
    for name, stage in final_stages().items():
        user = stage.arguments("USER")[-1]
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user}"


def test_images_install_no_build_tools() -> None:
    for name, stage in final_stages().items():
        for command in stage.arguments("RUN"):
            assert not BUILD_TOOLS.search(command), f"{name}: {command}"
            assert "apt-get install" not in command, f"{name}: {command}"


def test_exposed_ports_are_the_services_ports() -> None:
    def exposed(stage: Stage) -> set[int]:
        return {int(p) for args in stage.arguments("EXPOSE") for p in args.split()}

    images = final_stages()
    assert exposed(images["cpu"]) == set(DEFAULT_PORTS.values()) | set(METRICS_PORTS.values())
    assert exposed(images["gpu"]) == {DEFAULT_PORTS["inference"], METRICS_PORTS["inference"]}


def test_read_only_root_file_system_writes_go_to_tmp() -> None:
    for name, stage in final_stages().items():
        env = " ".join(stage.arguments("ENV"))
        for setting in ("PYTHONDONTWRITEBYTECODE=1", "NUMBA_CACHE_DIR=/tmp/", "HOME=/tmp"):
            assert setting in env, f"{name} lacks {setting}"


def test_protobuf_code_is_generated_from_every_proto_folder_with_the_pinned_protoc() -> None:
    protoc = next(cmd for s in STAGES for cmd in s.arguments("RUN") if "grpc_tools.protoc" in cmd)
    folders = {p.parent.relative_to(REPO) for p in (REPO / "protos").rglob("*.proto")}
    for folder in folders:
        assert f"{folder}/*.proto" in protoc
    pinned = [d for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
              if d.startswith("grpcio-tools==")]
    assert len(pinned) == 1  # what the Dockerfile's grep picks


def test_gpu_requirements_are_the_pins_less_tensorflow_cpu() -> None:
    pins = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    gpu = runtime_requirements(PYPROJECT, {"tensorflow_cpu"})
    assert gpu == [p for p in pins if not p.startswith("tensorflow-cpu")]
    assert any(p.startswith("numpy==") for p in gpu)


def test_build_context_keeps_what_the_dockerfile_copies() -> None:
    keep = [line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
            if line.startswith("!")]
    for stage in STAGES:
        for args in stage.arguments("COPY"):
            if "--from=" in args:
                continue
            for source in args.split()[:-1]:
                assert any(fnmatch(source, pattern) for pattern in keep), source
                assert (REPO / source).exists(), source
