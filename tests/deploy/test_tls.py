"""TLS to NATS and the S3 server (deploy/k8s/components/tls and the charts' TLS values).

The component is enabled the way deploy/README.md says (in overlays/gpu/common) in a
copy of deploy/, then rendered and checked: strict validation, Pod Security, every NATS
or S3 client trusting the component's CA through SSL_CERT_FILE, certificates for the
names the clients dial. Then the mechanism for real: the project's own NATS connection
to a nats-server that speaks only TLS, trusting its CA through SSL_CERT_FILE alone
(certificates made with the openssl command).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.deploy import DEPLOY, HELM, pod_templates, venv_tool
from support.pod_security import violations

from ghibli_anim.contracts import config
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.processes import LOOPBACK, NatsServer

pytestmark = pytest.mark.timeout(120)

NATS_AND_S3_CLIENTS = {"planner", "renderer", "depth", "assembler", "bus-init", "trainer"}


def enable_tls(tmp_path: Path) -> Path:
    """A copy of deploy/ with the component listed in overlays/gpu/common, as documented."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    common = copy / "k8s/overlays/gpu/common/kustomization.yaml"
    text = common.read_text()
    assert "\nnamespace: ghibli-anim\n" in text
    common.write_text(
        text.replace(
            "\nnamespace: ghibli-anim\n",
            "\nnamespace: ghibli-anim\n\ncomponents:\n  - ../../../components/tls\n",
            1,
        )
    )
    return copy / "k8s/overlays/gpu"


def build(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    gpu = enable_tls(tmp_path_factory.mktemp("tls"))
    return {name: build(gpu / name) for name in (".", "jobs", "trainer")}


def test_the_overlay_with_tls_validates_strictly(rendered, tmp_path: Path) -> None:
    for name, docs in rendered.items():
        path = tmp_path / f"{name.strip('.') or 'always'}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        result = subprocess.run(
            [venv_tool("kubernetes-validate"), "--strict", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_client_trusts_the_ca_and_dials_tls(rendered) -> None:
    docs = rendered["."]
    (settings,) = [
        d["data"] for d in docs if d["metadata"]["name"].startswith("ghibli-anim-config")
    ]
    assert settings["ANIM_NATS_URL"].startswith("tls://")
    assert config.load("client", {**settings, "ANIM_GRPC_PORT": ""})["ANIM_S3_SECURE"] is True
    certificates = {
        d["metadata"]["name"]: d["spec"]
        for docs in rendered.values()
        for d in docs
        if d["kind"] == "Certificate"
    }
    ca_secret = certificates["ghibli-anim-ca"]["secretName"]
    checked = set()
    for docs in rendered.values():
        for where, template in pod_templates(docs):
            assert violations(template, "restricted") == [], where
            name = template["metadata"]["labels"]["app.kubernetes.io/name"]
            if name not in NATS_AND_S3_CLIENTS:
                continue
            spec = template["spec"]
            (container,) = spec["containers"]
            env = {v["name"]: v.get("value") for v in container["env"]}
            bundle = Path(env["SSL_CERT_FILE"])
            (init,) = spec["initContainers"]
            (script,) = init["args"]
            assert script.endswith(f"> {bundle}")
            assert "/etc/ssl/certs/ca-certificates.crt" in script  # the public CAs stay trusted
            volumes = {v["name"]: v for v in spec["volumes"]}
            ca_mount = next(
                m for m in init["volumeMounts"] if m["mountPath"] == "/etc/ghibli-anim/ca"
            )
            assert volumes[ca_mount["name"]]["secret"]["secretName"] == ca_secret
            assert f"{ca_mount['mountPath']}/ca.crt" in script
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts[str(bundle.parent)] == next(
                m["name"] for m in init["volumeMounts"] if m["mountPath"] == str(bundle.parent)
            )
            assert init["image"] == container["image"] or init["image"].startswith(
                "ghibli-anim/planner:"
            )
            checked.add(name)
    assert checked == NATS_AND_S3_CLIENTS


def test_the_certificates_name_what_the_clients_dial(rendered) -> None:
    docs = rendered["."]
    (settings,) = [
        d["data"] for d in docs if d["metadata"]["name"].startswith("ghibli-anim-config")
    ]
    certificates = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    nats_host = settings["ANIM_NATS_URL"].removeprefix("tls://").rsplit(":", 1)[0]
    s3_host = settings["ANIM_S3_ENDPOINT"].rsplit(":", 1)[0]
    nats_values = yaml.safe_load((HELM / "nats-values-tls.yaml").read_text())
    minio_values = yaml.safe_load((HELM / "minio-values-tls.yaml").read_text())
    nats_cert = next(
        c
        for c in certificates.values()
        if c["secretName"] == nats_values["config"]["nats"]["tls"]["secretName"]
    )
    minio_cert = next(
        c for c in certificates.values() if c["secretName"] == minio_values["tls"]["certSecret"]
    )
    assert nats_host in nats_cert["dnsNames"]
    assert s3_host in minio_cert["dnsNames"]
    for cert in (nats_cert, minio_cert):
        assert cert["issuerRef"]["name"] in {
            d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"
        }


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def tls_nats(tmp_path: Path) -> tuple[NatsServer, Path]:
    """nats-server that requires TLS, its certificate signed by a CA of our own."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    d = tmp_path / "pki"
    d.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=nats",
        cwd=d,
    )
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:localhost,IP:{LOOPBACK}\n")
    sign = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "ext.cnf"]
    openssl("x509", "-req", "-in", "server.csr", *sign, "-out", "server.crt", "-days", "1", cwd=d)
    conf = tmp_path / "nats.conf"
    conf.write_text(f'tls {{\n  cert_file: "{d}/server.crt"\n  key_file: "{d}/server.key"\n}}\n')
    server = NatsServer(tmp_path / "nats", config_file=conf)
    server.start()
    try:
        yield server, d / "ca.crt"
    finally:
        server.stop()


def test_the_services_nats_connection_speaks_tls_trusting_ssl_cert_file(
    tls_nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_nats
    settings = config.load("client", {"ANIM_NATS_URL": f"tls://{LOOPBACK}:{server.port}"})

    async def round_trip(timeout_s: float = 10) -> bytes:
        bus = await connect(settings, "tls-test", first_connect_timeout_s=timeout_s)
        try:
            sub = await bus.nc.subscribe("tls.check")
            await bus.nc.publish("tls.check", b"over tls")
            msg = await sub.next_msg(timeout=5)
            return msg.data
        finally:
            await bus.close()

    # Trusting only the system's CAs, the server's certificate is refused...
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ConnectionError):
        asyncio.run(round_trip(timeout_s=3))
    # ... and with the CA in SSL_CERT_FILE (what the component's init container writes),
    # the connection is made and verified.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert asyncio.run(round_trip()) == b"over tls"
