"""yamllint over every deployment YAML file; the Helm values files against schemas
of the chart keys they set (written from each chart's values.yaml at the pinned
version) and against the rest of the deployment (names, secrets, versions);
the NATS and S3 configuration shared by compose and Kubernetes."""

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
    COMPOSE_FILE,
    DEPLOY,
    HELM,
    NATS_CONF,
    ROOT,
    SCHEMAS,
    SECRET_NAME,
    compose,
    find,
    k8s_secrets_module,
    kubernetes_secrets,
    nats_users,
    objects,
    venv_tool,
)

from ghibli_anim.contracts import config

pytestmark = pytest.mark.timeout(120)

CHARTS = {
    "nats-values.yaml": ("nats/nats", "https://nats-io.github.io/k8s/helm/charts/"),
    "minio-values.yaml": ("minio/minio", "https://charts.min.io/"),
    "seaweedfs-values.yaml": ("seaweedfs/seaweedfs", "https://seaweedfs.github.io/seaweedfs/helm"),
}
YAMLLINT_CONFIG = ROOT / ".yamllint.yaml"


def yaml_files() -> list[Path]:
    files = [COMPOSE_FILE, YAMLLINT_CONFIG]
    files += sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    return files


def yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("yamllint"), "--strict", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_yamllint_passes() -> None:
    files = yaml_files()
    assert len(files) > 15
    result = yamllint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_catches_a_duplicate_key(tmp_path: Path) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text("config:\n  cluster:\n    replicas: 3\n    replicas: 1\n")
    result = yamllint(bad)
    assert result.returncode != 0 and "duplication" in result.stdout


def values(name: str) -> dict[str, Any]:
    return yaml.safe_load((HELM / name).read_text())


