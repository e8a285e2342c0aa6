"""The pods the Helm charts of deploy/helm/ create from our values, as far as Pod Security
and NetworkPolicies care: containers, security contexts, volume sources, host fields, labels.

Helm cannot run here, so this models each chart's templates at the version its values
file pins, read from the chart's source (paths below): which values key becomes which
securityContext, which volume source each storage ``type`` renders, which optional pods
and containers appear. Helm's values are the chart's defaults (the keys the model reads,
copied from the chart's values.yaml) overridden by ours. A chart upgrade must re-read
these templates; the values files' pinned versions and this module's must agree
(tests/deploy/test_pod_security.py checks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import yaml

Template = dict[str, Any]
Pods = list[tuple[str, Template]]

VERSIONS = {
    "nats-values.yaml": "2.14.2",
    "minio-values.yaml": "5.4.0",
    "seaweedfs-values.yaml": "4.44.0",
}
RELEASES = {
    "nats-values.yaml": "nats",
    "minio-values.yaml": "minio",
    "seaweedfs-values.yaml": "seaweedfs",
}
"""The Helm release names deploy/README.md installs the charts under (they name the Services)."""
TLS_VALUES = {name: name.replace(".yaml", "-tls.yaml") for name in VERSIONS}
"""Each chart's TLS values, given after its values (``-f VALUES -f TLS_VALUES``)."""


def coalesce(defaults: Any, values: Any) -> Any:
    """Helm's merge of a chart's defaults with user values: maps deeply, anything else replaced."""
    if isinstance(defaults, dict) and isinstance(values, dict):
        out = copy.deepcopy(defaults)
        for key, value in values.items():
            out[key] = coalesce(out.get(key), value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(values)


merge_overwrite = coalesce
"""sprig's mergeOverwrite, as the NATS chart's ``merge`` keys use it: the same rule."""


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add, replace and remove (what our values' ``patch`` keys use)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        elif isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if op["op"] == "add":
                target.insert(index, copy.deepcopy(op["value"]))
            else:
                target[index] = copy.deepcopy(op["value"])
        else:
            target[last] = copy.deepcopy(op["value"])
    return doc


def _omit_enabled(ctx: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ctx.items() if k != "enabled"}


def helm_values(*layers: dict[str, Any]) -> dict[str, Any]:
    """Several ``-f`` values files as Helm merges them: each later one over the earlier."""
    out: dict[str, Any] = {}
    for layer in layers:
        out = coalesce(out, layer)
    return out


def fullname(release: str, chart: str) -> str:
    """The common ``CHART.fullname`` helper: the release name if it contains the chart's
    name, else RELEASE-CHART (both charts' _helpers.tpl; no fullnameOverride here)."""
    return (release if chart in release else f"{release}-{chart}")[:63].rstrip("-")


def _tpl_list(text: str, key: str) -> list[dict[str, Any]]:
    """A values key the chart renders with ``tpl``: YAML text of a list. Ours hold no
    template expressions (the model would have to evaluate them)."""
    if not text:
        return []
    if "{{" in text:
        raise NotImplementedError(f"{key}: template expressions are not modelled here")
    items = yaml.safe_load(text)
    assert isinstance(items, list), f"{key}: must be YAML text of a list"
    return items


# --------------------------------------------------------------------------
# nats/nats (nats-io/k8s: helm/charts/nats)
# --------------------------------------------------------------------------

NATS_DEFAULTS = {
    "container": {"merge": {}, "patch": []},
    "reloader": {"enabled": True, "merge": {}, "patch": []},
    "promExporter": {"enabled": False, "merge": {}, "patch": []},
    "podTemplate": {"merge": {}, "patch": []},
    "natsBox": {"enabled": True},
    "tlsCA": {"enabled": False},
    "config": {"nats": {"tls": {"enabled": False}}, "cluster": {"tls": {"enabled": False}}},
}


def nats_pods(values: dict[str, Any]) -> Pods:
    """files/stateful-set/{pod-template,nats-container,reloader-container}.yaml: each
    container is the chart's document with ``merge`` (mergeOverwrite) then ``patch``
    applied, and so is the pod template; the chart sets no security context itself."""
    v = coalesce(NATS_DEFAULTS, values)

    def load(doc: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
        return json_patch(
            merge_overwrite(doc, section.get("merge") or {}), section.get("patch") or []
        )

    nats = {
        "name": "nats",
        "ports": [
            {"name": "nats", "containerPort": 4222},
            {"name": "monitor", "containerPort": 8222},
        ],
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "monitor"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/nats-config"},
            {"name": "pid", "mountPath": "/var/run/nats"},
        ],
    }
    containers = [load(nats, v["container"])]
    if v["reloader"]["enabled"]:
        reloader = {
            "name": "reloader",
            "volumeMounts": [{"name": "pid", "mountPath": "/var/run/nats"}],
        }
        containers.append(load(reloader, v["reloader"]))
    if v["promExporter"]["enabled"]:
        containers.append(load({"name": "prom-exporter"}, v["promExporter"]))
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": "nats-config"}},
        {"name": "pid", "emptyDir": {}},
    ]
    if v["tlsCA"]["enabled"]:
        volumes.append({"name": "tls-ca", "secret": {"secretName": v["tlsCA"].get("secretName")}})
    for protocol, settings in v["config"].items():
        if isinstance(settings, dict) and (settings.get("tls") or {}).get("enabled"):
            volumes.append(
                {"name": f"{protocol}-tls", "secret": {"secretName": settings["tls"]["secretName"]}}
            )
    template = {
        "metadata": {
            "labels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"}
        },
        "spec": {
            "containers": containers,
            "enableServiceLinks": False,
            "shareProcessNamespace": bool(v["reloader"]["enabled"]),
            "volumes": volumes,
            "terminationGracePeriodSeconds": 60,
        },
    }
    pods = [("StatefulSet/nats", load(template, v["podTemplate"]))]
    if v["natsBox"]["enabled"]:
        # files/nats-box/deployment: no security context unless merged in.
        pods.append(("Deployment/nats-box", {"spec": {"containers": [{"name": "nats-box"}]}}))
    return pods


