"""The distributed topology as local processes: nats-server, SeaweedFS and services.

``LocalStack`` is what ``ghibli-anim up-local`` runs and what the end-to-end,
chaos and benchmark code drive: the same ``ghibli-anim serve NAME`` processes a
deployment runs, with the same environment variables, on loopback ports. Each
service can be killed (SIGKILL, as a crash) and started again. With
``restart_crashed`` (what up-local does) a :class:`Supervisor` starts again every
process that exits without being asked to stop, as compose's ``restart:
unless-stopped`` does.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ghibli_anim.contracts import config
from ghibli_anim.contracts.config import SERVICES
from ghibli_anim.contracts.model_refs import tiny_dir
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.devtools.tiny_models import write_tiny_models
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.bus.topology import init_bus_from_settings
from ghibli_anim.runtime.processes import (
    LOOPBACK,
    ChildServer,
    LauncherError,
    NatsServer,
    pick_ports,
)

log = logging.getLogger(__name__)

ACCESS_KEY = "ghibli-local"
SECRET_KEY = "ghibli-local-secret-change-me"
BUCKET = "animations"


def health_status(target: str, timeout: float = 1.0) -> int | None:
    """The overall grpc.health.v1 status of ``target``, None when it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return reply.status


def wait_for_health(target: str, status: int, timeout: float = 20.0) -> bool:
    """Whether ``target``'s health reaches ``status`` within ``timeout`` seconds.

    Asks every 0.2 s rather than once: one health check that misses its deadline on a
    busy machine turns a replica NOT_SERVING until the next check (2 s later), which
    is honest and which a single look would take for the answer.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(target) == status:
            return True
        time.sleep(0.2)
    return False


# What ``ghibli-anim serve`` prints, then exits, when a port it was given is taken.
_SERVE_PORT_TAKEN = re.compile(
    r"^error: ANIM_(?:GRPC_PORT: cannot bind|METRICS_PORT: cannot serve metrics on"
    r"|WEB_HOST/ANIM_WEB_PORT: cannot listen on) \S*?:(\d+)",
    re.MULTILINE,
)


class _ServeProcess(ChildServer):
    """``ghibli-anim serve NAME`` as a child process on loopback ports.

    ``port=0`` picks a free port, and ``metrics=True`` a free port for ``/metrics``
    (ANIM_METRICS_PORT); ports picked here are picked again if another process
    takes one before the first start binds it. A given port stays.
    """

    def __init__(
        self,
        name: str,
        folder: Path,
        env: Mapping[str, str],
        port: int,
        *,
        metrics: bool,
        module: str,
    ) -> None:
        super().__init__(folder, f"{name}.log")
        self.name = name
        self.module = module  # what ``python -m`` runs: the CLI, or a benchmark's wrapper of it
        self._base_env = dict(env)
        self._given_port = port
        self._metrics = metrics
        self.port = 0  # both set by _pick_ports
        self.metrics_port: int | None = None
        """Where ``/metrics`` answers, None unless ``metrics=True``."""
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.port, self.metrics_port = pick_ports(self._given_port, self._metrics)

    def _repick_ports(self, log: str) -> bool:
        chosen = {self.port, self.metrics_port} - {self._given_port}
        return self._pick_again_if_taken(_SERVE_PORT_TAKEN, log, chosen, self._pick_ports)

    def _port_env(self) -> dict[str, str]:
        """The variables that tell the process where to listen."""
        raise NotImplementedError

    @property
    def env(self) -> dict[str, str]:
        """The environment the process starts with (its ports included)."""
        env = {**self._base_env, **self._port_env()}
        if self.metrics_port is not None:
            env["ANIM_METRICS_PORT"] = str(self.metrics_port)
        return env

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "serve", self.name]

    def _env(self) -> dict[str, str]:
        return self.env

    def signal_stop(self, grace: float | None = None) -> None:
        """SIGTERM and wait (graceful drain), SIGKILL after ``grace``."""
        self.stop(grace)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()


class ServiceProcess(_ServeProcess):
    """``ghibli-anim serve NAME`` for one of the four services; ready when its health
    is SERVING. Ports as :class:`_ServeProcess` picks them."""

    stop_grace_s = 30.0

    def __init__(
        self,
        name: str,
        folder: Path,
        env: Mapping[str, str],
        port: int = 0,
        *,
        metrics: bool = False,
        module: str = "ghibli_anim.cli",
    ) -> None:
        if name not in SERVICES:
            raise ValueError(f"service: must be one of {', '.join(SERVICES)}, got {name!r}")
        super().__init__(name, folder, env, port, metrics=metrics, module=module)

    def _port_env(self) -> dict[str, str]:
        return {"ANIM_GRPC_PORT": str(self.port), "ANIM_GRPC_HOST": LOOPBACK}

    def _ready(self) -> bool:
        return health_status(self.target, timeout=0.5) == health_pb2.HealthCheckResponse.SERVING


def http_ready(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET url`` answers 200 (the web page's /readyz)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, 503 (HTTPError), timeout
        return False


class WebProcess(_ServeProcess):
    """``ghibli-anim serve web`` as a child process; ready when /readyz answers 200,
    that is when it listens and the planner it talks to is SERVING."""

    stop_grace_s = 15.0

    def __init__(
        self, folder: Path, env: Mapping[str, str], planner_target: str, port: int = 0
    ) -> None:
        super().__init__("web", folder, env, port, metrics=False, module="ghibli_anim.cli")
        self.planner_target = planner_target

    def _port_env(self) -> dict[str, str]:
        return {
            "ANIM_WEB_PORT": str(self.port),
            "ANIM_WEB_HOST": LOOPBACK,
            "ANIM_PLANNER_TARGET": self.planner_target,
        }

    @property
    def url(self) -> str:
        """The page's base URL, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.target}"

    def _ready(self) -> bool:
        return http_ready(f"{self.url}/readyz", timeout=0.5)