def chart_pin(name: str) -> tuple[str, str, str]:
    """(chart, version, repository) from the values file's header."""
    text = (HELM / name).read_text()
    chart = re.search(r"^#\s+chart:\s*(\S+)$", text, re.M)
    version = re.search(r"^#\s+version:\s*(\d+\.\d+\.\d+)$", text, re.M)
    repo = re.search(r"^#\s+repository:\s*(\S+)$", text, re.M)
    assert chart and version and repo, f"{name}: chart, version and repository in the header"
    return chart.group(1), version.group(1), repo.group(1)


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_values_files_pin_their_chart(name: str) -> None:
    chart, version, repo = chart_pin(name)
    assert (chart, repo) == CHARTS[name]
    # The install command in the file and in deploy/README.md use that version.
    text = (HELM / name).read_text()
    assert f"helm upgrade --install {chart.split('/')[0]} {chart} --version {version}" in text
    readme = (DEPLOY / "README.md").read_text()
    assert f"{chart} --version {version}" in readme, f"deploy/README.md: {chart} {version}"


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_values_files_match_their_schema(name: str) -> None:
    schema = json.loads((SCHEMAS / name.replace(".yaml", ".schema.json")).read_text())
    jsonschema.validate(values(name), schema)


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_tls_values_over_their_charts_values_match_the_schema(name: str) -> None:
    """`helm ... -f VALUES -f VALUES-tls`: Helm merges the second over the first."""
    merged = charts.helm_values(values(name), values(charts.TLS_VALUES[name]))
    assert merged != values(name)
    schema = json.loads((SCHEMAS / name.replace(".yaml", ".schema.json")).read_text())
    jsonschema.validate(merged, schema)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("nats-values.yaml", lambda v: v["config"]["cluster"].update(replicas=1)),
        ("nats-values.yaml", lambda v: v["config"]["jetstream"]["merge"].pop("sync_interval")),
        ("nats-values.yaml", lambda v: v["config"].update(jetStream={})),  # misspelt key
        ("minio-values.yaml", lambda v: v["users"][0].update(secretKey="in-the-file")),
        ("minio-values.yaml", lambda v: v["image"].update(tag="latest")),
        ("minio-values.yaml", lambda v: v.update(tls={"enabled": True})),  # no certificate
        ("seaweedfs-values.yaml", lambda v: v["s3"].update(enableAuth=False)),
        ("seaweedfs-values.yaml", lambda v: v["s3"].update(extraArgs=["cert.file=x"])),
    ],
)
def test_the_value_schemas_catch_mistakes(name: str, damage) -> None:
    broken = values(name)
    damage(broken)
    schema = json.loads((SCHEMAS / name.replace(".yaml", ".schema.json")).read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_nats_chart_runs_the_deployments_users_and_durability() -> None:
    v = values("nats-values.yaml")
    assert v["config"]["cluster"]["replicas"] == 3
    assert v["config"]["jetstream"]["merge"]["sync_interval"] == "always"
    env = v["container"]["env"]
    # Every password auth.conf reads, from the Secret under the same name.
    assert set(env) == set(nats_users().values())
    for var, ref in env.items():
        assert ref["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": var}
    # auth.conf comes from the ConfigMap the overlays generate from deploy/nats/.
    (mount,) = [p["value"] for p in v["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    (volume,) = [p["value"] for p in v["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert mount["name"] == volume["name"]
    cm = find(objects("overlays/gpu"), "ConfigMap", volume["configMap"]["name"])
    assert "auth.conf" in cm["data"]
    included = Path("/etc/nats-config") / v["config"]["merge"]["$include"]
    assert included.resolve() == Path(mount["mountPath"]) / "auth.conf"
    # The same NATS release everywhere.
    tag = v["container"]["image"]["tag"]
    assert compose()["services"]["nats"]["image"] == f"nats:{tag}"
    dev_nats = find(objects("overlays/dev"), "StatefulSet", "nats")
    assert dev_nats["spec"]["template"]["spec"]["containers"][0]["image"] == f"nats:{tag}"
    assert chart_pin("nats-values.yaml")[1] == tag.removesuffix("-alpine")


def test_minio_chart_makes_the_bucket_and_one_user_per_service() -> None:
    """Each service's MinIO user has a policy granting what deploy/s3/services.json grants
    it, and its secret key from the Secret deploy/k8s/secrets.py makes."""
    v = values("minio-values.yaml")
    bucket = next(var.default for var in config.VARS if var.name == "ANIM_S3_BUCKET")
    assert [b["name"] for b in v["buckets"]] == [bucket]
    module = k8s_secrets_module()
    services = module.s3_services()
    assert services["bucket"] == bucket
    policies = {p["name"]: p["statements"] for p in v["policies"]}
    users = {u["accessKey"]: u for u in v["users"]}
    made = kubernetes_secrets("gpu")
    assert set(users) == {module.access_key(s) for s in services["services"]}
    for service in services["services"]:
        user = users[module.access_key(service)]
        assert policies[user["policy"]] == module.minio_statements(service), service
        assert user["existingSecret"] == "ghibli-anim-s3"
        assert user["existingSecretKey"] == f"{service}-secret-key"
        assert user["existingSecretKey"] in made["ghibli-anim-s3"]
        for statement in policies[user["policy"]]:
            assert all(r.split(":::")[1].split("/")[0] == bucket for r in statement["resources"])
    image = f"{v['image']['repository']}:{v['image']['tag']}"
    assert image == compose()["services"]["minio"]["image"]
    assert image.endswith("RELEASE.2025-09-07T16-13-09Z")  # the last release published as an image
    assert v["existingSecret"] in made
    assert set(made[v["existingSecret"]]) == {"rootUser", "rootPassword"}


def test_seaweedfs_chart_makes_the_bucket_and_reads_the_identities() -> None:
    v = values("seaweedfs-values.yaml")
    bucket = next(var.default for var in config.VARS if var.name == "ANIM_S3_BUCKET")
    assert [b["name"] for b in v["s3"]["createBuckets"]] == [bucket]
    made = kubernetes_secrets("gpu")
    identities = json.loads(made[v["s3"]["existingConfigSecret"]]["seaweedfs_s3_config"])
    for identity in identities["identities"]:
        if identity["name"] != "admin":
            assert all(a.split(":", 1)[1].startswith(bucket) for a in identity["actions"])


def test_nats_conf_is_durable_and_listens_where_everyone_looks() -> None:
    text = NATS_CONF.read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.M)
    assert re.search(r"^port:\s*4222$", text, re.M)
    assert re.search(r"^http_port:\s*8222$", text, re.M)
    assert re.search(r"^include \./auth\.conf$", text, re.M)
    assert "store_dir" not in text.split("jetstream {", 1)[1].split("}", 1)[0]
