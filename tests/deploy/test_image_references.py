"""Every image the deployment pulls is one that was checked to be published.

deploy/docker/images.toml lists the third-party images with where each was
checked; this module finds every image reference in deploy/docker/Dockerfile,
docker-compose.yml, the Kubernetes manifests (as written, and as kustomize renders
each overlay) and the Helm values, and fails on one that is not listed. Images
this repository builds (``ghibli-anim/*``) must be Dockerfile targets at the
project's version (``-cpu``: built with CPU torch, as compose builds it).
"""

from __future__ import annotations

import datetime
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.deploy import (
    ALL_KUSTOMIZATIONS,
    DEPLOY,
    DOCKERFILE,
    HELM,
    K8S,
    ROOT,
    compose,
    dockerfile_stages,
    objects,
    project_version,
    stage_lineage,
)

pytestmark = pytest.mark.timeout(180)

IMAGES_TOML = DOCKERFILE.parent / "images.toml"
OWN = "ghibli-anim/"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

Reference = tuple[str, str]
"""(where it is written, the image reference)."""


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def listed() -> dict[str, dict[str, Any]]:
    with IMAGES_TOML.open("rb") as f:
        entries = tomllib.load(f)["image"]
    by_image = {entry["image"]: entry for entry in entries}
    assert len(by_image) == len(entries), "an image is listed twice"
    return by_image


# --------------------------------------------------------------------------
# Finding references
# --------------------------------------------------------------------------


