"""NetworkPolicy semantics, to ask what a set of policies lets through.

https://kubernetes.io/docs/concepts/services-networking/network-policies/: a pod that no
policy selects for a direction is open in that direction; a selected pod accepts only
what some rule of a selecting policy allows; a connection needs the sender's egress and
the receiver's ingress. Peers: a podSelector alone means the policy's namespace, a
namespaceSelector matches namespace labels (kubernetes.io/metadata.name is set on every
namespace), both together mean pods of those namespaces; an ipBlock matches addresses
outside the cluster (here: endpoints that are not pods). Ports are numbers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels) or, with ``ip``, an address outside the cluster."""

    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    ip: str = ""


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not other.ip:
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address in ipaddress.ip_network(e)
            for e in block.get("except") or []
            if ipaddress.ip_network(e).version == address.version
        )
    if other.ip:
        return False
    namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], other.labels)
    return other.namespace == policy_namespace and selects(peer.get("podSelector"), other.labels)


def _ports_match(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == protocol and ("port" not in p or p["port"] == port)
        for p in ports
    )


def _types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _direction_allows(
    policies: list[dict[str, Any]],
    pod: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
    direction: str,
) -> bool:
    if pod.ip:  # outside the cluster: no policy applies
        return True
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in _types(p)
        and (p["spec"]["podSelector"] == {} or selects(p["spec"]["podSelector"], pod.labels))
    ]
    if not selecting:
        return True
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
            )
            if peer_ok and _ports_match(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port``."""
    return _direction_allows(policies, src, dst, port, protocol, "Egress") and _direction_allows(
        policies, dst, src, port, protocol, "Ingress"
    )
