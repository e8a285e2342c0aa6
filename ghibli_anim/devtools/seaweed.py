"""SeaweedFS (``weed mini``) as a child process: the S3 server of tests and ``up-local``.

A development tool: the test fixtures, the end-to-end and chaos tests (which
SIGKILL and restart it), the benchmarks and ``ghibli-anim up-local`` start it; a
deployment runs SeaweedFS itself. Process handling (logs, stop, kill, restart,
cleanup at exit) is ``ghibli_anim.runtime.processes.ChildServer``'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
import weakref
from pathlib import Path
from typing import Self

import urllib3
from minio import Minio

from ghibli_anim.runtime.processes import (
    LOOPBACK,
    ChildServer,
    find_binary,
    free_ports,
    port_answers,
)

__all__ = ["SeaweedS3"]

# SeaweedFS listeners that each need their own port (the admin port is fixed at
# 23646 unless given, so two instances would clash without this).
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)

# What weed logs, then exits, when one of the ports it is given is in use: it
# checks them all before binding any (a taken gRPC port it replaces by itself).
_PORT_TAKEN = re.compile(r"Port allocation failed: port \d+ for .*?\(specified by flag ([\w.]+)\)")

# A volume file begins with its superblock (version, replication, TTL...): 8 bytes.
_SUPERBLOCK_BYTES = 8

# Unix socket paths are limited to about 108 bytes; longer folders fall back to
# a short private temporary folder for the sockets only.
_MAX_SOCKET_PATH = 100


def volumes_on_disk(folder: Path) -> int:
    """The volumes in a SeaweedFS data folder that the volume server loads: each ``.dat``
    that holds at least its 8-byte superblock. A server killed while it grew a volume
    leaves an empty ``.dat``, which the next start skips (and the master never counts)."""
    return sum(1 for dat in folder.glob("*.dat") if dat.stat().st_size >= _SUPERBLOCK_BYTES)


class SeaweedS3(ChildServer):
    """A single-process SeaweedFS (``weed mini``) serving S3 on loopback.

    ``access_key``/``secret_key`` get the Admin identity; ``read_only_key`` and
    ``read_only_secret``, when given, a second identity that may only read and
    list. Data, logs, temporary files and sockets stay under ``data_dir``.
    Ports are free ones chosen here (chosen again if another process takes one
    before the first start binds it; ``port`` fixes the S3 one); ``restart()``
    keeps every port and the data, so objects survive a kill.
    """

    name = "seaweedfs"
    stop_grace_s = 10.0

    def __init__(
        self,
        data_dir: Path,
        access_key: str,
        secret_key: str,
        port: int = 0,
        *,
        read_only_key: str | None = None,
        read_only_secret: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        super().__init__(Path(data_dir), "weed.log")
        if not access_key or not secret_key:
            raise ValueError("access_key/secret_key: must not be empty")
        if (read_only_key is None) != (read_only_secret is None):
            raise ValueError("read_only_key/read_only_secret: give both or neither")
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.read_only_key = read_only_key
        self.read_only_secret = read_only_secret
        self.region = region
        self.binary = find_binary("weed")
        self._given_port = port
        self._probe_client: Minio | None = None
        self.ports: dict[str, int] = {}
        self._pick_ports()
        self.config_path = self.data_dir / "identities.json"
        self._socket_dir = self.data_dir / "sock"
        if len(str(self._socket_dir / "filer.sock")) > _MAX_SOCKET_PATH:
            import tempfile  # only on this rare path

            self._socket_dir = Path(tempfile.mkdtemp(prefix="weed-sock-"))
            weakref.finalize(self, shutil.rmtree, str(self._socket_dir), True)

    def _pick_ports(self) -> None:
        """Free ports for every listener; the S3 port stays the one given, if any."""
        self.ports = dict(zip(_WEED_PORTS, free_ports(len(_WEED_PORTS)), strict=True))
        if self._given_port:
            self.ports["s3.port"] = self._given_port
        self._probe_client = None  # it holds the old endpoint

    def _repick_ports(self, log: str) -> bool:
        taken = _PORT_TAKEN.search(log)
        if taken is None:
            return False
        flag = taken.group(1)
        if flag not in self.ports or (flag == "s3.port" and self._given_port):
            return False  # not a port this object chose: fresh ones would not help
        self._pick_ports()
        return True

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        """``host:port`` as the minio SDK wants it (plain HTTP)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def identities(self) -> dict[str, object]:
        """The ``-s3.config`` document: who may do what."""
        ids: list[dict[str, object]] = [
            {
                "name": "admin",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
        if self.read_only_key is not None:
            ids.append(
                {
                    "name": "reader",
                    "credentials": [
                        {"accessKey": self.read_only_key, "secretKey": self.read_only_secret}
                    ],
                    "actions": ["Read", "List"],
                }
            )
        return {"identities": ids}

    def _prepare(self) -> None:
        for sub in ("data", "logs", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._socket_dir.mkdir(parents=True, exist_ok=True)
        # A SIGKILL leaves the socket files behind, and binding them again fails.
        for sock in self._socket_dir.glob("*.sock"):
            sock.unlink(missing_ok=True)
        # The file holds the secret: readable by this user only.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.identities(), f, indent=2)

    def _leftovers(self) -> tuple[Path, ...]:
        # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says, named
        # after the component and its port; they are ours since the ports are.
        return tuple(
            Path(f"/tmp/seaweedfs-{flag.split('.', 1)[0]}-grpc-{port}.sock")
            for flag, port in self.ports.items()
            if flag.endswith(".grpc")
        )

    def _command(self) -> list[str]:
        cmd = [str(self.binary), f"-logdir={self.data_dir / 'logs'}", "mini"]
        cmd += [
            f"-dir={self.data_dir / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={self.config_path}",
            "-s3.allowDeleteBucketNotEmpty=false",
            # Real S3 and MinIO never create a bucket on upload: neither do we.
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # One process holds every component: no peers to warn before stopping.
            "-volume.preStopSeconds=0",
            f"-s3.localSocket={self._socket_dir / 's3.sock'}",
            f"-filer.localSocket={self._socket_dir / 'filer.sock'}",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TMPDIR"] = str(self.data_dir / "tmp")
        return env

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Minio:
        """A minio client for this server (admin credentials unless given)."""
        return Minio(
            self.endpoint,
            access_key=access_key or self.access_key,
            secret_key=secret_key or self.secret_key,
            secure=False,
            region=self.region,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=2.0, read=10.0), retries=False
            ),
        )

    def _ready(self) -> bool:
        # Ready means a signed request passes (S3, filer and credentials are up)
        # and the master knows every volume on disk: until the volume server's
        # first heartbeat, reads of existing objects fail with InternalError.
        if not port_answers(self.port):
            return False
        try:
            self._probe().list_buckets()
            return self._volumes_registered()
        except Exception:  # any failure just means "not yet"
            return False

    def _volumes_registered(self) -> bool:
        on_disk = volumes_on_disk(self.data_dir / "data")
        url = f"http://{LOOPBACK}:{self.ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            topology = json.load(resp)["Topology"]
        nodes = [
            node
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return bool(nodes) and sum(int(n.get("Volumes", 0)) for n in nodes) >= on_disk

    def _probe(self) -> Minio:
        if self._probe_client is None:
            self._probe_client = self.client()
        return self._probe_client

    def start(self, timeout: float = 30.0) -> Self:
        """``ChildServer.start`` with more time: weed starts five servers in one process."""
        return super().start(timeout=timeout)
