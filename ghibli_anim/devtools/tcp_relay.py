"""A loopback TCP relay for tests and benchmarks: it passes bytes both ways between its
clients and a target port, and can hold each chunk a while (``delay_s``, as a network
between the two would) or freeze its open connections (``freeze``: bytes stop flowing
while the sockets stay open, as with a peer that died without closing, or a NAT that
forgot the connection; connections made afterwards flow normally)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from ghibli_anim.runtime.processes import LOOPBACK


@dataclass
class _Link:
    frozen: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    task: asyncio.Task | None = None


class TcpRelay:
    """Listens on a free loopback port (``port``, once started) and relays to ``target``."""

    def __init__(self, target_host: str, target_port: int, delay_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        """How long each chunk is held before it is passed on, each way."""
        self.links: list[_Link] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self.links)

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        """Stop forwarding on every open connection; their sockets stay open."""
        for link in self.links:
            link.frozen = True

    async def close(self) -> None:
        """Stop listening and close every connection; the pumps end on their own."""
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for writer in link.writers:
                writer.close()
        tasks = [link.task for link in self.links if link.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writers=[writer], task=asyncio.current_task())
        self.links.append(link)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        link.writers.append(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, link), self._pump(up_reader, writer, link)
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if link.frozen:
                    continue  # swallowed: the other side hears nothing, and no close
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        if not link.frozen:
            writer.close()
