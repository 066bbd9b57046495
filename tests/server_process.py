"""An echo server in a process of its own, so that tests can measure its memory apart from the clients'.

    python server_process.py CONFIG_JSON

Listens on 127.0.0.1 (port from the configuration, 0 for any) and prints `{"port": N}` once ready. Then it takes
one command per line on stdin and answers each with one JSON line on stdout:

- `stats`: open streams, running asyncio tasks, datagrams received so far;
- `hold` / `release`: new connections' handlers wait before their first read until `release` (a slow handler);
- `block SECONDS`: blocks the event loop (a slow callback in the user's code);
- `amplify COUNT SIZE`: from now on, each datagram is answered with COUNT datagrams of SIZE bytes instead of
  its echo (`amplify 1 0` echoes again);
- `close`: closes the server and exits.

Echo: TCP data comes back as it is read; in held connections, the handler reads everything first and then
answers with the SHA-256 and length of what it read. UDP datagrams come back to their sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time

import mitmproxy_wireguard as wg


async def main(cfg: wg.Configuration) -> None:
    loop = asyncio.get_running_loop()
    released = asyncio.Event()
    released.set()
    streams = 0
    datagrams = 0
    amplify: tuple[int, bytes] | None = None
    server: wg.Server

    async def handle(stream: wg.TcpStream) -> None:
        nonlocal streams
        streams += 1
        try:
            if not released.is_set():
                await released.wait()
                digest = hashlib.sha256()
                length = 0
                while data := await stream.read(65536):
                    digest.update(data)
                    length += len(data)
                stream.write(f"{digest.hexdigest()} {length}\n".encode())
            else:
                while data := await stream.read(65536):
                    stream.write(data)
                    await stream.drain()
            stream.close()
            await stream.wait_closed()
        finally:
            streams -= 1

    def receive_datagram(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        nonlocal datagrams
        datagrams += 1
        if amplify is None:
            server.send_datagram(data, dst, src)
            return
        count, answer = amplify
        for _ in range(count):
            server.send_datagram(answer, dst, src)

    server = await wg.start_server("127.0.0.1", cfg, handle, receive_datagram)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(**values: object) -> None:
        print(json.dumps(values), flush=True)

    answer(port=server.getsockname()[1])
    async with server:
        while line := (await reader.readline()).decode().strip():
            command, *args = line.split()
            if command == "stats":
                answer(streams=streams, tasks=len(asyncio.all_tasks()), datagrams=datagrams)
            elif command == "hold":
                released.clear()
                answer(ok=True)
            elif command == "release":
                released.set()
                answer(ok=True)
            elif command == "block":
                answer(ok=True)
                time.sleep(float(args[0]))
            elif command == "amplify":
                count, size = int(args[0]), int(args[1])
                amplify = None if size == 0 else (count, bytes(size))
                answer(ok=True)
            elif command == "close":
                break
            else:
                answer(error=f"unknown command {command!r}")
    answer(closed=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s: %(message)s")
    # Per-packet records would only slow the measurements down.
    logging.getLogger("mitmproxy_wireguard.network.stack").setLevel(logging.INFO)
    logging.getLogger("mitmproxy_wireguard.wireguard").setLevel(logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    asyncio.run(main(wg.Configuration.from_json(sys.argv[1])))