# --------------------------------------------------------------------------
# minio/minio (minio/minio: helm/minio)
# --------------------------------------------------------------------------

MINIO_DEFAULTS = {
    "mode": "standalone",
    "persistence": {"enabled": True},
    "securityContext": {
        "enabled": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
    },
    "containerSecurityContext": {"readOnlyRootFilesystem": False},
    "podLabels": {},
    "tls": {"enabled": False},
    "extraVolumes": [],
    "buckets": [],
    "users": [],
    "policies": [],
    "customCommands": [],
    "svcaccts": [],
    "postJob": {
        "securityContext": {
            "enabled": False,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
        }
    },
    **{
        job: {"securityContext": {"enabled": False, "runAsUser": 1000, "runAsGroup": 1000}}
        for job in (
            "makePolicyJob",
            "makeUserJob",
            "makeBucketJob",
            "customCommandJob",
            "makeServiceAccountJob",
        )
    },
}


def minio_s3_service(values: dict[str, Any]) -> tuple[str, int]:
    """templates/service.yaml: the S3 API's Service, (name, port)."""
    port = (values.get("service") or {}).get("port", "9000")
    return fullname(RELEASES["minio-values.yaml"], "minio"), int(port)


def minio_pods(values: dict[str, Any]) -> Pods:
    """templates/statefulset.yaml (distributed) or deployment.yaml (standalone), and
    templates/post-job.yaml (buckets, policies, users...)."""
    v = coalesce(MINIO_DEFAULTS, values)
    secured = v["securityContext"]["enabled"] and v["persistence"]["enabled"]
    server: dict[str, Any] = {"name": "minio"}
    if secured and v["containerSecurityContext"]:
        server["securityContext"] = v["containerSecurityContext"]
    volumes: list[dict[str, Any]] = [{"name": "minio-user", "secret": {"secretName": "minio"}}]
    if v["tls"]["enabled"]:
        volumes.append(
            {"name": "cert-secret-volume", "secret": {"secretName": v["tls"]["certSecret"]}}
        )
    volumes += v["extraVolumes"]
    spec: dict[str, Any] = {"containers": [server], "volumes": volumes}
    if secured:
        spec["securityContext"] = _omit_enabled(v["securityContext"])
    labels = {"app": "minio", "release": "minio", **v["podLabels"]}
    kind = "StatefulSet" if v["mode"] == "distributed" else "Deployment"
    pods = [(f"{kind}/minio", {"metadata": {"labels": labels}, "spec": spec})]

    if not any(v[k] for k in ("buckets", "users", "policies", "customCommands", "svcaccts")):
        return pods

    def step(name: str, job: str) -> dict[str, Any]:
        container: dict[str, Any] = {"name": name}
        if v[job]["securityContext"]["enabled"] and v[job].get("containerSecurityContext"):
            container["securityContext"] = v[job]["containerSecurityContext"]
        return container

    job_spec: dict[str, Any] = {
        "volumes": [
            {"name": "etc-path", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "minio-configuration", "projected": {"sources": []}},
        ],
        "containers": [],
    }
    if v["tls"]["enabled"]:
        job_spec["volumes"].append(
            {"name": "cert-secret-volume-mc", "secret": {"secretName": v["tls"]["certSecret"]}}
        )
    if v["postJob"]["securityContext"]["enabled"]:
        job_spec["securityContext"] = _omit_enabled(v["postJob"]["securityContext"])
    if v["policies"]:
        job_spec["initContainers"] = [step("minio-make-policy", "makePolicyJob")]
    for key, name, job in (
        ("buckets", "minio-make-bucket", "makeBucketJob"),
        ("users", "minio-make-user", "makeUserJob"),
        ("customCommands", "minio-custom-command", "customCommandJob"),
        ("svcaccts", "minio-make-svcacct", "makeServiceAccountJob"),
    ):
        if v[key]:
            job_spec["containers"].append(step(name, job))
    job_labels = {"app": "minio-job", "release": "minio", **v["podLabels"]}
    pods.append(("Job/minio-post-job", {"metadata": {"labels": job_labels}, "spec": job_spec}))
    return pods


