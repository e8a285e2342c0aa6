"""deploy/docker/Dockerfile, read without Docker: one target per service (and the
trainer), pinned bases, and images made of layers that change at their own pace:
torch in its own stage, the dependencies from lists read out of pyproject.toml
before any source is copied, the package last with --no-deps; a non-root user,
the service's entry point, port and health probe, no torch in the planner and
assembler images (the planner's also runs the web page) and CPU torch in depth's."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support.deploy import DOCKERFILE, ROOT, dockerfile_stages, stage_lineage

from ghibli_anim.contracts import config

TARGETS = (*config.SERVICES, "trainer")
TORCHLESS = ("planner", "assembler")
# The extras each target installs: its own, and the web page in the planner's image.
EXTRAS = {"planner": ["planner", "web"]}
REQUIREMENTS_SCRIPT = DOCKERFILE.parent / "requirements.py"


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


def copies(stages: dict, target: str) -> list[tuple[str, str]]:
    """(stage, path) of each ``COPY --from=stage path path`` of a final image, in order."""
    out = []
    for line in stages[target]["lines"]:
        if line.startswith(("COPY", "ADD")):
            m = re.fullmatch(r"COPY --from=(\S+) (/opt/\w+) (/opt/\w+)", line)
            assert m and m.group(2) == m.group(3), f"{target}: {line}"
            out.append((m.group(1), m.group(2)))
    return out


def torch_stage(stages: dict, target: str) -> str | None:
    return next((stage for stage, path in copies(stages, target) if path == "/opt/torch"), None)


def test_final_images_are_the_layers_slowest_first_and_run_unprivileged(stages: dict) -> None:
    runtime = stages["runtime"]["lines"]
    assert "USER 10001:10001" in runtime
    assert 'ENTRYPOINT ["ghibli-anim"]' in runtime
    assert not [line for line in runtime if line.startswith(("COPY", "ADD"))]
    # The package's console script first, then the venv's Python.
    (path,) = [line for line in runtime if line.startswith("ENV PATH=")]
    assert path.startswith("ENV PATH=/opt/app/bin:/opt/venv/bin:$PATH")
    for target in TARGETS:
        layers = copies(stages, target)
        torch = [] if target in TORCHLESS else [(torch_stage(stages, target), "/opt/torch")]
        assert layers == [*torch, (f"deps-{target}", "/opt/venv"), ("app", "/opt/app")], target
        lines = stages[target]["lines"]
        assert not [line for line in lines if line.startswith(("RUN", "USER"))], target
        # Build tools stay in the builders: pip leaves the venv the image carries.
        deps = " ".join(stages[f"deps-{target}"]["lines"])
        assert deps.index("pip check") < deps.index("pip uninstall --yes pip"), target
        assert "python -m compileall -q /opt/venv/lib" in deps, target


def test_the_venv_finds_the_package_and_torch_through_a_pth_file(stages: dict) -> None:
    for target in TARGETS:
        (run,) = [line for line in stages[f"deps-{target}"]["lines"] if line.startswith("RUN")]
        m = re.search(r"(?:echo|printf '%s\\n') ([/\w ]+?) > .+/ghibli-anim\.pth", run)
        assert m, f"deps-{target}: {run}"
        wanted = ["/opt/app"] if target in TORCHLESS else ["/opt/app", "/opt/torch"]
        assert m.group(1).split() == wanted, target


def test_the_package_is_installed_last_without_its_dependencies(stages: dict) -> None:
    app = stages["app"]
    assert app["from"] == "builder-base"
    (run,) = [line for line in app["lines"] if line.startswith("RUN")]
    assert "pip install --no-compile --no-deps --target /opt/app /src" in run
    # Nothing before the app stage sees a source file: the dependency stages copy
    # only the lists, and the lists' stage only pyproject.toml and the script.
    for name in ("requirements", *(f"deps-{t}" for t in TARGETS), "torch", "torch-depth"):
        for line in stages[name]["lines"]:
            if line.startswith("COPY") and "--from" not in line:
                assert name == "requirements", f"{name}: {line}"
                assert line == "COPY pyproject.toml deploy/docker/requirements.py ./"


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


def list_extras(stages: dict) -> dict[str, list[str]]:
    """target -> the extras its dependency list is written from (requirements stage)."""
    (run,) = [line for line in stages["requirements"]["lines"] if line.startswith("RUN")]
    found = re.findall(r"python requirements\.py pyproject\.toml ([\w,]+) > (\w+)\.txt", run)
    return {name: extras.split(",") for extras, name in found}


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_installs_its_own_extra(stages: dict, target: str) -> None:
    wanted = EXTRAS.get(target, [target])
    assert list_extras(stages)[target] == wanted
    deps = stages[f"deps-{target}"]["lines"]
    assert f"COPY --from=requirements /build/{target}.txt requirements.txt" in deps
    installs = [
        line
        for stage in stage_lineage(stages, f"deps-{target}")
        for line in stages[stage]["lines"]
        if line.startswith("RUN") and "pip install" in line
    ]
    assert any("--requirement requirements.txt" in line for line in installs)
    torch = [line for line in installs if '"torch==${TORCH_VERSION}"' in line]
    if target in TORCHLESS:
        assert not torch and torch_stage(stages, target) is None, f"{target} must not get torch"
        pulled = expand_extras(wanted)
        assert not pulled & {"torch", "diffusers", "torchvision", "accelerate", "peft"}, pulled
    else:
        # torch from its own stage and index, and the same torch again when the
        # dependencies are installed (so none of them pulls another into the venv).
        layers = [line for line in torch if "--target /opt/torch --index-url" in line]
        checks = [line for line in torch if "--requirement requirements.txt" in line]
        assert len(layers) == len(checks) == 1 and len(torch) == 2, torch
        assert torch_stage(stages, target) in stage_lineage(stages, f"deps-{target}")
        assert "torch" in expand_extras([target])


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("requirements", REQUIREMENTS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def metadata_requirements(extras: list[str]) -> set[tuple[str, str]]:
    """(name, specifier) of what the installed package's metadata (setuptools' reading
    of pyproject.toml) requires with ``extras``, references to its own extras followed."""
    out: set[tuple[str, str]] = set()
    seen: set[str] = set()
    todo = ["", *extras]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in metadata.requires("ghibli-anim") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if req.marker is None and extra:
                continue  # a core requirement, counted once under ""
            if canonicalize_name(req.name) == "ghibli-anim":
                todo.extend(req.extras)
            else:
                out.add((canonicalize_name(req.name), str(req.specifier)))
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_each_dependency_list_is_what_pip_would_install_with_the_package(target: str) -> None:
    lines = script().requirements(pyproject(), EXTRAS.get(target, [target]))
    parsed = {(canonicalize_name(r.name), str(r.specifier)) for r in map(Requirement, lines)}
    assert len(parsed) == len(lines)
    assert parsed == metadata_requirements(EXTRAS.get(target, [target]))
    assert not [line for line in lines if line.lower().startswith("ghibli")]


def test_the_lists_depend_on_the_dependency_tables_only() -> None:
    # Why a code or settings change leaves the dependency layers cached: the lists
    # BuildKit compares do not change with anything else in pyproject.toml.
    text = (ROOT / "pyproject.toml").read_text()
    base = script().requirements(tomllib.loads(text), ["renderer"])
    settings = text.replace("line-length = 100", "line-length = 120")
    assert settings != text
    assert script().requirements(tomllib.loads(settings), ["renderer"]) == base
    deps = text.replace('"diffusers==0.42.1"', '"diffusers==0.43.0"')
    assert deps != text
    assert script().requirements(tomllib.loads(deps), ["renderer"]) != base


def test_the_list_script_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    run = script().main
    assert run([str(ROOT / "pyproject.toml"), "rendrer"]) == 1
    bad = tmp_path / "pyproject.toml"
    bad.write_text(
        '[project]\nname = "ghibli-anim"\ndependencies = []\n'
        '[project.optional-dependencies]\nx = ["ghibli-anim[y]>=1"]\ny = []\n'
    )
    assert run([str(bad), "x"]) == 1
    assert run([str(bad)]) == 2


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


def test_cuda_by_default_cpu_on_request_and_cpu_for_depth(stages: dict) -> None:
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://pypi.org/simple" in text
    assert "ARG DEPTH_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+\n", text)
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"TORCH_VERSION := (\S+)", makefile)
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}\n" in text
    # The renderer and trainer share one torch layer; depth has its own, CPU one.
    index = {}
    for target in ("renderer", "trainer", "depth"):
        stage = torch_stage(stages, target)
        (run,) = [line for line in stages[stage]["lines"] if line.startswith("RUN")]
        index[target] = re.search(r'--index-url "\$\{(\w+)\}"', run).group(1)
    assert index == {
        "renderer": "TORCH_INDEX_URL",
        "trainer": "TORCH_INDEX_URL",
        "depth": "DEPTH_TORCH_INDEX_URL",
    }
    assert torch_stage(stages, "renderer") == torch_stage(stages, "trainer")


def test_build_context_leaves_out_everything_but_the_package() -> None:
    text = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()
    patterns = [p for p in text.splitlines() if p.strip() and not p.startswith("#")]
    # Everything is left out, then only these come back.
    assert patterns[:5] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!ghibli_anim/",
        "!deploy/docker/requirements.py",
    ]
    assert not [p for p in patterns[5:] if p.startswith("!")]
    sources = [
        line
        for stage in dockerfile_stages().values()
        for line in stage["lines"]
        if line.startswith("COPY") and "--from" not in line
    ]
    assert sources == [
        "COPY pyproject.toml deploy/docker/requirements.py ./",
        "COPY pyproject.toml README.md /src/",
        "COPY ghibli_anim /src/ghibli_anim",
    ]
