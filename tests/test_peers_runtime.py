"""Peers at runtime, through real WireGuard clients: each peer's statistics, peers added and removed while the
server runs, and the command line's table (SIGUSR1, `--stats`) and reload of `--conf` (SIGHUP)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import pytest

import mitmproxy_wireguard as wg
from helpers import Namespace, close_writer, needs_client, open_connection, start_client
from helpers_cli import Cli, Listening

pytestmark = [needs_client, pytest.mark.timeout(120)]

LISTENING = r"listening on [^ ]+:(\d+)\."


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data


async def ns_connect(
    ns: Namespace, host: str = "10.0.0.42", port: int = 1234, timeout: float = 10
) -> socket.socket:
    """A TCP connection from the namespace's client, non-blocking."""
    sock = ns.socket()
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def ns_echo(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    received = b""
    while len(received) < len(data):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        assert chunk, "closed early"
        received += chunk
    assert received == data


async def cannot_connect(ns: Namespace, seconds: float = 3) -> bool:
    try:
        sock = await ns_connect(ns, timeout=seconds)
    except (asyncio.TimeoutError, OSError):
        return True
    sock.close()
    return False


async def test_statistics_show_each_clients_traffic_connections_and_flows(start, namespaces):
    setup = await start(peers=2, host="0.0.0.0")
    server, cfg = setup.server, setup.cfg
    ns: Namespace = namespaces()
    second = await start_client(
        server,
        cfg.server_public_key,
        cfg.client_private_keys[1],
        addresses=tuple(cfg.peers[1]["allowed_ips"]),
        namespace=ns,
    )
    try:
        before = time.time()
        # The first client: one connection that carries 200 KiB each way and stays open, and datagrams from two
        # source ports.
        reader, writer = await open_connection("10.0.0.42", 1234)
        await echo_once(reader, writer, os.urandom(200 << 10))
        loop = asyncio.get_running_loop()
        udp = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(("10.0.0.42", 53))
            await loop.sock_sendall(sock, b"ping")
            assert await asyncio.wait_for(loop.sock_recv(sock, 100), 10) == b"ping"
            udp.append(sock)
        # The second client: two connections with 10 KiB each way.
        socks = [await ns_connect(ns) for _ in range(2)]
        for sock in socks:
            await ns_echo(sock, os.urandom(5 << 10))

        first_stats, second_stats = await server.peers()
        assert first_stats.public_key == cfg.client_public_keys[0]
        assert second_stats.public_key == cfg.client_public_keys[1]
        assert first_stats.allowed_ips == cfg.peers[0]["allowed_ips"]
        assert first_stats.endpoint == ("127.0.0.1", setup.client.listen_port)
        assert second_stats.endpoint == (ns.there, second.listen_port)
        for stats in (first_stats, second_stats):
            assert stats.last_handshake is not None and before - 5 <= stats.last_handshake <= time.time()
        assert (first_stats.tcp_connections, first_stats.udp_flows) == (1, 2)
        assert (second_stats.tcp_connections, second_stats.udp_flows) == (2, 0)
        # Encrypted, with headers and handshakes: a little more than what was sent, and in as many datagrams
        # as the MTU needs at least.
        for stats, payload in ((first_stats, 200 << 10), (second_stats, 10 << 10)):
            for transferred, datagrams in (
                (stats.rx_bytes, stats.rx_packets),
                (stats.tx_bytes, stats.tx_packets),
            ):
                assert payload < transferred < payload * 1.5 + 20_000, stats
                assert payload // 1420 < datagrams < payload // 100 + 100, stats
        # Its kernel's own router solicitations and the like, from link-local addresses, are all it lost.
        assert {r for r, n in first_stats.drops.items() if n} <= {"local_source"}, first_stats.drops

        # Connections that end are no longer counted.
        for sock in socks:
            sock.close()
        await close_writer(writer)
        for sock in udp:
            sock.close()
        deadline = time.monotonic() + 10
        while any(s.tcp_connections for s in await server.peers()):
            assert time.monotonic() < deadline, await server.peers()
            await asyncio.sleep(0.1)
    finally:
        second.stop()


async def test_peers_added_and_removed_at_runtime(start, namespaces):
    outcomes: dict[str, list[BaseException | bytes]] = {}

    async def handle(stream: wg.TcpStream) -> None:
        seen = outcomes.setdefault(stream.get_extra_info("peer_public_key"), [])
        try:
            while data := await stream.read(65536):
                stream.write(data)
                await stream.drain()
            seen.append(b"")
        except BaseException as e:  # noqa: B036 - the test inspects it
            seen.append(e)
        stream.close()

    setup = await start(handle, host="0.0.0.0")
    server, cfg = setup.server, setup.cfg
    key = wg.genkey()
    public = wg.pubkey(key)
    assert await server.add_peer(public) == ["10.0.0.3/32", "fd00::3/128"]
    with pytest.raises(ValueError, match="public_key"):
        await server.add_peer(public)
    ns: Namespace = namespaces()
    added = await start_client(server, cfg.server_public_key, key, addresses=("10.0.0.3/32",), namespace=ns)
    reader, writer = await open_connection("10.0.0.42", 1234)
    try:
        # The new peer connects at once, beside the first.
        sock = await ns_connect(ns)
        await ns_echo(sock, b"new peer")
        await echo_once(reader, writer, b"old peer")
        assert [s.public_key for s in await server.peers()] == [cfg.client_public_keys[0], public]

        await server.remove_peer(public)
        # Its connection ended as a reset, for the handler and for the client.
        for _ in range(50):
            if outcomes.get(public):
                break
            await asyncio.sleep(0.02)
        assert [type(e) for e in outcomes[public]] == [ConnectionResetError], outcomes
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5):
                pass
        sock.close()
        assert [s.public_key for s in await server.peers()] == [cfg.client_public_keys[0]]
        with pytest.raises(ValueError, match="public_key"):
            await server.remove_peer(public)
        # Nothing of it gets in any more, not even a new handshake of a restarted client.
        assert await cannot_connect(ns)
        added.stop()
        added = await start_client(
            server, cfg.server_public_key, key, addresses=("10.0.0.3/32",), namespace=ns
        )
        assert await cannot_connect(ns)
        assert added.latest_handshake() == 0
        # The first client never noticed.
        await echo_once(reader, writer, b"still here")
        assert outcomes[cfg.client_public_keys[0]] == [], "its connection is still open"
    finally:
        added.stop()
        await close_writer(writer)