# --------------------------------------------------------------------------
# seaweedfs/seaweedfs (seaweedfs/seaweedfs: k8s/charts/seaweedfs)
# --------------------------------------------------------------------------

_HOST = {"type": "hostPath"}
SEAWEEDFS_DEFAULTS = {
    "master": {
        "enabled": True,
        "data": _HOST,
        "logs": _HOST,
        "podSecurityContext": {},
        "containerSecurityContext": {},
    },
    "volume": {
        "enabled": True,
        "dataDirs": [{"name": "data1", "type": "hostPath"}],
        "logs": {},
        "idx": {},
        "resizeHook": {"enabled": True},
        "podSecurityContext": {},
        "containerSecurityContext": {},
    },
    "filer": {
        "enabled": True,
        "port": 8888,
        "data": _HOST,
        "logs": _HOST,
        "s3": {"enabled": False, "enableAuth": False, "createBuckets": []},
        "podSecurityContext": {},
        "containerSecurityContext": {},
    },
    "s3": {
        "enabled": False,
        "bindAddress": "0.0.0.0",
        "port": 8333,
        "httpsPort": 0,
        "metricsPort": 9327,
        "icebergPort": None,
        "enableAuth": False,
        "existingConfigSecret": None,
        "auditLogConfig": {},
        "domainName": "",
        "createBuckets": [],
        "extraArgs": [],
        "extraVolumes": "",
        "extraVolumeMounts": "",
        "logs": _HOST,
        "podLabels": {},
        "podSecurityContext": {},
        "containerSecurityContext": {},
        "readinessProbe": {"enabled": True, "httpGet": {"path": "/status", "scheme": "HTTP"}},
        "livenessProbe": {"enabled": True, "httpGet": {"path": "/status", "scheme": "HTTP"}},
    },
    "global": {"seaweedfs": {"enableSecurity": False}},
    # Off by default; the model refuses them rather than guess their pods.
    "admin": {"enabled": False},
    "worker": {"enabled": False},
    "sftp": {"enabled": False},
    "allInOne": {"enabled": False},
    "cosi": {"enabled": False},
}


def _storage_volume(name: str, storage: dict[str, Any]) -> list[dict[str, Any]]:
    """A pod volume for a storage ``type``; persistentVolumeClaim is a claim template."""
    kind = storage.get("type")
    if kind == "hostPath":
        return [{"name": name, "hostPath": {"path": "/storage"}}]
    if kind == "existingClaim":
        return [{"name": name, "persistentVolumeClaim": {"claimName": storage.get("claimName")}}]
    if kind == "emptyDir":
        return [{"name": name, "emptyDir": {}}]
    return []


