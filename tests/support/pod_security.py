"""The Pod Security Standards, as the PodSecurity admission controller checks a pod.

Written from the controls of https://kubernetes.io/docs/concepts/security/pod-security-standards/
and their implementation (k8s.io/pod-security-admission, policy/check_*.go), at their
latest version. ``violations(template, level)`` returns one line per broken control
(empty: the namespace's admission accepts the pod). ``privileged`` accepts everything,
``restricted`` adds its controls to ``baseline``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

LEVELS = ("privileged", "baseline", "restricted")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

# Baseline: capabilities a container may add (the container runtimes' default set).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_slow_start_after_idle",
        "net.ipv4.tcp_notsent_lowat",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
# Restricted: the only inline volume sources allowed (anything else, hostPath included, is not).
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
RESTRICTED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})


def containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name')}]", container


def violations(template: dict[str, Any], level: str) -> list[str]:
    """What a pod template (``metadata`` and ``spec``) breaks of ``level``."""
    if level not in LEVELS:
        raise ValueError(f"level: must be one of {', '.join(LEVELS)}, got {level!r}")
    if level == "privileged":
        return []
    found = _baseline(template)
    if level == "restricted":
        found += _restricted(template["spec"])
    return found


def _baseline(template: dict[str, Any]) -> list[str]:
    spec = template["spec"]
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    pod_ctx = spec.get("securityContext") or {}
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"host namespaces: spec.{field} must be false")
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        found.append("HostProcess: spec.securityContext.windowsOptions.hostProcess")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"hostPath volumes: volume {volume.get('name')}")
    for name, value in annotations.items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: annotation {name}={value}")
    found += _apparmor("spec.securityContext", pod_ctx)
    found += _selinux("spec.securityContext", pod_ctx)
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("seccomp: spec.securityContext.seccompProfile.type must not be Unconfined")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctls: {sysctl.get('name')} is not a safe sysctl")
    for where, container in containers(spec):
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            found.append(f"privileged: {where}")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where}")
        added = set((ctx.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"capabilities: {where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"host ports: {where} hostPort {port['hostPort']}")
        found += _apparmor(where, ctx)
        found += _selinux(where, ctx)
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"/proc mount: {where} procMount {ctx['procMount']}")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"seccomp: {where} must not be Unconfined")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            for handler in ("httpGet", "tcpSocket"):
                if ((container.get(probe) or {}).get(handler) or {}).get("host"):
                    found.append(f"probe host: {where} {probe}.{handler}.host")
        for hook in ("postStart", "preStop"):
            for handler in ("httpGet", "tcpSocket"):
                if (((container.get("lifecycle") or {}).get(hook) or {}).get(handler) or {}).get(
                    "host"
                ):
                    found.append(f"lifecycle host: {where} {hook}.{handler}.host")
    return found


def _apparmor(where: str, ctx: dict[str, Any]) -> list[str]:
    kind = (ctx.get("appArmorProfile") or {}).get("type")
    if kind not in (None, "RuntimeDefault", "Localhost"):
        return [f"AppArmor: {where}.appArmorProfile.type {kind}"]
    return []


def _selinux(where: str, ctx: dict[str, Any]) -> list[str]:
    options = ctx.get("seLinuxOptions") or {}
    found = []
    if options.get("type", "") not in SELINUX_TYPES:
        found.append(f"SELinux: {where} type {options['type']}")
    if options.get("user") or options.get("role"):
        found.append(f"SELinux: {where} sets a user or role")
    return found


def _restricted(spec: dict[str, Any]) -> list[str]:
    pod_ctx = spec.get("securityContext") or {}
    user_namespace = spec.get("hostUsers") is False
    found = []
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUMES:
            found.append(f"volume types: volume {volume.get('name')} is {sorted(sources)}")
    if pod_ctx.get("runAsUser") == 0 and not user_namespace:
        found.append("runAsUser: spec.securityContext.runAsUser must not be 0")
    if pod_ctx.get("runAsNonRoot") is False and not user_namespace:
        found.append("runAsNonRoot: spec.securityContext.runAsNonRoot must not be false")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in RESTRICTED_SECCOMP:
        found.append(f"seccomp: spec.securityContext.seccompProfile.type {pod_seccomp}")
    for where, container in containers(spec):
        ctx = container.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"allowPrivilegeEscalation: {where} must set it to false")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"capabilities: {where} must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"capabilities: {where} may add only NET_BIND_SERVICE")
        if not user_namespace:
            non_root = ctx.get("runAsNonRoot")
            if non_root is False or (non_root is None and pod_ctx.get("runAsNonRoot") is not True):
                found.append(f"runAsNonRoot: {where} (or the pod) must set it to true")
            if ctx.get("runAsUser") == 0:
                found.append(f"runAsUser: {where} must not be 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is None and pod_seccomp is None:
            found.append(f"seccomp: {where} (or the pod) must set RuntimeDefault or Localhost")
        elif seccomp is not None and seccomp not in RESTRICTED_SECCOMP:
            found.append(f"seccomp: {where} seccompProfile.type {seccomp}")
    return found
