"""TLS to NATS and the S3 server (deploy/k8s/components/tls and the charts' TLS values).

The component is enabled the way deploy/README.md says (in overlays/gpu/common), with
SeaweedFS, the default S3 server, and with the minio component, then rendered and
checked: strict validation, Pod Security, every NATS or S3 client trusting the
component's CA through SSL_CERT_FILE, certificates for the names the clients dial, the
charts mounting those certificates. Then the mechanism for real, with certificates of a
CA of our own (made with the openssl command): the project's NATS connection to a
nats-server that speaks only TLS, and the project's S3 store through SeaweedFS's S3
gateway run with the arguments and mounted files the chart gives it from our values.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import charts
from support.deploy import (
    CLIENT_TOKEN,
    HELM,
    ONE_OFF,
    filled_env,
    k8s_secrets_module,
    kustomize,
    objects,
    pod_templates,
    venv_tool,
)
from support.pod_security import violations

from ghibli_anim.contracts import config, keys
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.processes import (
    LOOPBACK,
    ChildServer,
    NatsServer,
    find_binary,
    free_ports,
    port_answers,
)
from ghibli_anim.runtime.store.base import StoreAuthError, StoreError
from ghibli_anim.runtime.store.s3 import S3Store

pytestmark = pytest.mark.timeout(120)

NATS_AND_S3_CLIENTS = {"planner", "renderer", "depth", "assembler", "bus-init", "trainer"}
S3_CHARTS = {(): "seaweedfs-values.yaml", ("minio",): "minio-values.yaml"}
"""The gpu overlay's S3 server: SeaweedFS's chart, or MinIO's with the minio component."""
PATHS = ("overlays/gpu", *ONE_OFF["gpu"])


def tls_values(name: str) -> dict[str, Any]:
    """A chart's values as `helm -f VALUES -f VALUES-tls` gives them."""
    layers = [yaml.safe_load((HELM / n).read_text()) for n in (name, charts.TLS_VALUES[name])]
    return charts.helm_values(*layers)


@pytest.fixture(scope="module", params=sorted(S3_CHARTS), ids=lambda c: "+".join(c) or "seaweedfs")
def variant(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The optional components besides tls: none (SeaweedFS) or minio."""
    return request.param


@pytest.fixture(scope="module")
def rendered(variant: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    components = (*variant, "tls")
    return {path: objects(path, components) for path in PATHS}


def test_the_overlay_with_tls_validates_strictly(variant, tmp_path: Path) -> None:
    for path in PATHS:
        manifests = tmp_path / f"{path.replace('/', '-')}.yaml"
        manifests.write_text(kustomize(path, (*variant, "tls")))
        result = subprocess.run(
            [venv_tool("kubernetes-validate"), "--strict", str(manifests)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_client_trusts_the_ca_and_dials_tls(rendered) -> None:
    docs = rendered["overlays/gpu"]
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


def seaweedfs_gateway(values: dict[str, Any]) -> dict[str, Any]:
    """The S3 gateway's container and volumes, as the chart model renders them."""
    pods = dict(charts.seaweedfs_pods(values))
    spec = pods["Deployment/seaweedfs-s3"]["spec"]
    (container,) = spec["containers"]
    return {"container": container, "volumes": {v["name"]: v for v in spec["volumes"]}}


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"-{name}=")]
    return value


def served_certificate(name: str) -> tuple[str, str, str]:
    """(Secret, certificate key, private key key) the S3 chart serves TLS with."""
    values = tls_values(name)
    if name == "minio-values.yaml":
        return values["tls"]["certSecret"], values["tls"]["publicCrt"], values["tls"]["privateKey"]
    gateway = seaweedfs_gateway(values)
    cert = Path(flag(gateway["container"]["args"], "cert.file"))
    key = Path(flag(gateway["container"]["args"], "key.file"))
    assert cert.parent == key.parent
    (mount,) = [
        m for m in gateway["container"]["volumeMounts"] if Path(m["mountPath"]) == cert.parent
    ]
    secret = gateway["volumes"][mount["name"]]["secret"]["secretName"]
    return secret, cert.name, key.name