def seaweedfs_s3_service(values: dict[str, Any]) -> tuple[str, int]:
    """templates/s3/s3-service.yaml: the S3 gateway's Service, (name, port): the
    ``componentName`` FULLNAME-s3 and ``s3.port``."""
    v = coalesce(SEAWEEDFS_DEFAULTS, values)
    assert v["s3"]["enabled"], "s3.enabled: the standalone gateway is the one modelled"
    return f"{fullname(RELEASES['seaweedfs-values.yaml'], 'seaweedfs')}-s3", int(v["s3"]["port"])


def seaweedfs_s3_args(values: dict[str, Any], namespace: str) -> list[str]:
    """templates/s3/s3-deployment.yaml: the arguments the gateway's container runs
    ``weed`` with (its shell command split on blanks, the line continuations dropped)."""
    v = coalesce(SEAWEEDFS_DEFAULTS, values)
    s3 = v["s3"]
    if v["global"]["seaweedfs"]["enableSecurity"]:
        raise NotImplementedError("global.seaweedfs.enableSecurity: not modelled here")
    args = [
        "-logdir=/logs"
        if s3["logs"].get("type") in ("hostPath", "emptyDir")
        else "-logtostderr=true"
    ]
    args += ["-v=1", "s3", f"-ip.bind={s3['bindAddress']}", f"-port={s3['port']}"]
    if s3["metricsPort"]:
        args += ["-metricsPort", str(s3["metricsPort"])]
    if s3["domainName"]:
        args.append(f"-domainName={s3['domainName']}")
    if s3["enableAuth"]:
        args.append("-config=/etc/sw/seaweedfs_s3_config")
    if s3["auditLogConfig"]:
        args.append("-auditLogConfig=/etc/sw/s3_auditLogConfig.json")
    filer = f"{fullname(RELEASES['seaweedfs-values.yaml'], 'seaweedfs')}-filer-client"
    args.append(f"-filer={filer}.{namespace}:{v['filer']['port']}")
    if s3["icebergPort"]:
        args.append(f"-port.iceberg={s3['icebergPort']}")
    return args + [str(a) for a in s3["extraArgs"]]


