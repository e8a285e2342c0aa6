"""A loopback TCP proxy whose open connections can be frozen: bytes stop flowing both
ways while the sockets stay open, as with a peer that died without closing or a NAT
that forgot the connection. Connections made after a freeze flow normally (the
network came back by another path)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class _Link:
    frozen: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class FreezingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.links: list[_Link] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self.links)

    async def start(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        """Stop forwarding on every open connection; their sockets stay open."""
        for link in self.links:
            link.frozen = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for writer in link.writers:
                writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        link = _Link(writers=[writer, up_writer])
        self.links.append(link)
        await asyncio.gather(
            self._pump(reader, up_writer, link), self._pump(up_reader, writer, link)
        )

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link):
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if link.frozen:
                    continue  # swallowed: the other side hears nothing, and no close
                writer.write(data)
                await writer.drain()
        if not link.frozen:
            writer.close()