def test_the_certificates_name_what_the_clients_dial(variant, rendered) -> None:
    docs = rendered["overlays/gpu"]
    (settings,) = [
        d["data"] for d in docs if d["metadata"]["name"].startswith("ghibli-anim-config")
    ]
    certificates = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    nats_host = settings["ANIM_NATS_URL"].removeprefix("tls://").rsplit(":", 1)[0]
    s3_host = settings["ANIM_S3_ENDPOINT"].rsplit(":", 1)[0]
    nats_secret = tls_values("nats-values.yaml")["config"]["nats"]["tls"]["secretName"]
    s3_secret, cert_key, private_key = served_certificate(S3_CHARTS[variant])
    # cert-manager writes tls.crt and tls.key into the Secret it names.
    assert (cert_key, private_key) == ("tls.crt", "tls.key")
    by_secret = {c["secretName"]: c for c in certificates.values()}
    assert nats_host in by_secret[nats_secret]["dnsNames"]
    assert s3_host in by_secret[s3_secret]["dnsNames"]
    for cert in (by_secret[nats_secret], by_secret[s3_secret]):
        assert cert["issuerRef"]["name"] in {
            d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"
        }


def test_the_seaweedfs_gateway_serves_https_only_on_the_port_the_services_dial() -> None:
    """A certificate and no `-port.https`: `weed s3` serves HTTPS on `-port` and nothing
    in plain HTTP; the chart's probes ask that port in HTTPS, and its Service still
    forwards the port the services dial."""
    plain = seaweedfs_gateway(yaml.safe_load((HELM / "seaweedfs-values.yaml").read_text()))
    values = tls_values("seaweedfs-values.yaml")
    container = seaweedfs_gateway(values)["container"]
    args = container["args"]
    assert not [a for a in args if a.startswith("-port.https")]
    assert flag(args, "cert.file") and flag(args, "key.file")
    _, port = charts.seaweedfs_s3_service(values)
    assert flag(args, "port") == str(port)
    assert container["ports"] == plain["container"]["ports"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert container[probe]["httpGet"]["port"] == port, probe
    # Everything the gateway mounts is read-only, and the identities are still read.
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] != "/logs/")
    assert flag(args, "config") == flag(plain["container"]["args"], "config")


