"""docker-compose.yml: valid against the compose specification, every reference
resolves, each profile combination starts a complete stack, and every service
gets the configuration its code requires (ports, users, secrets, images)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest
from support.deploy import (
    COMPOSE_FILE,
    DOCKERFILE,
    MissingVariable,
    active_services,
    compose,
    compose_raw,
    dockerfile_stages,
    env_example,
    filled_env,
    interpolate,
    nats_users,
    objects,
    project_version,
    service_environment,
    venv_tool,
)

from ghibli_anim.contracts import config

pytestmark = pytest.mark.timeout(120)

S3_PROFILES = ("minio", "seaweedfs")
RUN_PROFILES = ("gpu", "cpu")
COMBINATIONS = [set(c) for c in itertools.product(S3_PROFILES, RUN_PROFILES)]
# Compose service -> the service it runs (variants share the code and the port).
RUNS = {
    "planner": "planner",
    "renderer": "renderer",
    "renderer-gpu1": "renderer",
    "renderer-cpu": "renderer",
    "depth": "depth",
    "assembler": "assembler",
}

DEFAULT_DRAIN_S = float(next(v.default for v in config.VARS if v.name == "ANIM_DRAIN_S"))


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_follows_the_compose_spec() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_spec_check_catches_a_wrong_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("    stop_grace_period: 30s\n", "    stop_grace: 30s\n", 1)
    )
    assert broken.read_text() != COMPOSE_FILE.read_text()
    assert check_jsonschema(broken).returncode != 0


def test_references_resolve() -> None:
    doc = compose()
    services = doc["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on undefined {dep}"
        networks = svc.get("networks", [])
        for net in networks:  # a list of names, or a mapping keyed by name
            assert net in doc["networks"], f"{name}: network {net}"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in doc["volumes"], f"{name}: volume {source}"
            else:
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} missing"
        for cfg in svc.get("configs", []):
            assert cfg["source"] in doc["configs"], f"{name}: config {cfg['source']}"
        for secret in svc.get("secrets", []):
            assert secret in doc.get("secrets", {}), f"{name}: secret {secret}"
        if "build" in svc:
            build = svc["build"]
            assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).exists()
            assert build["target"] in dockerfile_stages(), f"{name}: target {build['target']}"


def test_missing_secrets_stop_compose_with_the_variables_name() -> None:
    env = filled_env()
    del env["NATS_RENDERER_PASSWORD"]
    with pytest.raises(MissingVariable, match="NATS_RENDERER_PASSWORD"):
        compose(env)
    env = filled_env()
    env["ANIM_S3_SECRET_KEY"] = ""
    with pytest.raises(MissingVariable, match="ANIM_S3_SECRET_KEY"):
        compose(env)


@pytest.mark.parametrize("profiles", COMBINATIONS, ids=lambda p: "+".join(sorted(p)))
def test_each_profile_combination_is_a_complete_stack(profiles: set[str]) -> None:
    doc = compose()
    active = active_services(doc, profiles)
    runs = sorted(RUNS[name] for name in active if name in RUNS)
    assert runs == sorted(config.SERVICES)
    # With a second GPU: the same stack and one more renderer.
    more = active_services(doc, profiles | {"gpu1"})
    assert set(more) - set(active) == {"renderer-gpu1"}
    # Exactly one S3 server, reachable as s3:9000 like ANIM_S3_ENDPOINT says.
    s3 = [
        n
        for n, s in active.items()
        if isinstance(s.get("networks"), dict) and "s3" in s["networks"]["anim"].get("aliases", [])
    ]
    assert len(s3) == 1, s3
    for name in active:
        for dep, cond in active[name].get("depends_on", {}).items():
            assert dep in active or cond.get("required") is False, f"{name} needs {dep}"


@pytest.mark.parametrize("profiles", COMBINATIONS, ids=lambda p: "+".join(sorted(p)))
def test_one_shot_steps_are_awaited_by_long_running_services(profiles: set[str]) -> None:
    # `docker compose up --wait` counts a finished one-shot container as a failure
    # unless a running service waits for it with service_completed_successfully.
    active = active_services(compose(), profiles)
    one_shots = {n for n, s in active.items() if s.get("restart") == "no"}
    assert {"bus-init", "models-fetch"} <= one_shots
    for one_shot in one_shots:
        adopters = [
            n
            for n, s in active.items()
            if n not in one_shots
            and s.get("depends_on", {}).get(one_shot, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert adopters, f"nothing running waits for {one_shot}"
    for name, svc in active.items():
        if name not in one_shots:
            assert svc["restart"] == "unless-stopped", name
            assert "healthcheck" in svc, name


def secret_vars() -> set[str]:
    return {v.name for v in config.VARS if v.secret}


def test_every_service_starts_with_its_required_configuration() -> None:
    doc = compose()
    raw = compose_raw()
    users = nats_users()
    for name, role in RUNS.items():
        svc = doc["services"][name]
        env = service_environment(svc)
        settings = config.load(role, env)  # what `ghibli-anim serve NAME` does first
        required = [v.name for v in config.VARS if role in v.required_for]
        assert required and not [n for n in required if not env.get(n)], name
        assert settings.grpc_port() == config.GRPC_PORTS[role]
        assert env["ANIM_NATS_USER"] == role
        # The password is the one the NATS server gives that user.
        raw_env = service_environment(raw["services"][name])
        assert raw_env["ANIM_NATS_PASSWORD"].startswith("${" + users[role] + ":?")
        # Secrets come from .env by interpolation, never written in the file.
        for var in secret_vars() & set(raw_env):
            assert raw_env[var].startswith("${"), f"{name}: {var} is written in the file"
        assert svc["command"] == ["serve", role]
        health = svc["healthcheck"]["test"]
        assert health == [
            "CMD",
            "ghibli-anim",
            "probe",
            "--target",
            f"127.0.0.1:{config.GRPC_PORTS[role]}",
        ]
        drain = float(env.get("ANIM_DRAIN_S") or DEFAULT_DRAIN_S)
        stop = svc["stop_grace_period"]
        assert stop.endswith("s") and float(stop[:-1]) >= drain + 10, name


def test_web_page_starts_with_its_configuration_after_the_planner() -> None:
    doc = compose()
    raw_env = service_environment(compose_raw()["services"]["web"])
    svc = doc["services"]["web"]
    env = service_environment(svc)
    settings = config.load("web", env)  # what `ghibli-anim serve web` does first
    required = [v.name for v in config.VARS if "web" in v.required_for]
    assert required and not [n for n in required if not env.get(n)]
    assert svc["command"] == ["serve", "web"]
    # The planner image carries the web extra (test_images.py); no build of its own.
    assert svc["image"] == doc["services"]["planner"]["image"]
    assert svc["build"] == doc["services"]["planner"]["build"]
    # The planner's compose name and gRPC port, once the planner is healthy.
    host, port = settings["ANIM_PLANNER_TARGET"].rsplit(":", 1)
    assert host == "planner" and int(port) == config.GRPC_PORTS["planner"]
    assert svc["depends_on"] == {"planner": {"condition": "service_healthy"}}
    assert settings["ANIM_WEB_PORT"] == config.WEB_PORT
    assert svc["ports"] == [f"127.0.0.1:{config.WEB_PORT}:{config.WEB_PORT}"]
    # Only the planner's API: no bus or store credentials.
    assert not [n for n in env if n.startswith(("ANIM_NATS_", "ANIM_S3_"))], env
    for var in secret_vars() & set(raw_env):
        assert raw_env[var].startswith("${"), f"web: {var} is written in the file"
    health = svc["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{config.WEB_PORT}/readyz" in health[3]
    drain = float(env["ANIM_DRAIN_S"])
    stop = svc["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) >= drain + 10


def test_nats_server_gets_every_users_password_and_the_config() -> None:
    nats = compose()["services"]["nats"]
    assert set(service_environment(nats)) == set(nats_users().values())
    assert nats["command"] == [
        "nats-server",
        "--config",
        "/etc/nats/nats.conf",
        "--store_dir",
        "/data/jetstream",
    ]
    assert "./deploy/nats:/etc/nats:ro" in nats["volumes"]
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])
    bus_init = compose()["services"]["bus-init"]
    assert bus_init["command"][:2] == ["bus", "init"]
    assert service_environment(bus_init)["ANIM_NATS_USER"] == "bus-init"


def gpu_requests(svc: dict) -> list[dict]:
    return svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_planner_is_published_on_its_port_and_each_gpu_renderer_gets_its_own_gpu() -> None:
    doc = compose()
    services = doc["services"]
    assert services["planner"]["ports"] == ["127.0.0.1:50051:50051"]
    # moby gives every replica of a service the same devices (count or device_ids
    # alike): GPUs are spread by one service per GPU, each naming its GPU.
    gpus: dict[str, str] = {}
    for name, svc in services.items():
        for request in gpu_requests(svc):
            assert request["driver"] == "nvidia" and request["capabilities"] == ["gpu"]
            assert "count" not in request, f"{name}: name the GPU with device_ids, not count"
            for gpu in request["device_ids"]:
                assert gpu not in gpus, f"GPU {gpu}: {gpus[gpu]} and {name}"
                gpus[gpu] = name
    assert gpus == {"0": "renderer", "1": "renderer-gpu1"}
    gpu0, gpu1 = services["renderer"], services["renderer-gpu1"]
    for svc in (gpu0, gpu1):
        assert service_environment(svc)["ANIM_DEVICE"] == "cuda"
    # The second GPU's renderer is the first one on another GPU, in its own profile.
    differ = {k for k in set(gpu0) | set(gpu1) if gpu0.get(k) != gpu1.get(k)}
    assert differ == {"profiles", "deploy"}
    assert (gpu0["profiles"], gpu1["profiles"]) == (["gpu"], ["gpu1"])
    cpu = services["renderer-cpu"]
    assert "deploy" not in cpu and service_environment(cpu)["ANIM_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_depth_runs_on_cpus_in_every_variant_from_its_cpu_image() -> None:
    doc = compose()
    depth = doc["services"]["depth"]
    assert "profiles" not in depth and not gpu_requests(depth)
    assert service_environment(depth)["ANIM_DEVICE"] == "cpu"
    # One depth image: the Dockerfile's depth target takes CPU torch without build args.
    assert depth["build"]["target"] == "depth" and "args" not in depth["build"]
    assert "depth-cpu" not in doc["services"]


def test_seaweedfs_is_the_default_s3_server_and_minio_one_profile_away() -> None:
    defaults = set(env_example()["COMPOSE_PROFILES"].split(","))
    assert defaults == {"seaweedfs", "gpu"}
    active = active_services(compose(), defaults)
    assert "seaweedfs" in active and "minio" not in active and "minio-init" not in active
    with_minio = active_services(compose(), {"minio", "gpu"})
    assert {"minio", "minio-init"} <= set(with_minio) and "seaweedfs" not in with_minio


def test_images_agree_with_kubernetes_and_the_version() -> None:
    version = project_version()
    doc = compose()
    k8s_images = {
        c["image"]
        for d in objects("overlays/gpu") + objects("overlays/dev")
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    for name, svc in doc["services"].items():
        image = svc["image"]
        if image.startswith("ghibli-anim/"):
            repo, tag = image.split(":")
            assert repo == f"ghibli-anim/{svc['build']['target']}", name
            assert tag in (version, f"{version}-cpu"), name
            assert image in k8s_images, f"{name}: {image} not deployed by any overlay"
    # Third-party images: the same in compose and Kubernetes (each of them checked to
    # be published: test_image_references.py).
    assert doc["services"]["nats"]["image"] in k8s_images
    assert doc["services"]["seaweedfs"]["image"] in k8s_images
    assert doc["services"]["minio-init"]["image"] == doc["services"]["minio"]["image"]
    assert DOCKERFILE.exists()


def test_seaweedfs_identities_limit_the_services_to_the_bucket() -> None:
    env = filled_env()
    identities = json.loads(compose(env)["configs"]["seaweedfs-s3"]["content"])
    by_name = {i["name"]: i for i in identities["identities"]}
    services = by_name["ghibli-anim-services"]
    assert services["credentials"] == [
        {"accessKey": env["ANIM_S3_ACCESS_KEY"], "secretKey": env["ANIM_S3_SECRET_KEY"]}
    ]
    bucket = env["ANIM_S3_BUCKET"]
    assert sorted(services["actions"]) == sorted(
        f"{a}:{bucket}" for a in ("Read", "Write", "List", "Tagging")
    )
    # The Kubernetes template grants the same.
    template = json.loads(
        (COMPOSE_FILE.parent / "deploy/s3/seaweedfs-s3-config.template.json").read_text()
    )
    assert template == json.loads(
        compose_raw()["configs"]["seaweedfs-s3"]["content"].replace(
            "${ANIM_S3_BUCKET:-animations}", "animations"
        )
    )


def test_env_example_lists_every_variable_compose_reads() -> None:
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(env_example())
    assert used <= documented, used - documented
    # Secrets are blank in the example: `make .env` fills them in.
    for key, value in env_example().items():
        if key.endswith(("PASSWORD", "SECRET_KEY")) or key in (
            "HF_TOKEN",
            "ANIM_PLANNER_API_KEY",
            "ANIM_CLIENT_TOKEN",
        ):
            assert value == "", key


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert (
        interpolate("${SET}-${UNSET:-d}-${EMPTY:-e}-${EMPTY-f}-$$SET-$SET", env) == "x-d-e--$SET-x"
    )
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?needed}", env)
    assert interpolate("${EMPTY?needed}", env) == ""


def test_minio_init_script_parses_as_shell() -> None:
    svc = compose()["services"]["minio-init"]
    assert svc["entrypoint"] == ["/bin/sh", "-euc"]
    (script,) = svc["command"]
    check = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert (
        "minio-policy.json" in script
        and (COMPOSE_FILE.parent / "deploy/s3/minio-policy.json").exists()
    )
