"""The relay whose open connections can be frozen (``devtools/tcp_relay.py``), under the
name the liveness tests use."""

from __future__ import annotations

from ghibli_anim.devtools.tcp_relay import TcpRelay as FreezingProxy

__all__ = ["FreezingProxy"]