def image_values(node: Any, path: str = "") -> Iterator[Reference]:
    """Image references in a parsed YAML document: a string under a key named
    ``image`` (pod specs, the charts' ``fullImageName``), and a mapping with
    ``repository`` and ``tag`` (the charts' ``image:``, ``mcImage:`` ...)."""
    if isinstance(node, dict):
        if isinstance(node.get("repository"), str) and node.get("tag") is not None:
            registry = node.get("registry")
            name = f"{registry}/{node['repository']}" if registry else node["repository"]
            yield path, f"{name}:{node['tag']}"
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in ("image", "fullImageName") and isinstance(value, str) and value:
                yield where, value
            else:
                yield from image_values(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from image_values(item, f"{path}[{i}]")


def kustomize_images(doc: dict[str, Any]) -> Iterator[Reference]:
    """The ``images:`` of a kustomization: each names the image its containers get."""
    for i, entry in enumerate(doc.get("images", [])):
        if "newTag" in entry or "digest" in entry:
            name = entry.get("newName", entry["name"])
            tag = f"@{entry['digest']}" if "digest" in entry else f":{entry['newTag']}"
            yield f"images[{i}]", f"{name}{tag}"


def dockerfile_references() -> Iterator[Reference]:
    stages = dockerfile_stages()
    for name, stage in stages.items():
        if stage["from"] not in stages:
            yield f"{rel(DOCKERFILE)}: FROM of stage {name}", stage["from"]
        for line in stage["lines"]:
            m = re.match(r"COPY\s+--from=(\S+)", line)
            if m and m.group(1) not in stages:
                yield f"{rel(DOCKERFILE)}: COPY in stage {name}", m.group(1)


def compose_references() -> Iterator[Reference]:
    # As compose sees it with .env.example's values (every ${VAR:-default} resolved).
    for name, svc in compose()["services"].items():
        if "image" in svc:
            yield f"docker-compose.yml: services.{name}.image", svc["image"]


def yaml_files() -> list[Path]:
    return sorted({*K8S.rglob("*.yaml"), *K8S.rglob("*.yml"), *(DEPLOY / "nats").glob("*.yaml")})


def kubernetes_references() -> Iterator[Reference]:
    for path in yaml_files():
        for n, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            for where, image in image_values(doc):
                yield f"{rel(path)} (document {n}): {where}", image
            if path.name == "kustomization.yaml":
                for where, image in kustomize_images(doc):
                    yield f"{rel(path)}: {where}", image
    # As rendered: what kubectl apply -k sends, patches and image overrides applied.
    for kustomization in ALL_KUSTOMIZATIONS:
        for doc in objects(kustomization):
            kind_name = f"{doc['kind']}/{doc['metadata']['name']}"
            for where, image in image_values(doc):
                yield f"kubectl kustomize deploy/k8s/{kustomization}: {kind_name} {where}", image


def helm_references() -> Iterator[Reference]:
    for path in sorted(HELM.glob("*-values.yaml")):
        for where, image in image_values(yaml.safe_load(path.read_text()) or {}):
            yield f"{rel(path)}: {where}", image


def references() -> list[Reference]:
    return [
        *dockerfile_references(),
        *compose_references(),
        *kubernetes_references(),
        *helm_references(),
    ]


# --------------------------------------------------------------------------
# Checking them
# --------------------------------------------------------------------------


def own_images() -> set[str]:
    """What ghibli-anim/* may name: a Dockerfile target at the project's version, and
    the CPU-torch variants that compose builds (``-cpu``)."""
    stages = dockerfile_stages()
    targets = {n for n in stages if n != "runtime" and "runtime" in stage_lineage(stages, n)}
    version = project_version()
    allowed = {f"{OWN}{target}:{version}" for target in targets}
    for svc in compose()["services"].values():
        build = svc.get("build", {})
        if build.get("args", {}).get("TORCH_INDEX_URL") == CPU_INDEX:
            assert svc["image"] == f"{OWN}{build['target']}:{version}-cpu", svc["image"]
            allowed.add(svc["image"])
    return allowed


def problems(refs: list[Reference], known: set[str], own: set[str]) -> list[str]:
    """One message per reference that is neither listed nor built here."""
    out = []
    for where, image in refs:
        if image.startswith(OWN):
            if image not in own:
                out.append(
                    f"{where}: {image} is not built here: the images of this repository are "
                    f"{OWN}<deploy/docker/Dockerfile target>:{project_version()} (and the "
                    "-cpu variants docker-compose.yml builds)"
                )
        elif image not in known:
            out.append(
                f"{where}: {image} is not in {rel(IMAGES_TOML)}; check that this tag is "
                "published (the registry's tag page, or the release notes that say the "
                "image was pushed) and add it there with both addresses"
            )
    return out


@pytest.fixture(scope="module")
def refs() -> list[Reference]:
    return references()


def test_every_image_reference_is_listed_or_built_here(refs: list[Reference]) -> None:
    found = problems(refs, set(listed()), own_images())
    assert not found, "\n".join(found)


def test_every_kind_of_file_is_searched(refs: list[Reference]) -> None:
    wheres = [where for where, _ in refs]
    for prefix in (
        "deploy/docker/Dockerfile: FROM",
        "docker-compose.yml: services.",
        "deploy/k8s/base/",
        "deploy/k8s/overlays/dev/s3.yaml",
        "deploy/k8s/overlays/gpu/common/kustomization.yaml: images",
        "kubectl kustomize deploy/k8s/overlays/gpu",
        "kubectl kustomize deploy/k8s/overlays/gpu/jobs",
        "deploy/helm/nats-values.yaml: container.image",
        "deploy/helm/minio-values.yaml: mcImage",
    ):
        assert any(w.startswith(prefix) for w in wheres), prefix


def test_an_unlisted_or_unbuilt_image_fails_with_where_to_add_it(refs: list[Reference]) -> None:
    known, own = set(listed()), own_images()
    assert problems([("docker-compose.yml: services.nats.image", "nats:2.99.0-alpine")], known, own)
    (message,) = problems(
        [("x.yaml: image", "quay.io/minio/minio:RELEASE.2025-10-15T17-29-55Z")], known, own
    )
    assert message.startswith("x.yaml: image: quay.io/minio/minio:RELEASE.2025-10-15T17-29-55Z")
    assert "deploy/docker/images.toml" in message
    (message,) = problems([("y.yaml: image", "ghibli-anim/planner:0.1.0-cpu")], known, own)
    assert "not built here" in message
    # The rendered manifests count too: an overlay's override is caught after kustomize.
    assert any(w.startswith("kubectl kustomize") and i.startswith(OWN) for w, i in refs)


def test_the_finders_read_each_way_an_image_is_written() -> None:
    doc = {
        "container": {"image": {"repository": "nats", "tag": "2.14.2-alpine"}},
        "reloader": {"image": {"registry": "docker.io", "repository": "natsio/r", "tag": 1}},
        "spec": {"containers": [{"name": "a", "image": "busybox:1.37.0"}]},
        "box": {"fullImageName": "natsio/nats-box:0.19.7"},
        "empty": {"image": ""},
    }
    assert sorted(image for _, image in image_values(doc)) == [
        "busybox:1.37.0",
        "docker.io/natsio/r:1",
        "nats:2.14.2-alpine",
        "natsio/nats-box:0.19.7",
    ]
    kustomization = {
        "images": [
            {"name": "ghibli-anim/planner", "newTag": "0.1.0"},
            {"name": "ghibli-anim/depth", "newName": "registry.example/depth", "newTag": "2"},
            {"name": "only-renamed", "newName": "elsewhere/x"},
        ]
    }
    assert [i for _, i in kustomize_images(kustomization)] == [
        "ghibli-anim/planner:0.1.0",
        "registry.example/depth:2",
    ]


def test_each_listed_image_is_pinned_sourced_and_still_used(refs: list[Reference]) -> None:
    used = {image for _, image in refs}
    for image, entry in listed().items():
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{image}: an exact tag"
        assert re.search(r"\d", tag), f"{image}: a release tag, not a moving name"
        for key in ("registry", "release"):
            assert entry[key].startswith("https://"), f"{image}: {key}"
        assert isinstance(entry["checked"], datetime.date), f"{image}: checked = YYYY-MM-DD"
        assert entry["used"], image
        assert image in used, f"{image} is listed but nothing uses it: remove it"


def test_minio_is_the_last_published_image_and_says_what_it_lacks() -> None:
    (minio,) = [e for i, e in listed().items() if i.startswith("quay.io/minio/minio:")]
    assert minio["image"].endswith(":RELEASE.2025-09-07T16-13-09Z")
    assert "CVE-2025-62506" in minio["note"] and "source only" in minio["note"]
    readme = (DEPLOY / "README.md").read_text()
    assert minio["image"] in readme and "CVE-2025-62506" in readme
    assert "RELEASE.2025-10-15T17-29-55Z" not in {i.split(":", 1)[1] for _, i in references()}