# The deployment's NATS configuration (compose, the Kubernetes dev overlay): with
# ``nats_auth``, up-local runs the very same file, users and permissions included.
NATS_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats.conf"
NATS_USERS = ("bus-init", "planner", "renderer", "depth", "assembler", "submitter")


def nats_password_var(user: str) -> str:
    """Where nats.conf reads a user's password from: NATS_<USER>_PASSWORD."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


class SecuredNats(NatsServer):
    """nats-server with the deployment's nats.conf; passwords only in its environment."""

    def __init__(self, store_dir: Path, passwords: Mapping[str, str]) -> None:
        if not NATS_CONF.is_file():
            raise LauncherError(f"nats_auth: {NATS_CONF} is missing (run from a checkout)")
        super().__init__(store_dir, config_file=NATS_CONF)
        self.passwords = dict(passwords)

    def _env(self) -> dict[str, str]:
        return {**os.environ, **{nats_password_var(u): p for u, p in self.passwords.items()}}


@dataclass
class _Watched:
    """What the supervisor remembers of one server between its looks."""

    streak: int = 0  # starts again in a row that did not stay up ``stable_s``
    due: float | None = None  # when to start it again; None while it runs
    started: float = 0.0  # when it was last started again
    starter: threading.Thread | None = None  # the start again in progress


class Supervisor:
    """A thread that starts again, on the same ports and data folder, every server that
    exits without having been asked to stop (:attr:`ChildServer.crashed`), after a
    back-off: ``first_delay_s`` doubled for each start again in a row that did not stay
    up ``stable_s`` seconds, at most ``max_delay_s`` (compose's restart policy does the
    same). A server stopped with ``stop()`` stays stopped. Each crash and each start
    again is a log line (WARNING), and counted in :attr:`restarts` by label.

    Each start again runs on a thread of its own: a renderer waiting for NATS to be
    ready must not keep NATS itself from being started again.
    """

    poll_s = 0.2
    first_delay_s = 0.5
    max_delay_s = 30.0
    stable_s = 10.0
    start_timeout_s = 120.0

    def __init__(self, servers: Callable[[], Iterable[tuple[str, ChildServer]]]) -> None:
        self._servers = servers  # (label, server) pairs, asked again at every look
        self._watched: dict[int, _Watched] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.restarts: Counter[str] = Counter()
        """Starts again that succeeded, by label (``renderer-1``, ``nats-server``)."""

    def start(self) -> None:
        self._stopping.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Start nothing more. A start again in progress goes on (the caller's stop() of
        that server cuts it short); this returns at once after the next look."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            for label, server in list(self._servers()):
                if self._stopping.is_set():
                    return
                self._look(label, server)

    def _delay(self, watched: _Watched) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2**watched.streak)

    def _look(self, label: str, server: ChildServer) -> None:
        watched = self._watched.setdefault(id(server), _Watched())
        if watched.starter is not None and watched.starter.is_alive():
            return
        if not server.crashed:
            watched.due = None
            return
        now = time.monotonic()
        if watched.due is None:
            if watched.started and now - watched.started < self.stable_s:
                watched.streak += 1
            else:
                watched.streak = 0
            watched.due = now + self._delay(watched)
            log.warning(
                "%s exited with code %s without being asked to stop: starting it again in %.1f s",
                label,
                server.exit_code,
                watched.due - now,
            )
        elif now >= watched.due:
            watched.started = now
            watched.starter = threading.Thread(
                target=self._start_again,
                args=(label, server, watched),
                name=f"restart-{label}",
                daemon=True,
            )
            watched.starter.start()

    def _start_again(self, label: str, server: ChildServer, watched: _Watched) -> None:
        try:
            started = server.revive(timeout=self.start_timeout_s)
        except LauncherError as exc:
            if server.crashed:  # not a stop() that cut the start short
                watched.streak += 1
                watched.due = time.monotonic() + self._delay(watched)
                log.warning(
                    "%s did not start again (%s): next try in %.1f s",
                    label,
                    str(exc).splitlines()[0],
                    self._delay(watched),
                )
            return
        watched.due = None
        if started:  # else stopped or started by someone else meanwhile
            with self._lock:
                self.restarts[label] += 1
            log.warning("%s started again (pid %s)", label, server.pid)


