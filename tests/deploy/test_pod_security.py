"""Every pod we deploy meets the Pod Security Standard its namespace enforces.

Our pods: every pod template (Deployments, StatefulSets, Jobs...) that every
kustomization of each overlay renders (the gpu overlay also with its optional
components), against the ``enforce`` level of the Namespace the overlay creates. The
charts' pods (NATS, SeaweedFS or MinIO, installed into the gpu overlay's namespace, with
and without their TLS values): Helm cannot run here, so they come from a model of each
chart's templates at the pinned version (tests/support/charts.py) fed with our values
files.
The checker itself (tests/support/pod_security.py) is checked on pods that break one
control each.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from support import charts
from support.deploy import GPU_COMPONENTS, HELM, ONE_OFF, OVERLAYS, find, objects, pod_templates
from support.pod_security import ENFORCE_LABEL, violations

pytestmark = pytest.mark.timeout(120)


def namespace_level(overlay: str) -> tuple[str, str]:
    (namespace,) = [d for d in objects(f"overlays/{overlay}") if d["kind"] == "Namespace"]
    labels = namespace["metadata"].get("labels", {})
    return namespace["metadata"]["name"], labels.get(ENFORCE_LABEL, "privileged")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespaces_enforce_restricted(overlay: str) -> None:
    assert namespace_level(overlay)[1] == "restricted"


@pytest.mark.parametrize(
    ("overlay", "path", "components"),
    [(o, p, ()) for o in OVERLAYS for p in (f"overlays/{o}", *ONE_OFF[o])]
    + [
        ("gpu", p, (component,))
        for component in GPU_COMPONENTS
        for p in ("overlays/gpu", *ONE_OFF["gpu"])
    ],
)
def test_every_pod_we_render_meets_its_namespaces_standard(
    overlay: str, path: str, components: tuple[str, ...]
) -> None:
    namespace, level = namespace_level(overlay)
    docs = objects(path, components)
    templates = list(pod_templates(docs))
    assert templates, f"{path}: no pod template"
    for where, template in templates:
        kind, name = where.split("/")
        assert find(docs, kind, name)["metadata"]["namespace"] == namespace, where
        assert violations(template, level) == [], f"{path} {where}"


def test_the_base_pods_meet_restricted_wherever_they_go() -> None:
    for path in ("base", "jobs", "trainer"):
        for where, template in pod_templates(objects(path)):
            assert violations(template, "restricted") == [], f"{path} {where}"


def helm_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((HELM / name).read_text())


@pytest.mark.parametrize("name", sorted(charts.CHART_PODS))
def test_the_charts_pods_meet_restricted(name: str) -> None:
    """The gpu overlay's README installs the charts into its namespace."""
    version = re.search(r"^#\s+version:\s*(\S+)$", (HELM / name).read_text(), re.M)
    assert version and version.group(1) == charts.VERSIONS[name], (
        f"{name} pins another chart version than the one tests/support/charts.py models"
    )
    _, level = namespace_level("gpu")
    pods = charts.CHART_PODS[name](helm_values(name))
    assert pods
    for where, template in pods:
        assert violations(template, level) == [], f"{name} {where}"


@pytest.mark.parametrize("name", sorted(charts.TLS_VALUES))
def test_the_charts_pods_with_their_tls_values_meet_restricted(name: str) -> None:
    """`helm ... -f VALUES -f VALUES-tls` (deploy/README.md "Security"): the certificate
    volumes and the chart's own TLS settings keep the pods within the standard."""
    _, level = namespace_level("gpu")
    plain = charts.CHART_PODS[name](helm_values(name))
    values = charts.helm_values(helm_values(name), helm_values(charts.TLS_VALUES[name]))
    pods = charts.CHART_PODS[name](values)
    assert pods != plain, f"{charts.TLS_VALUES[name]} changes no pod"
    for where, template in pods:
        assert violations(template, level) == [], f"{charts.TLS_VALUES[name]} {where}"


