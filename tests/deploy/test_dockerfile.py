"""The Dockerfile: hadolint clean, and the structure the deployment relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.deploy.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            stages.append(Stage(match.group(2), match.group(1)))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text(encoding="utf-8"))
BY_NAME = {stage.name: stage for stage in STAGES}


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    return (
        str(beside) if beside.is_file() else (shutil.which("hadolint") or require_tool("hadolint"))
    )


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER root\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged image


def test_base_image_is_a_build_argument_defaulting_to_python_slim() -> None:
    assert ARGS["BASE_IMAGE"] == "python:3.11-slim"
    assert BY_NAME["base"].base == "${BASE_IMAGE}"


def test_serve_is_the_default_target_and_train_exists() -> None:
    assert STAGES[-1].name == "serve"
    assert "train" in BY_NAME


def lineage(name: str) -> list[Stage]:
    """The stage, its parents and every stage it copies from (recursively)."""
    seen: list[Stage] = []
    todo = [name]
    while todo:
        stage = BY_NAME.get(todo.pop())
        if stage is None or stage in seen:
            continue
        seen.append(stage)
        todo.append(stage.base)
        for copy in stage.values("COPY"):
            match = re.search(r"--from=(\S+)", copy)
            if match:
                todo.append(match.group(1))
    return seen


def test_serve_never_touches_the_train_stages_or_their_wheels() -> None:
    names = {stage.name for stage in lineage("serve")}
    assert "train" not in names and "train-build" not in names
    copies = " ".join(c for stage in lineage("serve") for c in stage.values("COPY"))
    assert "wheels/train" not in copies
    runs = " ".join(r for stage in lineage("serve") for r in stage.values("RUN"))
    assert re.search(r"requirements\.py pyproject\.toml serve\b", runs)
    assert "torch leaked" in runs  # the build fails if torch ever arrives


@pytest.mark.parametrize("target", ["serve", "train"])
def test_runtime_stages_run_as_a_numeric_non_root_user(target: str) -> None:
    users = BY_NAME[target].values("USER")
    assert users, f"{target} sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert f"--uid {uid}" in " ".join(BY_NAME["base"].values("RUN"))


def test_serve_healthcheck_model_volume_and_entrypoint() -> None:
    serve = BY_NAME["serve"]
    (health,) = serve.values("HEALTHCHECK")
    assert "/healthz" in health and "python3" in health and "curl" not in health
    env = " ".join(serve.values("ENV"))
    assert "IMGZOO_REPOSITORY=/models" in env and "IMGZOO_HOST=0.0.0.0" in env
    assert serve.values("VOLUME") == ['["/models"]']
    assert serve.values("ENTRYPOINT") == ['["imgzoo"]'] and serve.values("CMD") == ['["serve"]']
    assert "8000" in serve.values("EXPOSE")


def test_ort_package_is_a_build_argument_of_the_serve_build() -> None:
    (arg,) = BY_NAME["serve-build"].values("ARG")
    assert arg.startswith("ORT_PACKAGE=onnxruntime-gpu")
    assert '--ort "$ORT_PACKAGE"' in " ".join(BY_NAME["serve-build"].values("RUN"))


def dockerignore_allows(path: str) -> bool:
    """Whether the build context holds `path` under .dockerignore's last-match-wins rules."""
    allowed = True
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch(p, pattern) or fnmatch(p, pattern.replace("**/", "")) for p in prefixes)
        if hit:
            allowed = negate
    return allowed


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = []
    for stage in STAGES:
        for copy in stage.values("COPY"):
            if "--from=" in copy:
                continue
            sources += copy.split()[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert dockerignore_allows(source.rstrip("/")), f".dockerignore excludes {source}"
    assert not dockerignore_allows(".venv")
    assert not dockerignore_allows("model_repository")
