"""deploy/docker/Dockerfile, read without Docker: one target per service (and the
trainer), pinned bases, multi-stage with only the venv in the final image, a
non-root user, the service's entry point, port and health probe, and no torch
in the planner and assembler images (the planner's also runs the web page)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support.deploy import DOCKERFILE, ROOT, dockerfile_stages, stage_lineage

from ghibli_anim.contracts import config

TARGETS = (*config.SERVICES, "trainer")
TORCHLESS = ("planner", "assembler")
# The extras each target installs: its own, and the web page in the planner's image.
EXTRAS = {"planner": ["planner", "web"]}


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
    project = [re.search(r'"/src\[([\w,]+)\]"', line) for line in installs]
    wanted = EXTRAS.get(target, [target])
    assert [m.group(1).split(",") for m in project if m] == [wanted]
    torch = [line for line in installs if "torch==" in line]
    if target in TORCHLESS:
        assert not torch, f"{target} must not install torch"
        pulled = expand_extras(wanted)
        assert not pulled & {"torch", "diffusers", "torchvision", "accelerate", "peft"}, pulled
    else:
        assert torch and "--index-url" in torch[0], f"{target}: torch pinned, from the chosen index"
        assert "torch" in expand_extras([target])


def installed_closure(extras: list[str]) -> set[str]:
    """Distributions ``pip install "ghibli-anim[extras]"`` brings, as canonical names,
    read from the metadata of this environment (which has every extra installed)."""
    seen: set[tuple[str, str]] = set()
    out: set[str] = set()
    todo = [("ghibli-anim", "")] + [("ghibli-anim", e) for e in extras]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        out.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                dep = canonicalize_name(req.name)
                todo.extend([(dep, ""), *((dep, e) for e in req.extras)])
    return out


# Imported only when installed (grpc tries grpc_tools, for .proto files at run time).
OPTIONAL_IMPORTS = frozenset({"grpc_tools"})


def missing_for_web(extras: list[str]) -> dict[str, list[str]]:
    """Top-level modules `ghibli-anim serve web` imports that no distribution of
    ``ghibli-anim[extras]`` provides (module -> the distributions that do)."""
    # Modules loaded at interpreter start (site's .pth hooks) are not the page's.
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "from ghibli_anim.cli import main\n"
        "from ghibli_anim.services.web import app, service\n"
        "from ghibli_anim.contracts import profiles\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    providers = metadata.packages_distributions()
    image = installed_closure(extras)
    missing = {}
    for module in json.loads(result.stdout):
        dists = providers.get(module)
        # Standard library and first-party modules have no distribution of their own.
        if module in OPTIONAL_IMPORTS:
            continue
        if dists and not {canonicalize_name(d) for d in dists} & image:
            missing[module] = dists
    return missing


def test_the_planner_image_has_everything_the_web_page_imports() -> None:
    assert missing_for_web(EXTRAS["planner"]) == {}
    # Without the web extra the page could not start: the check sees it.
    assert "starlette" in missing_for_web(["planner"])


def test_cuda_by_default_cpu_on_request() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://pypi.org/simple" in text
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+\n", text)
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"TORCH_VERSION := (\S+)", makefile)
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}\n" in text


def test_build_context_leaves_out_everything_but_the_package() -> None:
    text = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()
    patterns = [p for p in text.splitlines() if p.strip() and not p.startswith("#")]
    # Everything is left out, then only these come back.
    assert patterns[:4] == ["*", "!pyproject.toml", "!README.md", "!ghibli_anim/"]
    assert not [p for p in patterns[4:] if p.startswith("!")]
    copies = [
        line
        for stage in dockerfile_stages().values()
        for line in stage["lines"]
        if line.startswith("COPY") and "--from" not in line
    ]
    assert copies == ["COPY pyproject.toml README.md ./", "COPY ghibli_anim ./ghibli_anim"]