def seaweedfs_pods(values: dict[str, Any]) -> Pods:
    """templates/{master,volume,filer,s3}/*, shared/post-install-bucket-hook.yaml and
    volume/volume-resize-hook.yaml."""
    v = coalesce(SEAWEEDFS_DEFAULTS, values)
    for component in ("admin", "worker", "sftp", "allInOne", "cosi"):
        if v[component]["enabled"]:
            raise NotImplementedError(f"seaweedfs {component}: its pods are not modelled here")
    if v["global"]["seaweedfs"]["enableSecurity"]:
        raise NotImplementedError("global.seaweedfs.enableSecurity: its volumes are not modelled")

    def pod(component: str, volumes: list[dict[str, Any]], init: bool = False) -> Template:
        c = v[component]
        container: dict[str, Any] = {"name": "seaweedfs"}
        if c["containerSecurityContext"].get("enabled"):
            container["securityContext"] = _omit_enabled(c["containerSecurityContext"])
        spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
        if init:
            spec["initContainers"] = [{**container, "name": "seaweedfs-vol-move-idx"}]
        if c["podSecurityContext"].get("enabled"):
            spec["securityContext"] = _omit_enabled(c["podSecurityContext"])
        labels = {
            "app.kubernetes.io/name": "seaweedfs",
            "app.kubernetes.io/instance": "seaweedfs",
            "app.kubernetes.io/component": component,
            **(c.get("podLabels") or {}),
        }
        return {"metadata": {"labels": labels}, "spec": spec}

    pods: Pods = []
    if v["master"]["enabled"]:
        volumes = _storage_volume("seaweedfs-master-log-volume", v["master"]["logs"])
        volumes += _storage_volume("data", v["master"]["data"])
        volumes.append({"name": "master-config", "configMap": {"name": "seaweedfs-master-config"}})
        pods.append(("StatefulSet/seaweedfs-master", pod("master", volumes)))
    if v["volume"]["enabled"]:
        volumes = [vol for d in v["volume"]["dataDirs"] for vol in _storage_volume(d["name"], d)]
        if v["volume"]["logs"]:
            volumes += _storage_volume("logs", v["volume"]["logs"])
        if v["volume"]["idx"]:
            volumes += _storage_volume("idx", v["volume"]["idx"])
        pods.append(
            ("StatefulSet/seaweedfs-volume", pod("volume", volumes, init=bool(v["volume"]["idx"])))
        )
        if v["volume"]["resizeHook"]["enabled"]:
            # Renders on an upgrade that grows a volume PVC; its pod takes no security context.
            pods.append(
                ("Job/seaweedfs-volume-resize-hook", {"spec": {"containers": [{"name": "resize"}]}})
            )
    if v["filer"]["enabled"]:
        volumes = _storage_volume("seaweedfs-filer-log-volume", v["filer"]["logs"])
        volumes += _storage_volume("data-filer", v["filer"]["data"])
        volumes.append(
            {"name": "db-schema-config-volume", "configMap": {"name": "seaweedfs-db-init-config"}}
        )
        if v["filer"]["s3"]["enabled"] and v["filer"]["s3"]["enableAuth"]:
            volumes.append(
                {"name": "config-users", "secret": {"secretName": "seaweedfs-s3-secret"}}
            )
        pods.append(("StatefulSet/seaweedfs-filer", pod("filer", volumes)))
    name = fullname(RELEASES["seaweedfs-values.yaml"], "seaweedfs")
    if v["s3"]["enabled"]:
        s3 = v["s3"]
        volumes, mounts = [], []
        if s3["logs"].get("type") in ("hostPath", "emptyDir"):
            mounts.append({"name": "logs", "mountPath": "/logs/"})
        if s3["enableAuth"]:
            mounts.append({"name": "config-users", "mountPath": "/etc/sw", "readOnly": True})
            secret = s3["existingConfigSecret"] or f"{name}-s3-secret"
            volumes.append({"name": "config-users", "secret": {"secretName": secret}})
        mounts += _tpl_list(s3["extraVolumeMounts"], "s3.extraVolumeMounts")
        if s3["logs"].get("type") in ("hostPath", "emptyDir"):
            volumes += _storage_volume("logs", s3["logs"])
        volumes += _tpl_list(s3["extraVolumes"], "s3.extraVolumes")
        template = pod("s3", volumes)
        (container,) = template["spec"]["containers"]
        container["args"] = seaweedfs_s3_args(values, "NAMESPACE")
        container["volumeMounts"] = mounts
        container["ports"] = [{"name": "swfs-s3", "containerPort": s3["port"]}]
        if s3["httpsPort"]:
            container["ports"].append({"name": "swfs-s3-tls", "containerPort": s3["httpsPort"]})
        if s3["metricsPort"]:
            container["ports"].append({"name": "metrics", "containerPort": s3["metricsPort"]})
        for probe in ("readinessProbe", "livenessProbe"):
            if s3[probe]["enabled"]:
                get = s3[probe]["httpGet"]
                container[probe] = {
                    "httpGet": {"path": get["path"], "port": s3["port"], "scheme": get["scheme"]}
                }
        pods.append((f"Deployment/{name}-s3", template))
    gateway = v["filer"]["s3"]["enabled"] or v["s3"]["enabled"]
    if v["master"]["enabled"] and gateway:
        # The bucket hook takes its buckets and identities from the standalone gateway's
        # values if it has buckets, else from the filer's, and the filer's security contexts.
        source = v["s3"] if v["s3"]["createBuckets"] else v["filer"]["s3"]
        if source["createBuckets"]:
            volumes = []
            if source["enableAuth"]:
                secret = source.get("existingConfigSecret") or f"{name}-s3-secret"
                volumes.append({"name": "config-users", "secret": {"secretName": secret}})
            hook = pod("filer", volumes)
            hook["metadata"]["labels"]["app.kubernetes.io/component"] = "bucket-hook"
            pods.append((f"Job/{RELEASES['seaweedfs-values.yaml']}-bucket-hook", hook))
    return pods


CHART_PODS: dict[str, Callable[[dict[str, Any]], Pods]] = {
    "nats-values.yaml": nats_pods,
    "minio-values.yaml": minio_pods,
    "seaweedfs-values.yaml": seaweedfs_pods,
}
