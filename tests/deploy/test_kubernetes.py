"""deploy/k8s: every overlay renders with kubectl's kustomize, built-in kinds pass
kubernetes-validate --strict, the KEDA ScaledObject passes a schema written from
KEDA's documentation, and the manifests agree with the code (ports, names,
required variables, secrets) and with the charts the gpu overlay's S3 server comes from:
SeaweedFS's by default, MinIO's with the minio component."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from support import charts
from support.deploy import (
    ALL_KUSTOMIZATIONS,
    HELM,
    INIT_SELECTOR,
    KUSTOMIZATIONS,
    ONE_OFF,
    OVERLAYS,
    SCHEMAS,
    SECRET_NAME,
    config_map_data,
    container_env,
    env_example,
    filled_env,
    find,
    kubernetes_secrets,
    kustomize,
    nats_users,
    objects,
    overlay_objects,
    pod_specs,
    project_version,
    venv_tool,
)

from ghibli_anim.contracts import config
from ghibli_anim.runtime.auth import Tokens
from ghibli_anim.runtime.bus.names import STEPS, WORK_STREAM

pytestmark = pytest.mark.timeout(180)

WORKERS = ("renderer", "depth", "assembler")
S3_SERVICES = ("planner", "renderer", "depth", "assembler", "trainer")
NAMESPACES = {"dev": "ghibli-anim-dev", "gpu": "ghibli-anim"}

DEFAULT_DRAIN_S = float(next(v.default for v in config.VARS if v.name == "ANIM_DRAIN_S"))


def validate_strict(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "manifests.yaml"
    path.write_text(text)
    return subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders(path: str) -> None:
    kinds = {doc["kind"] for doc in objects(path)}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


@pytest.mark.parametrize("path", ALL_KUSTOMIZATIONS)
def test_no_secret_is_written_in_manifests(path: str) -> None:
    kinds = {doc["kind"] for doc in objects(path)}
    assert "Secret" not in kinds, "secrets are referenced, never written in manifests"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_always_applied_sets_hold_no_job(path: str) -> None:
    """A Job's pod template is immutable and ours name the hash-suffixed ConfigMap and the
    image tags: in the set that `kubectl apply -k` re-applies on every upgrade, a Job would
    fail the apply ("field is immutable") after any change of settings or images."""
    kinds = {doc["kind"] for doc in objects(path)}
    assert not kinds & {"Job", "CronJob", "Pod"}, f"{path}: {kinds}"


MINIO = ("minio",)
"""The gpu overlay with MinIO's chart instead of SeaweedFS's (components/minio)."""


@pytest.mark.parametrize(("overlay", "components"), [*((o, ()) for o in OVERLAYS), ("gpu", MINIO)])
def test_jobs_live_in_their_own_kustomizations_with_the_overlays_settings(
    overlay: str, components: tuple[str, ...]
) -> None:
    always = objects(f"overlays/{overlay}", components)
    (settings,) = [d for d in always if d["metadata"]["name"].startswith("ghibli-anim-config-")]
    namespace = NAMESPACES[overlay]
    jobs = []
    for path in ONE_OFF[overlay]:
        docs = objects(path, components)
        # The same ConfigMap (name, hash and data) as the always-applied set: applying the
        # Jobs re-applies it unchanged, and they read what the services read.
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
        assert cm == settings, path
        assert {d["metadata"].get("namespace") for d in docs} == {namespace}, path
        assert {d["kind"] for d in docs} <= {
            "Job",
            "ConfigMap",
            "PersistentVolumeClaim",
            "ServiceAccount",
        }, path
        jobs += [(path, d) for d in docs if d["kind"] == "Job"]
    # The images are the always-applied set's (one place sets the tags: common/).
    always_images = {c["image"] for _, spec in pod_specs(always) for c in spec["containers"]}
    for path, job in jobs:
        for container in job["spec"]["template"]["spec"]["containers"]:
            repo = container["image"].split(":")[0]
            tags = {i for i in always_images if i.split(":")[0] == repo}
            assert not tags or tags == {container["image"]}, f"{path}: {container['image']}"
    names = {job["metadata"]["name"] for _, job in jobs}
    assert {"bus-init"} <= names
    key, value = INIT_SELECTOR
    for path, job in jobs:
        # run-jobs.sh deletes and waits for the init Jobs by this label; the trainer is
        # started by hand and must never be deleted by it (it may be training).
        labels = job["metadata"]["labels"]
        is_init = job["metadata"]["name"] in ("bus-init", "models-fetch")
        assert (labels.get(key) == value) is is_init, f"{path}: {job['metadata']['name']}"
        template_labels = job["spec"]["template"]["metadata"]["labels"]
        assert template_labels["app.kubernetes.io/name"] == job["metadata"]["name"]
    # Nothing else carries the label: the script deletes only Jobs.
    for path in ONE_OFF[overlay]:
        for doc in objects(path, components):
            if doc["kind"] != "Job":
                assert doc["metadata"].get("labels", {}).get(key) != value, doc["metadata"]


@pytest.mark.parametrize(
    ("path", "components"),
    [
        *((p, ()) for p in ALL_KUSTOMIZATIONS),
        *((p, MINIO) for p in ("overlays/gpu", *ONE_OFF["gpu"])),
    ],
)
def test_builtin_kinds_pass_strict_validation(
    path: str, components: tuple[str, ...], tmp_path: Path
) -> None:
    result = validate_strict(tmp_path, kustomize(path, components))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The only kind without a bundled schema is KEDA's (checked below against ours).
    unknown = re.findall(r"Couldn't find schema for kind (\w+)", output)
    assert set(unknown) <= {"ScaledObject"}, output


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    docs = objects("overlays/gpu")
    planner = find(docs, "Deployment", "planner")
    planner["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    result = validate_strict(tmp_path, yaml.safe_dump(planner))
    assert result.returncode != 0


def scaled_object_schema() -> dict[str, Any]:
    return json.loads((SCHEMAS / "keda-scaledobject.schema.json").read_text())


def test_scaled_object_follows_kedas_documented_spec() -> None:
    scaled = find(objects("overlays/gpu"), "ScaledObject", "renderer")
    jsonschema.validate(scaled, scaled_object_schema())


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t["metadata"].update(lagTreshold="1"),  # misspelt key
        lambda t: t["metadata"].update(lagThreshold=1),  # KEDA wants strings
        lambda t: t["metadata"].update(useHttps="yes"),
        lambda t: t["metadata"].pop("consumer"),
        lambda t: t["metadata"].update(natsServerMonitoringEndpoint="http://nats:8222"),
    ],
)
def test_the_keda_schema_catches_broken_triggers(damage) -> None:
    scaled = find(objects("overlays/gpu"), "ScaledObject", "renderer")
    damage(scaled["spec"]["triggers"][0])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, scaled_object_schema())


def test_renderer_scales_on_the_render_consumers_backlog() -> None:
    docs = objects("overlays/gpu")
    scaled = find(docs, "ScaledObject", "renderer")
    spec = scaled["spec"]
    assert (
        spec["scaleTargetRef"]["name"] == find(docs, "Deployment", "renderer")["metadata"]["name"]
    )
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "nats-jetstream"
    assert meta["stream"] == WORK_STREAM
    assert meta["consumer"] == "render" and "render" in STEPS
    assert meta["account"] == "$G"  # users of auth.conf live in the global account
    host, port = meta["natsServerMonitoringEndpoint"].split(":")
    # Clustered: KEDA asks the consumer's leader at <server>.<host>, so the host
    # is the chart's headless service, in this overlay's namespace.
    assert host == f"nats-headless.{scaled['metadata']['namespace']}.svc.cluster.local"
    assert int(port) == 8222
    assert scaled["metadata"]["namespace"] == NAMESPACES["gpu"]


def test_keda_is_optional() -> None:
    for path in ("base", "overlays/dev"):
        assert not [d for d in objects(path) if d["kind"] == "ScaledObject"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down(overlay: str) -> None:
    for where, spec in pod_specs(overlay_objects(overlay)):
        pod_ctx = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, where
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container.get("securityContext", {})
            label = f"{where} container {container['name']}"
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, label
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) != 0, label
            assert ctx.get("readOnlyRootFilesystem") is True, label
            assert ctx.get("allowPrivilegeEscalation") is False, label
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], label
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), label
            assert "memory" in resources.get("limits", {}), label
            # Anything that writes gets a volume: the root filesystem is read-only.
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if container["name"] in config.SERVICES:
                assert {"/tmp", "/cache"} <= mounts, label


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_expose_their_grpc_port_with_native_grpc_probes(overlay: str) -> None:
    docs = objects(f"overlays/{overlay}")
    (settings,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "ANIM_METRICS_PORT" in d.get("data", {})
    ]
    metrics_port = int(settings["data"]["ANIM_METRICS_PORT"])
    for name in config.SERVICES:
        port = config.GRPC_PORTS[name]
        deployment = find(docs, "Deployment", name)
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"] == ["serve", name]
        assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
            ("grpc", port),
            ("metrics", metrics_port),  # declared, as the scrape annotations name it
        ]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name} {probe}"
        service = find(docs, "Service", name)
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        pdb = find(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        # SIGTERM: the message in hand gets ANIM_DRAIN_S, then the rest of the shutdown,
        # within Kubernetes' default grace period.
        env = {v["name"]: v.get("value") for v in container["env"]}
        drain = float(env.get("ANIM_DRAIN_S") or DEFAULT_DRAIN_S)
        assert drain + 10 <= spec["terminationGracePeriodSeconds"] <= 30, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_web_page_serves_http_with_http_probes_in_front_of_the_planner(overlay: str) -> None:
    docs = objects(f"overlays/{overlay}")
    deployment = find(docs, "Deployment", "web")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["serve", "web"]
    # The planner's image carries the web extra (test_images.py).
    (planner,) = find(docs, "Deployment", "planner")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == planner["image"]
    env = container_env(docs, container, secret_values())
    required = [v.name for v in config.VARS if "web" in v.required_for]
    assert required and not [n for n in required if not env.get(n)]
    settings = config.load("web", env)  # what `ghibli-anim serve web` does first
    (port,) = container["ports"]
    assert port["containerPort"] == settings["ANIM_WEB_PORT"] == config.WEB_PORT
    # HTTP probes on the named port: ready while the planner serves, alive while the
    # process answers (both paths answer for real in test_web_health.py).
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    # ANIM_PLANNER_TARGET is the planner Service's gRPC port.
    host, target_port = settings["ANIM_PLANNER_TARGET"].rsplit(":", 1)
    planner_ports = find(docs, "Service", host)["spec"]["ports"]
    assert [p["port"] for p in planner_ports] == [int(target_port)]
    assert int(target_port) == config.GRPC_PORTS["planner"]
    # Only the planner's API: no bus or store credentials.
    refs = {v["name"] for v in container["env"] if "valueFrom" in v}
    assert refs == {"ANIM_CLIENT_TOKEN"}, refs
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    drain = float(env["ANIM_DRAIN_S"])
    assert drain + 10 <= spec["terminationGracePeriodSeconds"] <= 30
    account = find(docs, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    service = find(docs, "Service", "web")
    assert [p["port"] for p in service["spec"]["ports"]] == [config.WEB_PORT]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = find(docs, "PodDisruptionBudget", "web")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert deployment["spec"]["replicas"] == {"dev": 1, "gpu": 2}[overlay]


def test_renderer_gets_a_gpu_in_production_and_none_in_dev() -> None:
    gpu = find(objects("overlays/gpu"), "Deployment", "renderer")["spec"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    dev = find(objects("overlays/dev"), "Deployment", "renderer")["spec"]["template"]["spec"]
    (container,) = dev["containers"]
    assert "nvidia.com/gpu" not in json.dumps(dev)
    assert {"name": "ANIM_DEVICE", "value": "cpu"} in container["env"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_planner_and_assembler_scale_on_cpu(overlay: str) -> None:
    docs = objects(f"overlays/{overlay}")
    hpas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"planner", "assembler"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def secret_values(overlay: str = "gpu") -> dict[str, str]:
    """Every key of every Secret deploy/k8s/secrets.py makes (their key names differ)."""
    values = {k: v or f"value-of-{k.lower()}" for k, v in filled_env().items()}
    for data in kubernetes_secrets(overlay).values():
        values.update(data)
    return values


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_starts_with_its_required_configuration(overlay: str) -> None:
    docs = objects(f"overlays/{overlay}")
    secrets = secret_values()
    for name in config.SERVICES:
        (container,) = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = container_env(docs, container, secrets)
        required = [
            v.name
            for v in config.VARS
            if name in v.required_for
            and (not v.name.startswith("ANIM_S3_") or env.get("ANIM_STORE", "s3") == "s3")
        ]
        assert required, "config.py marks nothing required: this test would test nothing"
        assert not [n for n in required if not env.get(n)], name
        settings = config.load(name, env)  # what `ghibli-anim serve NAME` does first
        assert settings.grpc_port() == config.GRPC_PORTS[name]
        assert env["ANIM_NATS_USER"] == name
        users = nats_users()
        ref = next(v for v in container["env"] if v["name"] == "ANIM_NATS_PASSWORD")
        assert ref["valueFrom"]["secretKeyRef"]["key"] == users[name]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_only_from_secret_references(overlay: str) -> None:
    docs = overlay_objects(overlay)
    secret_vars = {v.name for v in config.VARS if v.secret}
    known_keys = set(env_example())
    made = kubernetes_secrets(overlay)
    cm = config_map_data(docs, "ghibli-anim-config")
    assert not secret_vars & set(cm), "a secret in the ConfigMap"
    for where, spec in pod_specs(docs):
        for container in spec["containers"] + spec.get("initContainers", []):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if var["name"] in secret_vars or "PASSWORD" in var["name"]:
                    assert ref is not None, f"{where}: {var['name']} is not a secret reference"
                if ref is None:
                    continue
                # Every Secret and key a workload names is one deploy/k8s/secrets.py makes;
                # the main one holds .env's values under .env's names.
                assert ref["key"] in made.get(ref["name"], {}), f"{where}: {ref}"
                if ref["name"] == SECRET_NAME:
                    assert ref["key"] in known_keys, f"{where}: {ref['key']} not in .env.example"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in made, f"{where}: Secret {name}"
                for item in volume["secret"].get("items", []):
                    assert item["key"] in made[name], f"{where}: {name} {item['key']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shared_settings_agree_with_the_code(overlay: str) -> None:
    data = config_map_data(objects(f"overlays/{overlay}"), "ghibli-anim-config")
    defaults = {v.name: v.default for v in config.VARS}
    assert data["ANIM_S3_BUCKET"] == defaults["ANIM_S3_BUCKET"] == "animations"
    assert data["ANIM_NATS_URL"] == "nats://nats:4222"
    assert data["ANIM_PROFILE"] == {"dev": "tiny", "gpu": "sd15-ghibli"}[overlay]
    unknown = set(data) - set(defaults)
    assert not unknown, f"not declared in config.py: {unknown}"
    # Every value parses as config.py expects.
    config.load("client", {**data, "ANIM_GRPC_PORT": ""})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_projects_at_its_version(overlay: str) -> None:
    version = project_version()
    suffix = {"dev": {"renderer": "-cpu"}, "gpu": {}}[overlay]
    for where, spec in pod_specs(overlay_objects(overlay)):
        for container in spec["containers"]:
            image = container["image"]
            if not image.startswith("ghibli-anim/"):
                continue
            repo, tag = image.split(":")
            target = repo.removeprefix("ghibli-anim/")
            assert target in (*config.SERVICES, "trainer"), where
            assert tag == version + suffix.get(target, ""), where


def test_bus_init_job_binds_nothing_and_replicates_in_clusters() -> None:
    for overlay, replicas in (("dev", "1"), ("gpu", "3")):
        job = find(overlay_objects(overlay), "Job", "bus-init")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["bus", "init", "--replicas", replicas]
        names = {v["name"]: v for v in container["env"]}
        assert names["ANIM_NATS_USER"]["value"] == "bus-init"
        key = names["ANIM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
        assert key == nats_users()["bus-init"]


def test_trainer_job_waits_to_be_started() -> None:
    docs = overlay_objects("gpu")
    job = find(docs, "Job", "trainer")
    assert job["spec"]["suspend"] is True
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghibli-anim/trainer:{project_version()}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not [d for d in overlay_objects("dev") if d["metadata"]["name"] == "trainer"]


def test_gpu_overlay_loads_models_from_a_prefetched_read_only_volume() -> None:
    """models-fetch is the volume's only writer; everything else mounts it read-only, and
    the workloads that load diffusion models never reach the hub (HF_HUB_OFFLINE): a new
    replica loads what is there and never downloads."""
    docs = overlay_objects("gpu")
    pvc = find(docs, "PersistentVolumeClaim", "ghibli-anim-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    fetch = find(docs, "Job", "models-fetch")
    (container,) = fetch["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["models", "fetch", "$(ANIM_PROFILE)", "--all"]
    settings = config_map_data(docs, "ghibli-anim-config")
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["HF_HOME"] == settings["HF_HOME"] == "/models"
    assert "HF_HUB_OFFLINE" not in env
    writers = []
    for where, spec in pod_specs(docs):
        claims = {
            v["name"]: v["persistentVolumeClaim"]
            for v in spec.get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
        }
        if not claims:
            continue
        (container,) = spec["containers"]
        mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
        assert [m["mountPath"] for m in mounts] == [settings["HF_HOME"]], where
        read_only = all(c.get("readOnly") for c in claims.values()) or all(
            m.get("readOnly") for m in mounts
        )
        if not read_only:
            writers.append(where)
    assert writers == ["Job/models-fetch"]
    for kind, name in (
        ("Deployment", "planner"),
        ("Deployment", "renderer"),
        ("Deployment", "depth"),
        ("Job", "trainer"),
    ):
        spec = find(docs, kind, name)["spec"]["template"]["spec"]
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert models == {
            "name": "models",
            "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"], "readOnly": True},
        }, name
        env = {v["name"]: v.get("value") for v in spec["containers"][0]["env"]}
        # The planner's hf backend calls the hub's inference API, which offline mode blocks.
        assert env.get("HF_HUB_OFFLINE") == (None if name == "planner" else "1"), name


def test_gpu_workloads_run_only_on_nodes_whose_driver_runs_cuda_13() -> None:
    """The image's torch is a CUDA 13 build: NVIDIA driver 580 or later. GPU Feature
    Discovery labels nodes with the driver's major version, under its current name and
    its deprecated one; either qualifies a node (node selector terms are ORed)."""
    docs = overlay_objects("gpu")
    for kind, name in (("Deployment", "renderer"), ("Job", "trainer")):
        spec = find(docs, kind, name)["spec"]["template"]["spec"]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expressions = [term["matchExpressions"] for term in terms["nodeSelectorTerms"]]
        assert expressions == [
            [{"key": label, "operator": "Gt", "values": ["579"]}]
            for label in ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver.major")
        ], name
    for kind, name in (("Deployment", "depth"), ("Deployment", "planner"), ("Job", "models-fetch")):
        assert "affinity" not in find(docs, kind, name)["spec"]["template"]["spec"], name
    dev = find(objects("overlays/dev"), "Deployment", "renderer")["spec"]["template"]["spec"]
    assert "affinity" not in dev


def test_dev_overlay_runs_nats_and_s3_inside_the_namespace() -> None:
    docs = objects("overlays/dev")
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        NAMESPACES["dev"]
    }
    nats = find(docs, "StatefulSet", "nats")
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["nats-server"]
    assert container["args"] == [
        "--config",
        "/etc/nats/nats.conf",
        "--store_dir",
        "/data/jetstream",
    ]
    password_vars = {v["name"] for v in container["env"]}
    assert password_vars == set(nats_users().values())
    volumes = nats["spec"]["template"]["spec"]["volumes"]
    cm_name = next(v for v in volumes if v["name"] == "config")["configMap"]["name"]
    conf = find(docs, "ConfigMap", cm_name)
    assert set(conf["data"]) == {"nats.conf", "auth.conf"}
    s3 = find(docs, "Deployment", "s3")
    (server,) = s3["spec"]["template"]["spec"]["containers"]
    assert "-bucket=$(ANIM_S3_BUCKET)" in server["args"]
    endpoint = config_map_data(docs, "ghibli-anim-config")["ANIM_S3_ENDPOINT"]
    service = find(docs, "Service", "s3")
    assert endpoint == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_s3_servers_read_the_identities_secrets_py_makes() -> None:
    """The dev overlay's SeaweedFS reads its identities file from the Secret; so does the
    SeaweedFS chart (seaweedfs-values.yaml), and the MinIO chart its users' keys."""
    docs = objects("overlays/dev")
    spec = find(docs, "Deployment", "s3")["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    config_flag = next(a for a in server["args"] if a.startswith("-s3.config="))
    path = Path(config_flag.split("=", 1)[1])
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == str(path.parent)]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    made = kubernetes_secrets("dev")
    (item,) = volume["secret"]["items"]
    assert item["path"] == path.name
    identities = json.loads(made[volume["secret"]["secretName"]][item["key"]])
    names = {i["name"] for i in identities["identities"]}
    assert names == {"admin"} | {f"ghibli-anim-{s}" for s in S3_SERVICES}


