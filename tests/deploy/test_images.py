"""deploy/docker/Dockerfile, read without Docker: one target per service (and the
trainer), pinned bases, multi-stage with only the venv in the final image, a
non-root user, the service's entry point, port and health probe, and no torch
in the planner and assembler images."""

from __future__ import annotations

import re
import tomllib

import pytest
from deploy_support import DOCKERFILE, ROOT, dockerfile_stages, stage_lineage

from ghibli_anim.common import config

TARGETS = (*config.SERVICES, "trainer")
TORCHLESS = ("planner", "assembler")


@pytest.fixture(scope="module")
def stages() -> dict:
    return dockerfile_stages()


def extras() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def expand_extras(names: list[str]) -> set[str]:
    """Every requirement an install of ``ghibli-anim[names]`` pulls in from the extras."""
    table = extras()
    seen: set[str] = set()
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in table[name]:
            m = re.fullmatch(r"ghibli-anim\[([\w,]+)\]", req)
            if m:
                todo.extend(m.group(1).split(","))
            else:
                out.add(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower())
    return out


def test_every_service_and_the_trainer_has_a_target(stages: dict) -> None:
    for target in TARGETS:
        assert target in stages
        assert "runtime" in stage_lineage(stages, target)


def test_base_images_are_pinned(stages: dict) -> None:
    for name, stage in stages.items():
        base = stage["from"]
        if base in stages:
            continue
        # An exact version tag (x.y.z) or a digest; never latest or a moving major tag.
        assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+[-\w.]*$", base), f"{name}: {base}"


def test_final_images_hold_only_the_venv_and_run_unprivileged(stages: dict) -> None:
    runtime = stages["runtime"]["lines"]
    assert "USER 10001:10001" in runtime
    assert 'ENTRYPOINT ["ghibli-anim"]' in runtime
    assert not [line for line in runtime if line.startswith(("COPY", "ADD"))]
    for target in TARGETS:
        lines = stages[target]["lines"]
        copies = [line for line in lines if line.startswith(("COPY", "ADD"))]
        assert len(copies) == 1, target
        m = re.fullmatch(r"COPY --from=(\S+) /opt/venv /opt/venv", copies[0])
        assert m and m.group(1).startswith("builder-"), copies[0]
        assert not [line for line in lines if line.startswith(("RUN", "USER"))], target
        # Build tools stay in the builders: pip is uninstalled from the copied venv.
        builder = stages[m.group(1)]["lines"]
        assert any("pip uninstall --yes pip" in line for line in builder), m.group(1)


@pytest.mark.parametrize("service", config.SERVICES)
def test_service_images_run_serve_expose_the_port_and_probe_health(
    stages: dict, service: str
) -> None:
    lines = stages[service]["lines"]
    port = config.GRPC_PORTS[service]
    assert f'CMD ["serve", "{service}"]' in lines
    assert f"EXPOSE {port}" in lines
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert health.endswith(f'CMD ["ghibli-anim", "probe", "--target", "127.0.0.1:{port}"]')


def builder_of(stages: dict, target: str) -> str:
    copy = next(line for line in stages[target]["lines"] if line.startswith("COPY --from="))
    return copy.split()[1].removeprefix("--from=")


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_installs_its_own_extra(stages: dict, target: str) -> None:
    builder = builder_of(stages, target)
    installs = [
        line
        for stage in stage_lineage(stages, builder)
        for line in stages[stage]["lines"]
        if line.startswith("RUN") and "pip install" in line
    ]
    project = [re.search(r'"/src\[(\w+)\]"', line) for line in installs]
    assert [m.group(1) for m in project if m] == [target]
    torch = [line for line in installs if "torch==" in line]
    if target in TORCHLESS:
        assert not torch, f"{target} must not install torch"
        pulled = expand_extras([target])
        assert not pulled & {"torch", "diffusers", "torchvision", "accelerate", "peft"}, pulled
    else:
        assert torch and "--index-url" in torch[0], f"{target}: torch pinned, from the chosen index"
        assert "torch" in expand_extras([target])


def test_cuda_by_default_cpu_on_request() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://pypi.org/simple" in text
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+\n", text)
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"TORCH_SPEC \?= torch==(\S+)", makefile)
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}\n" in text


def test_build_context_leaves_out_everything_but_the_package() -> None:
    text = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()
    patterns = [p for p in text.splitlines() if p.strip() and not p.startswith("#")]
    # Everything is left out, then only these come back.
    assert patterns[:4] == ["*", "!pyproject.toml", "!README.md", "!services/"]
    assert not [p for p in patterns[4:] if p.startswith("!")]
    copies = [
        line
        for stage in dockerfile_stages().values()
        for line in stage["lines"]
        if line.startswith("COPY") and "--from" not in line
    ]
    assert copies == ["COPY pyproject.toml README.md ./", "COPY services ./services"]
