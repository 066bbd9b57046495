"""The package's WireGuard client (`connect`, `Tunnel`) against the package's own server, in one process
(the `wg_pair` fixture the package ships, where a real outside client is not the point)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import time
from pathlib import Path
from typing import Any, Callable

import dns.message
import dns.rrset
import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard.testing import start_pair

MIB = 1 << 20


def pattern(n: int, seed: int = 0) -> bytes:
    """`n` bytes that differ from any shifted copy of themselves: a lost or repeated chunk shows."""
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 2048
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(block[:64] + i.to_bytes(8, "big")).digest() + block[: 64 * 1024]
        i += 1
    return bytes(out[:n])


async def digest_then_send(stream: wg.TcpStream) -> None:
    """Reads to EOF, answers with the digest of what came, then with 16 MiB of its own, then FIN."""
    h = hashlib.sha256()
    while chunk := await stream.read(1 << 16):
        h.update(chunk)
    stream.write(h.hexdigest().encode() + b"\n")
    data = pattern(16 * MIB, seed=1)
    for i in range(0, len(data), 1 << 16):
        stream.write(data[i : i + (1 << 16)])
        await stream.drain()
    stream.close()


@pytest.mark.parametrize("dst", ["192.0.2.10", "2001:db8::10"])
async def test_16_mib_each_way_with_half_close(wg_pair: Any, dst: str) -> None:
    pair = await wg_pair(digest_then_send)
    reader, writer = await pair.tunnel.open_connection(dst, 443)
    assert writer.get_extra_info("peername") == (dst, 443)
    sockname = writer.get_extra_info("sockname")
    assert sockname[0] in pair.tunnel.addresses and sockname[1] >= 49152
    sent = pattern(16 * MIB)
    for i in range(0, len(sent), 1 << 16):
        writer.write(sent[i : i + (1 << 16)])
        await writer.drain()
    assert writer.can_write_eof()
    writer.write_eof()  # half-close: the handler reads EOF, then still sends
    line = await asyncio.wait_for(reader.readline(), 60)
    assert line == hashlib.sha256(sent).hexdigest().encode() + b"\n"
    received = await asyncio.wait_for(reader.read(), 60)
    assert hashlib.sha256(received).digest() == hashlib.sha256(pattern(16 * MIB, seed=1)).digest()
    assert reader.at_eof()
    writer.close()
    await writer.wait_closed()


async def test_datagrams_v4_and_v6(wg_pair: Any) -> None:
    def echo(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        pair.server.send_datagram(data[::-1], dst, src)

    pair = await wg_pair(lambda s: s.close(), echo)
    for host in ("198.51.100.3", "2001:db8::3"):
        async with await pair.tunnel.open_datagram(host, 5353) as endpoint:
            local = endpoint.get_extra_info("sockname")
            assert local[0] in pair.tunnel.addresses
            for n in (1, 1400, 4000):  # 4000 bytes are fragmented in the tunnel, both ways
                endpoint.send(bytes(range(256)) * (n // 256) + b"x" * (n % 256))
                data, src = await asyncio.wait_for(endpoint.recvfrom(), 10)
                assert len(data) == n and src == (host, 5353)


async def test_a_datagram_from_another_address_is_not_received_by_a_connected_endpoint(wg_pair: Any) -> None:
    def answer_from_elsewhere(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        pair.server.send_datagram(b"other", ("198.51.100.99", dst[1]), src)
        pair.server.send_datagram(b"right", dst, src)

    pair = await wg_pair(lambda s: s.close(), answer_from_elsewhere)
    async with await pair.tunnel.open_datagram("198.51.100.3", 9) as endpoint:
        endpoint.send(b"?")
        # "other" went first: had the endpoint taken it, it would be the first datagram.
        assert await asyncio.wait_for(endpoint.recv(), 10) == b"right"


async def test_refused_and_reset(wg_pair: Any) -> None:
    pair = await wg_pair(lambda s: s.abort(), accept_connection=lambda key, src, dst: dst[1] != 81)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(pair.tunnel.open_connection("192.0.2.1", 81), 10)
    reader, writer = await pair.tunnel.open_connection("192.0.2.1", 82)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 10)
    writer.close()


async def test_backpressure_holds_the_writer_until_the_handler_reads(wg_pair: Any) -> None:
    go = asyncio.Event()
    total = 32 * MIB
    got: list[int] = []

    async def slow(stream: wg.TcpStream) -> None:
        await go.wait()
        n = 0
        while chunk := await stream.read(1 << 16):
            n += len(chunk)
        got.append(n)
        stream.close()

    pair = await wg_pair(slow)
    reader, writer = await pair.tunnel.open_connection("192.0.2.1", 80)
    chunk = b"z" * (1 << 16)
    written = 0
    stalled = False
    # The handler reads nothing: windows and buffers fill, then drain() waits. Bounded: 32 MiB at most.
    while written < total:
        writer.write(chunk)
        written += len(chunk)
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except asyncio.TimeoutError:
            stalled = True
            break
    assert stalled, "drain() never waited although the other end read nothing"
    assert writer.transport.get_write_buffer_size() > 0
    go.set()
    await asyncio.wait_for(writer.drain(), 30)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 30) == b""
    assert got == [written]
    writer.close()


@pytest.mark.parametrize("size", [48 * 1024, MIB])
async def test_data_that_arrived_before_the_end_is_all_read_after_it(wg_pair: Any, size: int) -> None:
    """Each side half-closes first, then does not read while the other side's data and FIN arrive: the
    connection ends on the wire (both sides in TIME-WAIT) with data still unread, and every byte of it is read
    afterwards, then EOF. The client's transport is paused before the handler writes, so with 48 KiB (within the
    first window) all of it waits in the engine when the FIN comes; 1 MiB goes through flow control on the way.
    Both ends are checked: the client's StreamReader and the handler's stream."""
    data = pattern(size)
    got: list[bytes] = []

    async def write_first_then_read_late(stream: wg.TcpStream) -> None:
        # After the client's first byte: by then the client's transport is paused.
        first = await stream.readexactly(1)
        stream.write(data)
        stream.write_eof()
        await asyncio.sleep(1)
        got.append(first + await stream.read(-1))
        stream.close()

    pair = await wg_pair(write_first_then_read_late)
    reader, writer = await pair.tunnel.open_connection("192.0.2.1", 80)
    writer.transport.pause_reading()
    writer.write(data)
    writer.write_eof()
    await asyncio.sleep(1.5)
    writer.transport.resume_reading()
    assert await asyncio.wait_for(reader.read(), 30) == data
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.1)
    assert got == [data]


def dns_answerer(server: Callable[[], wg.Server], names: dict[str, list[str]]) -> Any:
    """A `receive_datagram` that answers DNS queries to port 53 with `names`."""

    def answer(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        ips = [ip for ip in names.get(name, []) if (":" in ip) == (rdtype == "AAAA")]
        if ips:
            reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", rdtype, *ips))
        server().send_datagram(reply.to_wire(), dst, src)

    return answer


async def test_names_resolve_through_the_tunnels_dns_server() -> None:
    seen: list[tuple[str, int]] = []

    async def note(stream: wg.TcpStream) -> None:
        seen.append(stream.get_extra_info("original_dst"))
        stream.close()

    names = {"dest.test": ["192.0.2.77", "2001:db8::77"]}
    cfg = wg.Configuration.generate(listen_port=0, peers=1)
    server = await wg.start_server("127.0.0.1", cfg, note, dns_answerer(lambda: server, names))
    async with server:
        text = cfg.pretty_print(endpoint=f"127.0.0.1:{server.getsockname()[1]}", dns="10.0.0.53")[0]
        async with wg.connect(text) as tunnel:
            assert await tunnel.resolve("dest.test") == ["192.0.2.77", "2001:db8::77"]
            reader, writer = await tunnel.open_connection("dest.test", 8080)
            assert writer.get_extra_info("peername") == ("192.0.2.77", 8080)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            with pytest.raises(socket.gaierror):
                await tunnel.resolve("missing.test")
    assert seen == [("192.0.2.77", 8080)]


async def test_keys_instead_of_a_file() -> None:
    cfg = wg.Configuration.generate(listen_port=0, peers=1)
    server = await wg.start_server("127.0.0.1", cfg, lambda s: s.close(), lambda *a: None)
    async with server:
        async with wg.connect(
            private_key=cfg.client_private_keys[0],
            public_key=cfg.server_public_key,
            endpoint=f"127.0.0.1:{server.getsockname()[1]}",
            address=cfg.peers[0]["allowed_ips"],
        ) as tunnel:
            reader, writer = await tunnel.open_connection("192.0.2.1", 1)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            assert (await tunnel.stats()).last_handshake is not None


async def test_a_configuration_file(tmp_path: Path) -> None:
    cfg = wg.Configuration.generate(listen_port=0, peers=1)
    server = await wg.start_server("127.0.0.1", cfg, lambda s: s.close(), lambda *a: None)
    async with server:
        path = tmp_path / "client.conf"
        path.write_text(cfg.pretty_print(endpoint=f"127.0.0.1:{server.getsockname()[1]}")[0])
        async with wg.connect(path) as tunnel:
            reader, writer = await tunnel.open_connection("2001:db8::1", 1)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()


BASE = """[Interface]
PrivateKey = {key}
Address = 10.0.0.2/32
[Peer]
PublicKey = {key_pub}
AllowedIPs = 0.0.0.0/0
"""


@pytest.mark.parametrize(
    "extra, field, line",
    [
        ("", "Endpoint", 4),
        ("Endpoint = example.test\n", "Endpoint", 7),
        ("Endpoint = [::1:51820\n", "Endpoint", 7),
        ("Endpoint = 127.0.0.1:0\n", "Endpoint", 7),
        ("Endpoint = 127.0.0.1:1\n[Peer]\nPublicKey = {key_pub}\n", "[Peer]", 8),
        ("Endpoint = 127.0.0.1:1\nListenPort = 5\n", "ListenPort", 8),
    ],
)
async def test_a_bad_client_file_names_the_line_and_field(extra: str, field: str, line: int) -> None:
    key = wg.genkey()
    text = (BASE + extra).format(key=key, key_pub=wg.pubkey(wg.genkey()))
    with pytest.raises(ValueError) as info:
        async with wg.connect(text):
            pass
    assert f"line {line}" in str(info.value) and field in str(info.value)


async def test_bad_keyword_values_name_the_argument() -> None:
    key = wg.genkey()
    good: dict[str, Any] = dict(
        private_key=key, public_key=wg.pubkey(key), endpoint="127.0.0.1:1", address="10.0.0.2"
    )
    for name, value in [
        ("private_key", "nope"),
        ("public_key", "nope"),
        ("endpoint", "127.0.0.1"),
        ("address", "10.0.0.300"),
        ("persistent_keepalive", 0),
        ("mtu", 10),
    ]:
        with pytest.raises(ValueError, match=f"invalid {name}"):
            async with wg.connect(**{**good, name: value}):
                pass
    with pytest.raises(ValueError, match="endpoint.*does not resolve"):
        async with wg.connect(**{**good, "endpoint": "no-such-host.invalid:51820"}):
            pass
    with pytest.raises(TypeError, match="address"):
        async with wg.connect(private_key=key, public_key=wg.pubkey(key), endpoint="127.0.0.1:1"):
            pass


async def test_closing_the_tunnel_ends_connections_and_endpoints() -> None:
    async def hold(stream: wg.TcpStream) -> None:
        with pytest.raises(ConnectionResetError):
            await stream.read()

    async with start_pair(hold) as pair:
        reader, writer = await pair.tunnel.open_connection("192.0.2.1", 80)
        endpoint = await pair.tunnel.open_datagram("192.0.2.1", 53)
        pending = asyncio.ensure_future(reader.read())
        waiting = asyncio.ensure_future(endpoint.recv())
        pair.tunnel.close()
        await asyncio.wait_for(pair.tunnel.wait_closed(), 10)
        with pytest.raises(wg.TunnelClosed):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(wg.TunnelClosed):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(wg.TunnelClosed):
            await pair.tunnel.open_connection("192.0.2.1", 80)


async def test_a_server_restart_in_the_middle() -> None:
    """The server restarts with the same keys and port: the open connection is reset (the new server knows
    nothing of it), and a new one works once WireGuard's timers brought a new handshake about."""
    cfg = wg.Configuration.generate(listen_port=0, peers=1)

    async def echo(stream: wg.TcpStream) -> None:
        while data := await stream.read(65536):
            stream.write(data)
            await stream.drain()
        stream.close()

    server = await wg.start_server("127.0.0.1", cfg, echo, lambda *a: None)
    port = server.getsockname()[1]
    text = cfg.pretty_print(endpoint=f"127.0.0.1:{port}")[0]
    async with wg.connect(text) as tunnel:
        reader, writer = await tunnel.open_connection("192.0.2.1", 7)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"
        first = (await tunnel.stats()).last_handshake
        server.close()
        await server.wait_closed()
        cfg.listen_port = port
        server = await wg.start_server("127.0.0.1", cfg, echo, lambda *a: None)
        async with server:
            start = time.monotonic()
            # The client's data goes unanswered by the new server until a new handshake (15 s later, as
            # WireGuard's timers say); TCP resends meanwhile, and the new server resets the old connection.
            writer.write(b"after")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 60)
            reader, writer = await asyncio.wait_for(tunnel.open_connection("192.0.2.1", 7), 60)
            writer.write(b"again")
            assert await asyncio.wait_for(reader.readexactly(5), 20) == b"again"
            assert (await tunnel.stats()).last_handshake > first
            assert time.monotonic() - start < 60
            writer.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_no_handshake_within_90_s_is_an_error_naming_the_endpoint_and_a_later_server_is_reached() -> (
    None
):
    cfg = wg.Configuration.generate(listen_port=0, peers=1)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    text = cfg.pretty_print(endpoint=f"127.0.0.1:{port}", dns="")[0]
    async with wg.connect(text) as tunnel:
        start = time.monotonic()
        with pytest.raises(wg.NoHandshake) as info:
            await asyncio.wait_for(tunnel.open_connection("192.0.2.1", 80), 120)
        took = time.monotonic() - start
        assert f"127.0.0.1:{port}" in str(info.value) and "90 s" in str(info.value)
        assert isinstance(info.value, ConnectionError)
        assert 89 <= took <= 100, took
        # The server comes up where nothing answered: the next connection starts a new handshake.
        silent.close()
        cfg.listen_port = port
        server = await wg.start_server("127.0.0.1", cfg, lambda s: s.close(), lambda *a: None)
        async with server:
            reader, writer = await asyncio.wait_for(tunnel.open_connection("192.0.2.1", 80), 20)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()


@pytest.mark.parametrize(
    "refusal, dst, error",
    [
        (wg.Refusal.HOST_UNREACHABLE, "192.0.2.1", errno.EHOSTUNREACH),
        (wg.Refusal.NETWORK_UNREACHABLE, "2001:db8::1", errno.ENETUNREACH),
        (wg.Refusal.PROHIBITED, "192.0.2.1", errno.EHOSTUNREACH),
        (wg.Refusal.PROHIBITED, "2001:db8::1", errno.EACCES),
        (wg.Refusal.RESET, "2001:db8::1", errno.ECONNREFUSED),
    ],
)
async def test_an_icmp_error_for_the_syn_fails_the_connection_as_a_kernel_reports_it(
    wg_pair: Any, refusal: wg.Refusal, dst: str, error: int
) -> None:
    pair = await wg_pair(lambda s: s.close(), accept_connection=lambda key, src, dst: refusal)
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        await asyncio.wait_for(pair.tunnel.open_connection(dst, 443), 10)
    assert info.value.errno == error
    assert time.monotonic() - start < 5, "answered by the ICMP error, not a timeout"
