"""Reading the deployment files the way their tools do: kustomize output, the
compose file with compose's variable interpolation, the Dockerfile's stages, and
the NATS users. Shared by the tests in tests/deploy/."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "gpu")
KUSTOMIZATIONS = ("base", *(f"overlays/{name}" for name in OVERLAYS))
"""The always-applied kustomizations (``kubectl apply -k`` on every install and upgrade)."""
ONE_OFF = {"dev": ("overlays/dev/jobs",), "gpu": ("overlays/gpu/jobs", "overlays/gpu/trainer")}
"""Each overlay's kustomizations of Jobs, applied apart (deploy/k8s/run-jobs.sh, the trainer)."""
ALL_KUSTOMIZATIONS = (
    *KUSTOMIZATIONS,
    "jobs",
    "trainer",
    *(path for paths in ONE_OFF.values() for path in paths),
)
"""Everything a user may build: the always-applied sets, the Jobs' bases and overlays."""
GPU_COMPONENTS = ("minio", "tls")
"""The gpu overlay's optional components (deploy/k8s/components/NAME), enabled by listing
them in overlays/gpu/common/kustomization.yaml (deploy/README.md)."""
GPU_COMMON = "overlays/gpu/common/kustomization.yaml"
RUN_JOBS = K8S / "run-jobs.sh"
INIT_SELECTOR = ("app.kubernetes.io/component", "init")
"""The label run-jobs.sh deletes, applies and waits for."""
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
AUTH_CONF = DEPLOY / "nats" / "auth.conf"
NATS_CONF = DEPLOY / "nats" / "nats.conf"
HELM = DEPLOY / "helm"
SCHEMAS = ROOT / "tests" / "deploy" / "schemas"

SECRET_NAME = "ghibli-anim"
"""The Secret every workload reads its secrets from (created out of band)."""


def venv_tool(name: str) -> str:
    """A console script installed next to this interpreter (the pinned test tools)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: not installed; pip install -e '.[dev]'")
    return found


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


# --------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------


def with_components(dest: Path, components: Sequence[str]) -> Path:
    """A copy of deploy/ under ``dest`` with ``components`` listed in the gpu overlay's
    common/ as deploy/README.md says to; returns the copy's k8s folder."""
    unknown = set(components) - set(GPU_COMPONENTS)
    if unknown:
        raise ValueError(f"components: must be among {', '.join(GPU_COMPONENTS)}, got {unknown}")
    copy = dest / "deploy"
    shutil.copytree(DEPLOY, copy)
    common = copy / "k8s" / GPU_COMMON
    text = common.read_text()
    anchor = "\nnamespace: ghibli-anim\n"
    assert anchor in text, f"{GPU_COMMON}: no place to list components"
    listed = "".join(f"  - ../../../components/{name}\n" for name in components)
    common.write_text(text.replace(anchor, f"{anchor}\ncomponents:\n{listed}", 1))
    return copy / "k8s"


@functools.cache
def _k8s_with(components: tuple[str, ...]) -> Path:
    if not components:
        return K8S
    dest = Path(tempfile.mkdtemp(prefix="k8s-components-"))
    atexit.register(shutil.rmtree, dest, True)
    return with_components(dest, components)


@functools.cache
def kustomize(path: str, components: tuple[str, ...] = ()) -> str:
    """``kubectl kustomize deploy/k8s/<path>`` (the YAML stream), with the gpu overlay's
    optional ``components`` enabled."""
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(_k8s_with(components) / path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} {components} failed:\n{result.stderr}")
    return result.stdout