def tiny_cpu_env(cache_dir: Path, threads: int = 1) -> dict[str, str]:
    """The variables of a stack on the ``tiny`` profile, on the CPU with ``threads`` torch
    and OpenCV threads per process; the tiny models are written into ``cache_dir`` first.

    The stack's processes share this machine's few cores: a thread pool per library and
    process, each as large as the machine, would only make them wait for one another."""
    env = {
        "ANIM_CACHE_DIR": str(cache_dir),
        "ANIM_PROFILE": "tiny",
        "ANIM_DEVICE": "cpu",
        "ANIM_DTYPE": "float32",
        "OMP_NUM_THREADS": str(threads),
        "OPENCV_FOR_THREADS_NUM": str(threads),  # OpenCV's parallel_for pool
    }
    write_tiny_models(tiny_dir(config.load("client", {**env, "ANIM_STORE": "local"})))
    return env


class LocalStack:
    """NATS + S3 + the services, each its own process, on loopback.

    ``services`` may also name ``web`` (not started unless asked): the page,
    talking to the first planner over gRPC. With ``nats_auth``, NATS runs the
    deployment's nats.conf and each service logs in as its own user with a fresh
    random password, so a permission missing from auth.conf shows up here too. With
    ``standin``, the services run with instant stand-ins for the model forward calls
    (:mod:`ghibli_anim.devtools.standin`: benchmarks of the chain's own cost only).
    With ``restart_crashed``, a :class:`Supervisor` (``self.supervisor``) starts again,
    from the end of :meth:`start` until :meth:`stop`, any process of the stack (NATS,
    SeaweedFS, a service) that exits without being asked to stop.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        services: Iterable[str] = SERVICES,
        env: Mapping[str, str] | None = None,
        replicas: Mapping[str, int] | None = None,
        nats_auth: bool = False,
        standin: bool = False,
        restart_crashed: bool = False,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.module = "ghibli_anim.devtools.standin" if standin else "ghibli_anim.cli"
        self.nats_passwords = (
            # Letters first, hex after: nats-server reads env values like config values.
            {user: "pw" + secrets.token_hex(16) for user in NATS_USERS} if nats_auth else {}
        )
        self.nats: NatsServer = (
            SecuredNats(self.work_dir / "nats", self.nats_passwords)
            if nats_auth
            else NatsServer(self.work_dir / "nats")
        )
        self.s3 = SeaweedS3(self.work_dir / "s3", ACCESS_KEY, SECRET_KEY)
        self.extra_env = dict(env or {})
        self.processes: dict[str, list[ServiceProcess | WebProcess]] = {}
        # The web page needs the planner's address: it is added after the planner.
        ordered = sorted(services, key=lambda name: name == "web")
        self._wanted = {name: (replicas or {}).get(name, 1) for name in ordered}
        self.supervisor = Supervisor(self.servers) if restart_crashed else None

    def servers(self) -> list[tuple[str, ChildServer]]:
        """Every process of the stack with its label: ``nats-server``, ``s3``, then each
        service replica as ``NAME-INDEX`` (its folder under ``services/``)."""
        found: list[tuple[str, ChildServer]] = [("nats-server", self.nats), ("s3", self.s3)]
        for procs in list(self.processes.values()):
            found += [(proc.folder.name, proc) for proc in list(procs)]
        return found

    def login(self, user: str) -> dict[str, str]:
        """ANIM_NATS_USER/PASSWORD of ``user`` with nats_auth, else nothing."""
        if not self.nats_passwords:
            return {}
        return {"ANIM_NATS_USER": user, "ANIM_NATS_PASSWORD": self.nats_passwords[user]}

    def env(self) -> dict[str, str]:
        """The environment of every service (as compose sets it)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
        base.update(
            {
                "ANIM_NATS_URL": self.nats.url,
                "ANIM_STORE": "s3",
                "ANIM_S3_ENDPOINT": self.s3.endpoint,
                "ANIM_S3_ACCESS_KEY": ACCESS_KEY,
                "ANIM_S3_SECRET_KEY": SECRET_KEY,
                "ANIM_S3_BUCKET": BUCKET,
                "ANIM_S3_REGION": self.s3.region,
                "ANIM_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(self.extra_env)
        return base

    def start(self, timeout: float = 120.0) -> Self:
        self.nats.start()
        self.s3.start()
        self._init()
        for name, count in self._wanted.items():
            for _ in range(count):
                self.add(name, start=False)
        deadline = time.monotonic() + timeout
        for procs in self.processes.values():
            for proc in procs:
                proc.start(timeout=max(5.0, deadline - time.monotonic()))
        if self.supervisor is not None:
            self.supervisor.start()
        return self

    def _init(self) -> None:
        import asyncio

        from ghibli_anim.runtime.store.s3 import S3Store

        settings = config.load("client", {**self.env(), **self.login("bus-init")})
        S3Store.from_settings(settings).ensure_bucket()

        async def init() -> None:
            conn = await connect(settings, "bus-init", first_connect_timeout_s=10)
            try:
                await init_bus_from_settings(conn.js, settings)
            finally:
                await conn.close()

        asyncio.run(init())

    def add(
        self,
        name: str,
        *,
        start: bool = True,
        env: Mapping[str, str] | None = None,
        metrics: bool = False,
    ) -> ServiceProcess | WebProcess:
        """One more replica of ``name`` (its own port and log file); ``env``
        adds or overrides variables of this replica only (e.g. ANIM_FAULT);
        ``metrics`` serves a service's ``/metrics`` on a port of its own
        (``metrics_port``)."""
        index = len(self.processes.get(name, []))
        folder = self.work_dir / "services" / f"{name}-{index}"
        proc: ServiceProcess | WebProcess
        if name == "web":
            if not self.processes.get("planner"):
                raise ValueError("web: needs a planner in the stack (add it first)")
            # The page holds no NATS or store credentials: only the planner client's.
            web_env = {
                k: v
                for k, v in {**self.env(), **(env or {})}.items()
                if not k.startswith(("ANIM_NATS_", "ANIM_S3_"))
            }
            if metrics:
                raise ValueError("metrics: the web page serves /metrics on its own port already")
            proc = WebProcess(folder, web_env, self.planner_target)
        else:
            proc = ServiceProcess(
                name,
                folder,
                {**self.env(), **self.login(name), **(env or {})},
                metrics=metrics,
                module=self.module,
            )
        self.processes.setdefault(name, []).append(proc)
        if start:
            proc.start(timeout=120)
        return proc

    def service(self, name: str, index: int = 0) -> ServiceProcess | WebProcess:
        return self.processes[name][index]

    @property
    def web_url(self) -> str:
        """Base URL of the first web process."""
        web = self.service("web")
        assert isinstance(web, WebProcess)
        return web.url

    @property
    def planner_target(self) -> str:
        return self.service("planner").target

    def logs(self) -> str:
        """Every service log, for a failing test's report."""
        parts = []
        for procs in self.processes.values():
            for proc in procs:
                if proc.log_path.exists():
                    parts.append(f"==> {proc.log_path} <==\n{proc.log_path.read_text()[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()  # first, so that nothing starts again behind us
        errors = []
        for procs in self.processes.values():
            for proc in procs:
                try:
                    proc.stop()
                except LauncherError as exc:  # keep stopping the rest
                    errors.append(exc)
        self.s3.stop()
        self.nats.stop()
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