def helm_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((HELM / name).read_text())


@pytest.mark.parametrize(
    ("components", "values", "service"),
    [
        ((), "seaweedfs-values.yaml", charts.seaweedfs_s3_service),
        (MINIO, "minio-values.yaml", charts.minio_s3_service),
    ],
)
def test_the_gpu_overlay_dials_the_s3_service_of_the_chart_it_installs(
    components: tuple[str, ...], values: str, service
) -> None:
    """SeaweedFS's chart by default, MinIO's with the minio component: the endpoint is the
    Service the chart's templates name for the release deploy/README.md installs, on the
    port our values give it; the Jobs read the same settings (one ConfigMap)."""
    name, port = service(helm_values(values))
    for path in ("overlays/gpu", *ONE_OFF["gpu"]):
        settings = config_map_data(objects(path, components), "ghibli-anim-config")
        assert settings["ANIM_S3_ENDPOINT"] == f"{name}:{port}", path
        assert settings["ANIM_S3_SECURE"] == "false", path  # TLS: test_tls.py
    readme = (HELM.parent / "README.md").read_text()
    assert f"`{name}:{port}`" in readme


def test_the_base_defaults_to_seaweedfs() -> None:
    name, port = charts.seaweedfs_s3_service(helm_values("seaweedfs-values.yaml"))
    settings = config_map_data(objects("base"), "ghibli-anim-config")
    assert settings["ANIM_S3_ENDPOINT"] == f"{name}:{port}"