def write_conf(path: Path, cfg: wg.Configuration) -> None:
    cfg.to_file(path)


async def test_the_command_line_prints_statistics_on_sigusr1_and_every_n_seconds(tmp_path: Path, wg_clients):
    cfg = wg.Configuration.generate(listen_port=0)
    conf = tmp_path / "server.conf"
    cfg.to_file(conf)
    public = cfg.client_public_keys[0]
    process = Cli("echo", "--conf", str(conf), "--host", "127.0.0.1", "--no-qr")
    timed = None
    try:
        port = int(process.wait_for_stdout(LISTENING).group(1))
        await wg_clients(
            Listening(port),
            cfg.server_public_key,
            cfg.client_private_keys[0],
            addresses=tuple(cfg.peers[0]["allowed_ips"]),
        )
        reader, writer = await open_connection("10.0.0.42", 1234)
        await echo_once(reader, writer, os.urandom(50 << 10))
        process.process.send_signal(signal.SIGUSR1)
        process.wait_for_stdout(rf"^peer: {public.replace('+', '[+]')}$")
        connections = process.wait_for_stdout(r"^  connections: (\d+) TCP open")
        transfer = process.wait_for_stdout(r"^  transfer: ([\d.]+) KiB received \((\d+) packets\)")
        assert connections.group(1) == "1"
        assert 50 < float(transfer.group(1)) < 100 and int(transfer.group(2)) >= 36
        process.wait_for_stdout(r"^  latest handshake: \d+ seconds? ago$")
        await close_writer(writer)
        assert process.stop() == 0

        # `--stats 1` prints on its own; with `--json-log`, as one JSON record per peer.
        timed = Cli("echo", "--conf", str(conf), "--no-qr", "--stats", "0.5", "--json-log")
        records = timed.wait_for(
            lambda: len([r for r in timed.json_records() if r["logger"] == "mitmproxy_wireguard.stats"]) >= 2
        )
        assert records
        record = next(r for r in timed.json_records() if r["logger"] == "mitmproxy_wireguard.stats")
        assert record["public_key"] == public and record["rx_bytes"] == 0 and record["tcp_connections"] == 0
        assert set(record["drops"]) >= {"allowed_ips", "no_session", "malformed"}
        assert timed.stop() == 0
    finally:
        process.kill()
        if timed is not None:
            timed.kill()


async def test_sighup_applies_the_peers_of_a_changed_conf(tmp_path: Path, namespaces):
    cfg = wg.Configuration.generate(listen_port=0)
    conf = tmp_path / "server.conf"
    cfg.to_file(conf)
    process = Cli("echo", "--conf", str(conf), "--no-qr", "--json-log")
    clients = []
    try:
        port = int(process.wait_for_stdout(LISTENING).group(1))
        first_ns: Namespace = namespaces()
        clients.append(
            await start_client(
                Listening(port),
                cfg.server_public_key,
                cfg.client_private_keys[0],
                addresses=tuple(cfg.peers[0]["allowed_ips"]),
                namespace=first_ns,
            )
        )
        first = await ns_connect(first_ns)
        await ns_echo(first, b"first")

        # A second peer appears in the file.
        key = wg.genkey()
        public = wg.pubkey(key)
        changed = wg.Configuration.from_file(conf)
        changed.add_peer(private_key=key)
        changed.to_file(conf)
        process.process.send_signal(signal.SIGHUP)
        process.wait_for_log(lambda r: r["message"] == f"peer {public} added (10.0.0.3/32, fd00::3/128)")
        ns: Namespace = namespaces()
        clients.append(
            await start_client(
                Listening(port), cfg.server_public_key, key, addresses=("10.0.0.3/32",), namespace=ns
            )
        )
        sock = await ns_connect(ns)
        await ns_echo(sock, b"second")

        # It goes again: its connection is reset, it gets in no more, the first peer goes on.
        changed.remove_peer(public)
        changed.to_file(conf)
        process.process.send_signal(signal.SIGHUP)
        process.wait_for_log(lambda r: r["message"] == f"peer {public} removed")
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5):
                pass
        sock.close()
        assert await cannot_connect(ns)
        await ns_echo(first, b"first again")

        # A broken file is logged and changes nothing.
        conf.write_text(conf.read_text() + "[Peer]\nPublicKey = not a key\n")
        process.process.send_signal(signal.SIGHUP)
        error = process.wait_for_log(lambda r: r["message"].startswith("could not reload"))
        assert error["level"] == "error" and "PublicKey" in error["message"], error
        await ns_echo(first, b"still serving")
        first.close()
        assert process.stop() == 0
    finally:
        for client in clients:
            client.stop()
        process.kill()