def objects(path: str, components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kustomize(path, components)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: found {len(matches)}"
    return matches[0]


def overlay_objects(overlay: str, components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Everything an overlay deploys: its always-applied set and its Jobs' kustomizations
    (the ConfigMap they share appears once)."""
    docs = objects(f"overlays/{overlay}", components)
    seen = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for path in ONE_OFF[overlay]:
        for doc in objects(path, components):
            if (doc["kind"], doc["metadata"]["name"]) not in seen:
                seen.add((doc["kind"], doc["metadata"]["name"]))
                docs.append(doc)
    return docs


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet")


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template: metadata and spec) of every workload (CronJobs included)."""
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in WORKLOAD_KINDS:
            yield where, doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield where, doc["spec"]["jobTemplate"]["spec"]["template"]
        elif doc["kind"] == "Pod":
            yield where, {"metadata": doc["metadata"], "spec": doc["spec"]}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    for where, template in pod_templates(docs):
        yield where, template["spec"]


def config_map_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """Data of the ConfigMap generated as ``name`` (kustomize adds a hash suffix)."""
    found = [
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and (d["metadata"]["name"] == name or d["metadata"]["name"].startswith(f"{name}-"))
    ]
    assert len(found) == 1, f"ConfigMap {name}: found {len(found)}"
    return found[0].get("data", {})


def container_env(
    docs: list[dict[str, Any]], container: dict[str, Any], secrets: Mapping[str, str]
) -> dict[str, str]:
    """The environment a container starts with: envFrom ConfigMaps, then env (which
    wins); secretKeyRef values come from ``secrets`` (keys of the Secret)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(next(d for d in docs if d["metadata"]["name"] == ref)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]["key"]
            if key in secrets:
                env[var["name"]] = secrets[key]
            elif not ref["secretKeyRef"].get("optional"):
                raise AssertionError(f"{var['name']}: Secret key {key} has no value")
        elif "configMapKeyRef" in ref:
            cm = next(d for d in docs if d["metadata"]["name"] == ref["configMapKeyRef"]["name"])
            env[var["name"]] = cm["data"][ref["configMapKeyRef"]["key"]]
    return env


# --------------------------------------------------------------------------
# docker compose
# --------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(KeyError):
    """A ``${VAR:?message}`` whose variable is unset (compose refuses to run)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}`` and ``$$`` for ``$``."""

    def replace(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["plain"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-") and unset:
            return interpolate(arg, env)
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def compose_raw() -> dict[str, Any]:
    """The compose file as YAML (anchors and merge keys resolved, variables not)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    """KEY=VALUE lines of .env.example."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def make_env_module() -> ModuleType:
    """deploy/make_env.py, imported from its path (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("make_env", DEPLOY / "make_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def k8s_secrets_module() -> ModuleType:
    """deploy/k8s/secrets.py, imported from its path (a script)."""
    spec = importlib.util.spec_from_file_location("k8s_secrets", K8S / "secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLIENT_TOKEN = "web-token-0123456789abcdef"
"""The web page's token in the tests' .env (make .env leaves ANIM_CLIENT_TOKEN to you)."""


def kubernetes_secrets(overlay: str) -> dict[str, dict[str, str]]:
    """name -> data of the Secrets deploy/k8s/secrets.py makes from a filled .env."""
    env = {**filled_env(), "ANIM_CLIENT_TOKEN": CLIENT_TOKEN}
    return {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in k8s_secrets_module().secrets(overlay, env)
    }


def filled_env() -> dict[str, str]:
    """.env.example with every secret filled in, as `make .env` writes it."""
    text = make_env_module().fill(ENV_EXAMPLE.read_text())
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose sees it with ``env`` (default: a filled .env)."""
    return interpolate_tree(compose_raw(), filled_env() if env is None else env)


def active_services(doc: dict[str, Any], profiles: set[str]) -> dict[str, dict[str, Any]]:
    """Services that `docker compose up` starts with these profiles."""
    return {
        name: svc
        for name, svc in doc["services"].items()
        if not svc.get("profiles") or set(svc["profiles"]) & profiles
    }


def service_environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# --------------------------------------------------------------------------
# Dockerfile and NATS users
# --------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Stage name -> {"from": base, "lines": [instructions]} (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif word == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert m, f"FROM without a stage name: {line}"
            base = re.sub(r"\$\{(\w+)\}", lambda a: args[a.group(1)], m.group(1))
            current = {"from": base, "lines": []}
            stages[m.group(2)] = current
        elif current is not None:
            current["lines"].append(line)
    return stages


def stage_lineage(stages: dict[str, dict[str, Any]], name: str) -> list[str]:
    """``name`` and the stages it is built FROM, nearest first."""
    chain = [name]
    while stages[chain[-1]]["from"] in stages:
        chain.append(stages[chain[-1]]["from"])
    return chain


def nats_users() -> dict[str, str]:
    """user -> the environment variable holding its password, from auth.conf."""
    text = AUTH_CONF.read_text()
    pairs = re.findall(r"user:\s*([\w-]+)\s*\n\s*password:\s*\$(\w+)", text)
    return dict(pairs)
