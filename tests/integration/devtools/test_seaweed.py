"""devtools/seaweed.py: a real SeaweedFS S3 server started, killed, restarted and stopped, on
fresh ports when one is taken."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from support.processes import answers, port_taken, starts

from ghibli_anim.devtools import seaweed
from ghibli_anim.devtools.seaweed import SeaweedS3
from ghibli_anim.runtime import processes as launcher
from ghibli_anim.runtime.processes import LauncherError


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
        assert not answers(server.port)
        server.restart()
        assert server.ports == ports
        assert client.get_object("launcher-test", "k").read() == b"kept"
        # The read-only identity reads, and may not write.
        reader = server.client("ro", "rs")
        assert reader.get_object("launcher-test", "k").read() == b"kept"
        with pytest.raises(Exception, match="AccessDenied"):
            reader.put_object("launcher-test", "k2", io.BytesIO(b"x"), 1)
    assert not server.running and not answers(server.port)
    # Logs stay in the data folder; the sockets weed puts in /tmp are gone.
    assert server.log_path.parent == tmp_path / "sw" and server.log_path.stat().st_size > 0
    assert (tmp_path / "sw" / "logs").is_dir()
    assert not any(p.exists() for p in server._leftovers())
    # The identities file holds the secret: private to this user.
    assert server.config_path.stat().st_mode & 0o077 == 0


def test_seaweed_picks_fresh_ports_when_one_is_taken(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "sw", "key", "secret")
    taken = server.port
    with port_taken(taken), server:
        assert server.port != taken
        assert server.client().list_buckets() == []
    log = server.log_path.read_text()
    assert f"port {taken} for S3 (specified by flag s3.port) is not available" in log
    assert starts(server) == 2


def test_seaweed_gives_up_on_a_given_port_or_after_a_few_fresh_ones(
    tmp_path: Path, monkeypatch
) -> None:
    ports = launcher.free_ports(len(seaweed._WEED_PORTS))
    with port_taken(ports[0]):
        given = SeaweedS3(tmp_path / "given", "key", "secret", port=ports[0])
        with pytest.raises(LauncherError, match=r"Port allocation failed: port \d+ for S3"):
            given.start()
        assert starts(given) == 1

        # "Fresh" ports that are the same every time: each try fails the same way.
        monkeypatch.setattr(seaweed, "free_ports", lambda count: ports[:count])
        server = SeaweedS3(tmp_path / "sw", "key", "secret")
        with pytest.raises(LauncherError, match=r"Port allocation failed: port \d+ for Master"):
            server.start()
        assert starts(server) == 1 + launcher._PORT_RETRIES
    assert not server.running and not given.running
