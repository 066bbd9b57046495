"""The same echo on the kernel's TCP/IP stack: plain asyncio.start_server and a datagram endpoint.

Behind wireguard-go in the server namespace it is the kernel path of run.py; on the veth address without a
tunnel it is the plain echo of echo_pair.py."""

from __future__ import annotations

import asyncio
import platform

from _common import TRANSFER_PORT, config, echo_stream, ready, run, serve_transfer, wait_for_stop


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await echo_stream(reader, writer, wait_closed=True)


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def main() -> None:
    cfg = config()
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(echo, cfg["host"], cfg["port"], backlog=4096, reuse_address=True)
    transfers = await asyncio.start_server(serve_transfer, cfg["host"], TRANSFER_PORT, reuse_address=True)
    transport, _ = await loop.create_datagram_endpoint(EchoDatagram, local_addr=(cfg["host"], cfg["port"]))
    ready(
        sockname=list(server.sockets[0].getsockname()), version=f"asyncio, Python {platform.python_version()}"
    )
    await wait_for_stop()
    transport.close()
    server.close()
    transfers.close()


if __name__ == "__main__":
    run(main)