@pytest.mark.parametrize(
    ("name", "damage", "control"),
    [
        # Without our security contexts, each chart's defaults are refused.
        ("nats-values.yaml", lambda v: v.pop("podTemplate"), "runAsNonRoot"),
        ("nats-values.yaml", lambda v: v["reloader"].pop("merge"), "allowPrivilegeEscalation"),
        ("nats-values.yaml", lambda v: v["natsBox"].update(enabled=True), "capabilities"),
        ("minio-values.yaml", lambda v: v.pop("containerSecurityContext"), "capabilities"),
        (
            "minio-values.yaml",
            lambda v: v["postJob"]["securityContext"].update(enabled=False),
            "seccomp",
        ),
        (
            "minio-values.yaml",
            lambda v: v["makeUserJob"]["securityContext"].update(enabled=False),
            "capabilities",
        ),
        ("seaweedfs-values.yaml", lambda v: v["s3"].pop("logs"), "hostPath"),
        (
            "seaweedfs-values.yaml",
            lambda v: v["master"].update(logs={"type": "hostPath"}),
            "hostPath",
        ),
        (
            "seaweedfs-values.yaml",
            lambda v: v["volume"].pop("resizeHook"),
            "allowPrivilegeEscalation",
        ),
        ("seaweedfs-values.yaml", lambda v: v["filer"].pop("podSecurityContext"), "seccomp"),
    ],
)
def test_the_chart_model_catches_missing_settings(
    name: str, damage: Callable, control: str
) -> None:
    values = helm_values(name)
    damage(values)
    found = [
        line for _, t in charts.CHART_PODS[name](values) for line in violations(t, "restricted")
    ]
    assert any(control in line for line in found), found


def compliant() -> dict[str, Any]:
    """A pod template that meets restricted (the renderer's, as the gpu overlay renders it)."""
    docs = objects("overlays/gpu")
    return copy.deepcopy(find(docs, "Deployment", "renderer")["spec"]["template"])


def container(t: dict[str, Any]) -> dict[str, Any]:
    return t["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("damage", "control"),
    [
        (lambda t: t["spec"].update(hostNetwork=True), "host namespaces"),
        (lambda t: t["spec"].update(hostPID=True), "host namespaces"),
        (
            lambda t: t["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            "hostPath",
        ),
        (
            lambda t: t["spec"]["volumes"].append(
                {"name": "n", "nfs": {"server": "x", "path": "/"}}
            ),
            "volume types",
        ),
        (lambda t: container(t)["securityContext"].update(privileged=True), "privileged"),
        (
            lambda t: container(t)["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation",
        ),
        (
            lambda t: container(t)["securityContext"]["capabilities"].update(drop=[]),
            "must drop ALL",
        ),
        (
            lambda t: container(t)["securityContext"]["capabilities"].update(add=["NET_RAW"]),
            "capabilities",
        ),
        (
            lambda t: container(t)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "adds",
        ),
        (lambda t: t["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda t: container(t)["securityContext"].update(runAsUser=0), "runAsUser"),
        (lambda t: t["spec"]["securityContext"].pop("seccompProfile"), "seccomp"),
        (
            lambda t: container(t)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            "seccomp",
        ),
        (lambda t: container(t)["ports"][0].update(hostPort=50053), "host ports"),
        (lambda t: container(t)["securityContext"].update(procMount="Unmasked"), "/proc mount"),
        (
            lambda t: t["spec"]["securityContext"].update(
                sysctls=[{"name": "kernel.msgmax", "value": "1"}]
            ),
            "sysctls",
        ),
        (
            lambda t: container(t)["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
            "SELinux",
        ),
        (
            lambda t: container(t)["securityContext"].update(
                appArmorProfile={"type": "Unconfined"}
            ),
            "AppArmor",
        ),
        (
            lambda t: (
                container(t)["readinessProbe"]["grpc"].update(port=1)
                or container(t).update(
                    livenessProbe={"httpGet": {"host": "10.0.0.1", "path": "/", "port": 80}}
                )
            ),
            "probe host",
        ),
        (
            lambda t: t["spec"].setdefault("initContainers", []).append({"name": "init"}),
            "initContainers[init]",
        ),
    ],
)
def test_the_checker_catches_each_broken_control(damage: Callable, control: str) -> None:
    template = compliant()
    assert violations(template, "restricted") == []
    damage(template)
    found = violations(template, "restricted")
    assert any(control in line for line in found), found


def test_levels_are_cumulative() -> None:
    template = compliant()
    template["spec"]["securityContext"].pop("runAsNonRoot")  # restricted only
    assert violations(template, "baseline") == []
    assert violations(template, "restricted")
    template["spec"]["hostNetwork"] = True  # baseline too
    assert violations(template, "baseline")
    assert violations(template, "privileged") == []
    with pytest.raises(ValueError, match="level: must be one of privileged, baseline, restricted"):
        violations(template, "strict")