# --------------------------------------------------------------------------
# For real: the project's clients over TLS, trusting the CA through SSL_CERT_FILE
# --------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def make_pki(d: Path) -> Path:
    """A CA (ca.crt) and a server certificate it signs for localhost and the loopback
    address, under the names cert-manager gives them in its Secrets (tls.crt, tls.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificates")
    d.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=server", cwd=d)
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:localhost,IP:{LOOPBACK}\n")
    sign = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "ext.cnf"]
    openssl("x509", "-req", "-in", "tls.csr", *sign, "-out", "tls.crt", "-days", "1", cwd=d)
    return d


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    """nats-server that requires TLS, its certificate signed by a CA of our own."""
    d = make_pki(tmp_path / "pki")
    conf = tmp_path / "nats.conf"
    conf.write_text(f'tls {{\n  cert_file: "{d}/tls.crt"\n  key_file: "{d}/tls.key"\n}}\n')
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


class ChartGateway(ChildServer):
    """`weed s3` as the SeaweedFS chart's S3 Deployment runs it from our values (the
    arguments of charts.seaweedfs_s3_args), in front of a `weed mini` that is its filer.
    Every Secret the pod mounts is a folder holding its keys as files, as kubelet writes
    it, where the arguments expect it. What must differ on a shared test machine
    (loopback, free ports, the filer's address, no metrics or Iceberg listener) comes
    last: Go's flag parser keeps the last value."""

    name = "weed-s3"

    def __init__(
        self,
        folder: Path,
        gateway: dict[str, Any],
        secrets: dict[str, dict[str, str]],
        filer: SeaweedS3,
        ca: Path,
    ) -> None:
        super().__init__(folder, "weed-s3.log")
        self.filer = filer
        self.ca = ca
        self.port, self.grpc_port = free_ports(2)
        mounts: dict[str, Path] = {}
        for mount in gateway["container"]["volumeMounts"]:
            local = folder / "mounts" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = gateway["volumes"][mount["name"]]
            if "secret" in volume:
                data = secrets[volume["secret"]["secretName"]]  # a Secret nobody makes: KeyError
                items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (local / item["path"]).write_text(data[item["key"]])
            mounts[mount["mountPath"].rstrip("/")] = local
        self.args = [self._local(arg, mounts) for arg in gateway["container"]["args"]]

    @staticmethod
    def _local(arg: str, mounts: dict[str, Path]) -> str:
        name, sep, value = arg.partition("=")
        for path in sorted(mounts, key=len, reverse=True):
            if sep and (value == path or value.startswith(f"{path}/")):
                return f"{name}={mounts[path]}{value[len(path) :]}"
        return arg

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        ports = self.filer.ports
        return [
            str(find_binary("weed")),
            *self.args,
            f"-ip.bind={LOOPBACK}",
            f"-port={self.port}",
            f"-port.grpc={self.grpc_port}",
            "-metricsPort=0",
            "-port.iceberg=0",
            "-port.lance=0",
            f"-localSocket={self.folder / 's3.sock'}",
            f"-filer={LOOPBACK}:{ports['filer.port']}.{ports['filer.port.grpc']}",
        ]

    def _env(self) -> dict[str, str]:
        (self.folder / "tmp").mkdir(exist_ok=True)
        return {**os.environ, "TMPDIR": str(self.folder / "tmp")}

    def _leftovers(self) -> tuple[Path, ...]:
        return (Path(f"/tmp/seaweedfs-s3-grpc-{self.grpc_port}.sock"),)

    def _ready(self) -> bool:
        # What the chart's probes ask, in HTTPS, verifying the certificate against our CA.
        if not port_answers(self.port):
            return False
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(
                f"https://{self.endpoint}/status", timeout=2, context=context
            ) as r:
                return r.status == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChartGateway, dict]]:
    env = filled_env()
    root = tmp_path_factory.mktemp("weed-tls")
    pki = make_pki(root / "pki")
    secrets = {
        d["metadata"]["name"]: d["stringData"]
        for d in k8s_secrets_module().secrets("gpu", {**env, "ANIM_CLIENT_TOKEN": CLIENT_TOKEN})
    }
    # The Secret cert-manager writes for the Certificate the values mount (checked above).
    cert_secret, _, _ = served_certificate("seaweedfs-values.yaml")
    secrets[cert_secret] = {n: (pki / n).read_text() for n in ("tls.crt", "tls.key", "ca.crt")}
    filer = SeaweedS3(root / "mini", env["S3_ROOT_USER"], env["S3_ROOT_PASSWORD"])
    filer.start()
    try:
        filer.client().make_bucket(env["ANIM_S3_BUCKET"])
        gateway = ChartGateway(
            root / "gateway",
            seaweedfs_gateway(tls_values("seaweedfs-values.yaml")),
            secrets,
            filer,
            pki / "ca.crt",
        )
        gateway.start(timeout=30)
        try:
            yield gateway, env
        finally:
            gateway.stop()
    finally:
        filer.stop()


def test_the_services_reach_seaweedfs_over_tls_as_the_chart_runs_it(
    tls_gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renderer's store, with ANIM_S3_SECURE=true, through the gateway started with
    the TLS values' arguments and files: refused while it trusts only the public CAs,
    refused in plain HTTP, working once SSL_CERT_FILE holds the CA, and still limited
    to what its identity in the Secret allows."""
    gateway, env = tls_gateway
    module = k8s_secrets_module()

    def renderer(secure: bool = True) -> S3Store:
        return S3Store(
            gateway.endpoint,
            module.access_key("renderer"),
            module.secret_key(env, "renderer"),
            env["ANIM_S3_BUCKET"],
            secure=secure,
            retry_budget_s=0,
        )

    job = "0123456789abcdef0123456789abcdef"
    frame = keys.frame_key(job, 0)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(StoreError, match=r"(?i)certificate"):
        renderer().put(frame, b"frame0")
    with pytest.raises(StoreError):
        renderer(secure=False).put(frame, b"frame0")
    monkeypatch.setenv("SSL_CERT_FILE", str(gateway.ca))
    store = renderer()
    store.put(frame, b"frame0")
    assert store.get(frame) == b"frame0"
    with pytest.raises(StoreAuthError):
        store.put(keys.plan_key(job), b"{}")
