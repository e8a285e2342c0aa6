"""The NetworkPolicies let through exactly the flows the architecture needs.

Every pod each overlay deploys (ours as rendered, the charts' as deploy/helm's values
make them, tests/support/charts.py; the gpu overlay with SeaweedFS, its default, and with
the minio component and MinIO's chart), the pods of the namespaces the policies name
(KEDA, the ingress controller, Prometheus, the cluster DNS), a pod of an unrelated
namespace and a few outside addresses: for every pair and every port the receiver
listens on, the policies' verdict (tests/support/network_policy.py) must be the
expected one. Rendering and strict validation of the policies are in test_kubernetes.py.
"""

from __future__ import annotations

import pytest
import yaml
from support import charts
from support.deploy import HELM, overlay_objects, pod_templates
from support.network_policy import Endpoint, allowed, selects

pytestmark = pytest.mark.timeout(120)

NAMESPACES = {"dev": "ghibli-anim-dev", "gpu": "ghibli-anim"}
NATS_CLIENTS = {"planner", "renderer", "depth", "assembler", "bus-init"}
S3_CLIENTS = {"planner", "renderer", "depth", "assembler", "trainer"}
SCRAPED = {"planner", "renderer", "depth", "assembler"}

KEDA = Endpoint("keda-operator", "keda", {"app": "keda-operator"})
INGRESS = Endpoint(
    "ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
)
PROMETHEUS = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
DNS = Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
STRANGER = Endpoint("stranger", "default", {"app.kubernetes.io/name": "planner"})
HUB = Endpoint("huggingface.co", ip="18.239.50.16")
METADATA = Endpoint("cloud-metadata", ip="169.254.169.254")
PRIVATE = Endpoint("private-host", ip="10.20.0.5")
OUTSIDERS = (KEDA, INGRESS, PROMETHEUS, DNS, STRANGER)
INTERNET_PORTS = (443, 80)

# Ports the chart pods listen on (their templates' containerPorts at the pinned versions;
# SeaweedFS's 9327 is the volume servers', filer's and gateways' metrics).
CHART_PORTS = {
    "StatefulSet/nats": {4222, 6222, 8222},
    "StatefulSet/minio": {9000, 9001},
    "Job/minio-post-job": set(),
    "StatefulSet/seaweedfs-master": {9333, 19333},
    "StatefulSet/seaweedfs-volume": {8080, 9327, 18080},
    "StatefulSet/seaweedfs-filer": {8888, 9327, 18888},
    "Deployment/seaweedfs-s3": {8333, 9327},
    "Job/seaweedfs-bucket-hook": set(),
}
VARIANTS = [("dev", ()), ("gpu", ()), ("gpu", ("minio",))]
"""(overlay, the gpu overlay's optional components): SeaweedFS, then MinIO."""


def installed_charts(components: tuple[str, ...]) -> tuple[str, ...]:
    """The charts deploy/README.md installs into the gpu overlay's namespace."""
    return (
        "nats-values.yaml",
        "minio-values.yaml" if "minio" in components else "seaweedfs-values.yaml",
    )


def cluster(
    overlay: str, components: tuple[str, ...] = ()
) -> tuple[list[dict], dict[Endpoint, set[int]]]:
    """The overlay's policies, and every pod in its namespace with the ports it listens on."""
    docs = overlay_objects(overlay, components)
    namespace = NAMESPACES[overlay]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods: dict[Endpoint, set[int]] = {}
    for where, template in pod_templates(docs):
        ports = {
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        }
        pods[Endpoint(where, namespace, template["metadata"]["labels"])] = ports
    if overlay == "gpu":
        for name in installed_charts(components):
            values = yaml.safe_load((HELM / name).read_text())
            for where, template in charts.CHART_PODS[name](values):
                declared = {
                    p["containerPort"]
                    for c in template["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                assert declared <= CHART_PORTS[where], where  # where the model knows them
                pods[Endpoint(where, namespace, template["metadata"]["labels"])] = CHART_PORTS[
                    where
                ]
    return policies, pods


def name(endpoint: Endpoint) -> str:
    return endpoint.labels.get("app.kubernetes.io/name", "")


def role(endpoint: Endpoint) -> str:
    return endpoint.labels.get("ghibli-anim/role", "")


def release(endpoint: Endpoint) -> str:
    labels = endpoint.labels
    if labels.get("release") == "minio":
        return "minio"
    return "seaweedfs" if labels.get("app.kubernetes.io/instance") == "seaweedfs" else ""


def expected(src: Endpoint, dst: Endpoint, port: int) -> bool:
    """The architecture's flows (deploy/README.md "Security")."""
    if dst == DNS:
        return port == 53
    if dst.ip:
        return name(src) in ("planner", "models-fetch") and dst is HUB and port == 443
    if release(src) and release(src) == release(dst):
        return True  # the store's own nodes among themselves
    if role(dst) == "nats":
        return (
            (port == 4222 and name(src) in NATS_CLIENTS and src.namespace == dst.namespace)
            or (port == 6222 and role(src) == "nats")
            or (port == 8222 and src is KEDA)
        )
    if role(dst) == "s3" and port in (9000, 8333):
        return (name(src) in S3_CLIENTS and src.namespace == dst.namespace) or src is INGRESS
    if name(dst) == "planner" and port == 50051:
        return (name(src) == "web" and src.namespace == dst.namespace) or src is INGRESS
    if name(dst) == "web" and port == 8080:
        return src in (INGRESS, PROMETHEUS)
    if name(dst) in SCRAPED and port == 9090:
        return src is PROMETHEUS
    return False


@pytest.mark.parametrize(("overlay", "components"), VARIANTS)
def test_exactly_the_architectures_flows_are_allowed(
    overlay: str, components: tuple[str, ...]
) -> None:
    policies, pods = cluster(overlay, components)
    assert policies
    wrong = []
    senders = [*pods, *OUTSIDERS]
    receivers = {**pods, DNS: {53}, HUB: set(INTERNET_PORTS), METADATA: {80, 443}, PRIVATE: {443}}
    for dst, ports in receivers.items():
        for port in ports:
            for src in senders:
                if src == dst or (src not in pods and dst not in pods):
                    continue  # other namespaces' traffic is their policies' business
                protocol = "UDP" if dst == DNS else "TCP"
                verdict = allowed(policies, src, dst, port, protocol)
                if verdict != expected(src, dst, port):
                    wrong.append(f"{src.name} -> {dst.name}:{port} allowed={verdict}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("overlay", "components"), VARIANTS)
def test_every_pod_is_under_default_deny_both_ways(
    overlay: str, components: tuple[str, ...]
) -> None:
    policies, pods = cluster(overlay, components)
    (deny,) = [p for p in policies if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for pod in pods:
        assert selects(deny["spec"]["podSelector"], pod.labels)


@pytest.mark.parametrize(("overlay", "components"), VARIANTS)
def test_the_servers_carry_the_roles_the_policies_name(
    overlay: str, components: tuple[str, ...]
) -> None:
    _, pods = cluster(overlay, components)
    roles = {role(p) for p in pods if role(p)}
    assert roles == {"nats", "s3"}
    assert [p.name for p in pods if role(p) == "nats"]
    assert [p.name for p in pods if role(p) == "s3"]


def test_without_the_policies_everything_would_pass() -> None:
    """The checker is not vacuous: with no policy, the flows the test forbids pass."""
    _, pods = cluster("gpu")
    renderer = next(p for p in pods if name(p) == "renderer")
    planner = next(p for p in pods if name(p) == "planner")
    assert allowed([], renderer, planner, 50051)
    assert allowed([], renderer, METADATA, 80)