def test_the_seaweedfs_chart_reads_the_identities_secrets_py_makes() -> None:
    """The gateways' `-config` file is a key of the Secret deploy/k8s/secrets.py makes,
    mounted where the chart's template mounts it: the root user and one identity per
    service. The bucket hook mounts the same Secret."""
    pods = dict(charts.seaweedfs_pods(helm_values("seaweedfs-values.yaml")))
    made = kubernetes_secrets("gpu")
    spec = pods["Deployment/seaweedfs-s3"]["spec"]
    (gateway,) = spec["containers"]
    config_flag = next(a for a in gateway["args"] if a.startswith("-config="))
    path = Path(config_flag.split("=", 1)[1])
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(path.parent)]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    identities = json.loads(made[volume["secret"]["secretName"]][path.name])
    names = {i["name"] for i in identities["identities"]}
    assert names == {"admin"} | {f"ghibli-anim-{s}" for s in S3_SERVICES}
    hook = pods["Job/seaweedfs-bucket-hook"]["spec"]
    assert [v["secret"]["secretName"] for v in hook["volumes"]] == [volume["secret"]["secretName"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployments_leave_their_replica_count_to_the_autoscaler(overlay: str) -> None:
    """A Deployment that an HPA or KEDA's ScaledObject scales has no spec.replicas: every
    `kubectl apply` would otherwise reset it (renderers back to one, mid-job)."""
    docs = objects(f"overlays/{overlay}")
    targets = {
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in docs
        if doc["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        and doc["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    }
    assert targets, "no autoscaler found"
    for name in targets:
        assert "replicas" not in find(docs, "Deployment", name)["spec"], f"{overlay}: {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_liveness_asks_the_process_and_readiness_its_dependencies(overlay: str) -> None:
    """Liveness probes ask the health service "liveness" (the process answers); readiness
    asks the overall status (NATS and the store answer), so an outage unreadies pods but
    never restarts them."""
    docs = objects(f"overlays/{overlay}")
    checked = 0
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            live, ready = container.get("livenessProbe", {}), container.get("readinessProbe", {})
            if "grpc" not in live:
                continue  # the web page's HTTP probes: /healthz and /readyz
            assert live["grpc"].get("service") == "liveness", doc["metadata"]["name"]
            assert ready["grpc"].get("service", "") == "", doc["metadata"]["name"]
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_planner_api_needs_a_bearer_token_and_the_web_page_has_one(
    overlay: str, tmp_path: Path
) -> None:
    docs = objects(f"overlays/{overlay}")
    spec = find(docs, "Deployment", "planner")["spec"]["template"]["spec"]
    (planner,) = spec["containers"]
    env = {v["name"]: v.get("value") for v in planner["env"]}
    tokens_file = Path(env["ANIM_AUTH_TOKENS_FILE"])
    (mount,) = [m for m in planner["volumeMounts"] if m["mountPath"] == str(tokens_file.parent)]
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    made = kubernetes_secrets(overlay)
    content = made[volume["secret"]["secretName"]][tokens_file.name]
    # What the planner does at start with that file (ghibli_anim/runtime/auth.py).
    path = tmp_path / "tokens"
    path.write_text(content)
    tokens = Tokens.load(path)
    (web,) = find(docs, "Deployment", "web")["spec"]["template"]["spec"]["containers"]
    ref = next(v for v in web["env"] if v["name"] == "ANIM_CLIENT_TOKEN")["valueFrom"]
    assert "optional" not in ref["secretKeyRef"]
    web_token = made[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
    assert tokens.client_of(web_token) == "web"
