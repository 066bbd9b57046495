"""`forward` as a user runs it: the proxy in this namespace, a test host in a namespace of its own (an HTTP server,
a TCP and UDP echo and a DNS server that never answers, on a documentation address), and real WireGuard clients in
namespaces of their own, set up from the configurations that the command printed. Everything a client sends goes
through the tunnel and on through the proxy."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype
import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard import forward
from helpers import (
    Namespace,
    assert_udp_echo,
    connect,
    needs_client,
    run,
    wait_for_tcp,
)
from helpers_cli import LISTENING, Listening, client_configs, client_settings, flow_records

pytestmark = [needs_client, pytest.mark.timeout(120)]

TEST_HOST = "192.0.2.80"
TEST_NAME = "testhost.example"
# An address routed to the test host, which drops what is sent to it: a destination that never answers.
SILENT_HOST = "203.0.113.9"

ECHO = """
import socket, threading

def silent_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(({host!r}, 53))
    while True:
        s.recv(65535)

def tcp_echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)

def tcp_server():
    server = socket.create_server(({host!r}, 7))
    while True:
        threading.Thread(target=tcp_echo, args=(server.accept()[0],), daemon=True).start()

threading.Thread(target=silent_dns, daemon=True).start()
threading.Thread(target=tcp_server, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({host!r}, 7))
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
"""


@pytest.fixture
def test_host(namespaces, tmp_path: Path):
    """A namespace with an HTTP server (a 4 MiB file), a TCP and UDP echo (port 7) and a DNS server that never
    answers on TEST_HOST, routed from here; SILENT_HOST is routed there too."""
    host: Namespace = namespaces()
    host.ip("address", "add", f"{TEST_HOST}/32", "dev", "lo")
    # `replace`: the route of an earlier test may outlive its namespace for a moment.
    run("ip", "route", "replace", f"{TEST_HOST}/32", "via", host.there)
    run("ip", "route", "replace", f"{SILENT_HOST}/32", "via", host.there)
    site = tmp_path / "site"
    site.mkdir()
    (site / "blob").write_bytes(os.urandom(4 << 20))
    processes = [
        subprocess.Popen(
            host.exec(
                sys.executable, "-m", "http.server", "80", "--bind", TEST_HOST, "--directory", str(site)
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(host.exec(sys.executable, "-c", ECHO.format(host=TEST_HOST))),
    ]
    try:
        wait_for_tcp((TEST_HOST, 80))
        yield host, site
    finally:
        for process in processes:
            process.kill()
            process.wait(5)


@pytest.fixture
def proxy(forward_cli, tmp_path: Path):
    """`forward_cli` in a mount namespace whose /etc/hosts knows TEST_NAME and whose resolver asks the test
    host's DNS server (which never answers) for other names."""
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    # This host's name too: the endpoint in the printed configurations is its address.
    hosts.write_text(f"127.0.0.1 localhost {socket.gethostname()}\n{TEST_HOST} {TEST_NAME}\n")
    resolv.write_text(f"nameserver {TEST_HOST}\n")
    mount = " && ".join(
        f"mount --bind {shlex.quote(str(path))} {target}"
        for path, target in ((hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf"))
    )
    prefix = ("unshare", "--mount", "sh", "-c", mount + ' && exec "$@"', "sh")

    async def start(*extra: str, peers: int = 1) -> tuple[Any, ...]:
        return await forward_cli(*extra, peers=peers, prefix=prefix)

    return start


async def test_curl_fetches_a_file_through_the_proxy_intact(test_host, proxy):
    _, site = test_host
    process, client_ns = await proxy()
    out = await asyncio.to_thread(
        subprocess.run,
        client_ns.exec("curl", "-sS", "--max-time", "60", f"http://{TEST_HOST}/blob"),
        capture_output=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    blob = (site / "blob").read_bytes()
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()
    # One log line for the finished connection, with its numbers.
    record = process.wait_for(lambda: flow_records(process, "tcp", f"{TEST_HOST}:80"), timeout=10)[0]
    assert record["bytes_down"] > len(blob) and record["bytes_up"] > 0
    assert record["client"].startswith("10.0.0.") and record["duration"] >= 0


async def test_udp_and_dns_through_the_proxy(test_host, proxy):
    process, client_ns = await proxy()
    loop = asyncio.get_running_loop()
    with client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((TEST_HOST, 7))
        await assert_udp_echo(sock, (b"datagram %d " % i + os.urandom(500) for i in range(5)))

    # DNS to the tunnel's resolver address is answered with the proxy host's resolver.
    with client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("10.0.0.53", 53))
        query = dns.message.make_query(TEST_NAME, dns.rdatatype.A)
        await loop.sock_sendall(sock, query.to_wire())
        answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 10))
    assert answer.id == query.id
    assert [rr.address for rrset in answer.answer for rr in rrset] == [TEST_HOST]


async def curl(ns: Namespace, *args: str) -> tuple[int, str, float]:
    """curl in `ns`, its output thrown away: its exit code, what it printed on stderr and how long it took."""
    started = time.monotonic()
    out = await asyncio.to_thread(
        subprocess.run,
        ns.exec("curl", "-sS", "-o", "/dev/null", *args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, out.stderr, time.monotonic() - started


async def test_the_proxy_hosts_own_addresses_are_refused(test_host, proxy):
    """The proxy decides on the client's SYN: a destination its policy refuses gets an ICMP destination
    unreachable (administratively prohibited) at once, as from a firewall, and nothing reaches the service."""
    host, _ = test_host
    # A service on the proxy's host: reachable through the tunnel only if the proxy forgot to refuse it.
    with socket.create_server(("0.0.0.0", 0)) as service:
        service.setblocking(False)
        port = service.getsockname()[1]
        process, client_ns = await proxy()
        code, stderr, took = await curl(client_ns, "--max-time", "10", f"http://{host.here}:{port}/")
        # curl 7: "Failed to connect ... Couldn't connect to server" (curl names no errno), at once.
        assert code == 7 and "Failed to connect" in stderr, (code, stderr)
        assert took < 5
        # The kernel reads the ICMP error as "No route to host".
        with client_ns.socket() as sock:
            sock.settimeout(10)
            assert sock.connect_ex((host.here, port)) == errno.EHOSTUNREACH
        with pytest.raises(BlockingIOError):
            service.accept()
        record = process.wait_for(lambda: flow_records(process, "tcp", f"{host.here}:{port}"), timeout=10)[0]
        assert record["outcome"] == "refused: an address of this host", record
        assert record["bytes_up"] == record["bytes_down"] == 0


@pytest.mark.parametrize(
    "address, refusal",
    [
        ("169.254.169.254", "a link-local address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("168.63.129.16", "a cloud metadata address"),
        ("192.0.0.192", "a cloud metadata address"),
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.2", "an address inside the tunnel"),
        ("198.51.100.7", None),
    ],
)
def test_metadata_services_and_local_destinations_are_refused_unless_allowed(
    address: str, refusal: str | None
) -> None:
    """Checked on the proxy's policy alone: a connection to a real metadata service would leave this machine."""
    cfg = wg.Configuration.generate()
    assert forward.Policy(cfg).refusal(address) == refusal
    allowed = None if refusal != "an address inside the tunnel" else refusal
    assert forward.Policy(cfg, allow_local=True).refusal(address) == allowed


@pytest.mark.parametrize(
    "address, refusal",
    [
        ("64:ff9b::7f00:1", "a loopback address (in a NAT64 address)"),
        ("64:ff9b::127.0.0.53", "a loopback address (in a NAT64 address)"),
        ("64:ff9b::a9fe:a9fe", "a link-local address (in a NAT64 address)"),
        ("64:ff9b::a864:81b", None),  # 168.100.8.27: not a metadata service
        ("64:ff9b::a83f:8110", "a cloud metadata address (in a NAT64 address)"),
        ("64:ff9b::ffff:ffff", "a multicast or broadcast address (in a NAT64 address)"),
        ("64:ff9b::", "the unspecified address (in a NAT64 address)"),
        ("64:ff9b::a00:2", "an address inside the tunnel (in a NAT64 address)"),
        ("64:ff9b::c633:6407", None),  # 198.51.100.7
        ("2002:7f00:1::", "a loopback address (in a 6to4 address)"),
        ("2002:7f00:1:1::5", "a loopback address (in a 6to4 address)"),
        ("2002:a9fe:a9fe::", "a link-local address (in a 6to4 address)"),
        ("2002:6464:64c8::1", "a cloud metadata address (in a 6to4 address)"),
        ("2002:a00:2::", "an address inside the tunnel (in a 6to4 address)"),
        ("2002:c633:6407::1", None),
    ],
)
def test_nat64_and_6to4_destinations_are_judged_by_the_ipv4_address_they_carry(
    address: str, refusal: str | None
) -> None:
    """Checked on the proxy's policy alone: no connection is made."""
    cfg = wg.Configuration.generate()
    assert "10.0.0.2/32" in cfg.peers[0]["allowed_ips"]
    assert forward.Policy(cfg).refusal(address) == refusal
    inside = refusal is not None and refusal.startswith("an address inside the tunnel")
    assert forward.Policy(cfg, allow_local=True).refusal(address) == (refusal if inside else None)


def outbound_connections(host: str, port: int) -> str:
    """`ss` lines of the proxy's established connections to `host:port`, with their timers."""
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", "dst", f"{host}:{port}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout.strip()


async def test_a_tcp_connection_idle_for_the_timeout_is_reset_on_both_sides(test_host, proxy):
    process, client_ns = await proxy("--tcp-idle-timeout", "2")
    loop = asyncio.get_running_loop()
    with await connect(client_ns, (TEST_HOST, 7)) as sock:
        # Talking for longer than the timeout keeps the connection.
        for i in range(8):
            await loop.sock_sendall(sock, b"ping %d" % i)
            assert await asyncio.wait_for(loop.sock_recv(sock, 100), 10) == b"ping %d" % i
            await asyncio.sleep(0.5)
        silent = time.monotonic()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
        assert 1 <= time.monotonic() - silent <= 5
    record = process.wait_for(lambda: flow_records(process, "tcp", f"{TEST_HOST}:7"), timeout=10)[0]
    assert record["outcome"] == "idle for 2 s", record
    assert record["duration"] >= 5.5 and record["bytes_up"] == record["bytes_down"] > 0
    assert outbound_connections(TEST_HOST, 7) == ""


async def test_connections_to_destinations_have_tcp_keepalive(test_host, proxy):
    """A destination that vanishes without a word is noticed by keepalive probes, and its flow ends."""
    _, client_ns = await proxy()
    loop = asyncio.get_running_loop()
    with await connect(client_ns, (TEST_HOST, 7)) as sock:
        await loop.sock_sendall(sock, b"hello")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 10) == b"hello"
        line = outbound_connections(TEST_HOST, 7)
        assert "timer:(keepalive," in line, line


async def test_an_idle_udp_flow_ends_after_the_timeout(test_host, proxy):
    process, client_ns = await proxy("--udp-idle-timeout", "1")
    loop = asyncio.get_running_loop()
    with client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((TEST_HOST, 7))
        for expected_flows in (1, 2):
            await loop.sock_sendall(sock, b"hello")
            assert await asyncio.wait_for(loop.sock_recv(sock, 100), 10) == b"hello"
            records = process.wait_for(
                lambda: len(flow_records(process, "udp", f"{TEST_HOST}:7")) == expected_flows
                and flow_records(process, "udp", f"{TEST_HOST}:7"),
                timeout=10,
            )
            assert records[-1]["outcome"] == "idle for 1 s", records
            assert 1 <= records[-1]["duration"] < 5


async def test_a_destination_that_never_answers_never_answers_the_client_either(test_host, proxy):
    """The proxy gives up after its connect timeout, and the client's SYN stays unanswered: the client times out
    as it would without the proxy, rather than seeing its connection accepted and then reset."""
    process, client_ns = await proxy("--connect-timeout", "1")
    code, stderr, took = await curl(client_ns, "--connect-timeout", "3", f"http://{SILENT_HOST}/")
    assert code == 28, (code, stderr)  # curl's "operation timed out"
    assert took >= 3
    record = process.wait_for(lambda: flow_records(process, "tcp", f"{SILENT_HOST}:80"), timeout=10)[0]
    assert record["outcome"] == "unreachable: timed out", record
    assert 1 <= record["duration"] < 4


async def test_a_refused_port_is_refused_to_the_client_at_once(test_host, proxy):
    """Nothing listens on the port: the destination's RST becomes the client's, before any handshake."""
    process, client_ns = await proxy()
    code, stderr, took = await curl(client_ns, "--max-time", "10", f"http://{TEST_HOST}:81/")
    # curl 7: "Failed to connect ... Couldn't connect to server" (curl names no errno), at once.
    assert code == 7 and "Failed to connect" in stderr, (code, stderr)
    assert took < 3
    with client_ns.socket() as sock:
        sock.settimeout(10)
        assert sock.connect_ex((TEST_HOST, 81)) == errno.ECONNREFUSED
    record = process.wait_for(lambda: flow_records(process, "tcp", f"{TEST_HOST}:81"), timeout=10)[0]
    assert record["outcome"] == "unreachable: refused (nothing listens on that port)", record
    assert record["bytes_up"] == record["bytes_down"] == 0


@pytest.mark.parametrize(
    "error, answer",
    [
        (asyncio.TimeoutError(), wg.Refusal.SILENCE),
        (OSError(errno.ETIMEDOUT, "timed out"), wg.Refusal.SILENCE),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), wg.Refusal.RESET),
        (OSError(errno.EHOSTUNREACH, "no route"), wg.Refusal.HOST_UNREACHABLE),
        (OSError(errno.ENETUNREACH, "no route"), wg.Refusal.NETWORK_UNREACHABLE),
        (OSError(errno.EACCES, "not permitted"), wg.Refusal.PROHIBITED),
        (OSError(errno.EADDRNOTAVAIL, "no address"), wg.Refusal.RESET),
        (forward.upstream.UpstreamError("upstream refused"), wg.Refusal.RESET),
    ],
)
def test_the_client_is_answered_as_the_destination_answered(error: BaseException, answer: wg.Refusal) -> None:
    from mitmproxy_wireguard.forward.tcp import refusal

    assert refusal(error) == answer


async def udp_echoes(ns: Namespace, count: int, timeout: float) -> int:
    """How many of `count` datagrams to the test host's UDP echo came back, from a new socket (a new flow)."""
    loop = asyncio.get_running_loop()
    answered = 0
    with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((TEST_HOST, 7))
        for i in range(count):
            await loop.sock_sendall(sock, b"echo %d" % i)
            try:
                answered += await asyncio.wait_for(loop.sock_recv(sock, 100), timeout) == b"echo %d" % i
            except asyncio.TimeoutError:
                pass
    return answered


async def test_one_peer_opening_udp_flows_without_end_leaves_the_other_peers_theirs(test_host, proxy):
    """The flooding peer gets its share of flows (and no more); the other peer's new flows work meanwhile. More
    flows than all peers together may open (4096) are sent, so that a global limit alone would let the flood
    take all of them."""
    process, flooder, other = await proxy(peers=2)
    loop = asyncio.get_running_loop()
    with flooder.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for port in range(10000, 15000):
            await loop.sock_sendto(sock, b"flood", (TEST_HOST, port))
            if port % 100 == 0:
                await asyncio.sleep(0.01)
    await asyncio.sleep(1)
    assert await udp_echoes(other, 5, timeout=5) == 5
    assert await udp_echoes(flooder, 1, timeout=1) == 0
    record = process.wait_for_log(lambda r: "UDP flows" in r["message"], timeout=10)
    assert record["level"] == "warning" and "its share of 256 UDP flows" in record["message"], record


async def test_peers_added_on_sighup_each_have_their_own_share_name_and_refused_addresses(
    test_host, proxy, tmp_path: Path, namespaces, wg_clients
):
    """Two peers come with a reload of the file: each is told apart from the other (its own share of UDP flows,
    its own key in the logs), and their tunnel addresses are refused as destinations, as the first peers' are.
    """
    # Flows end (and are logged) a second after their last datagram.
    process, _first = await proxy("--udp-idle-timeout", "1", peers=1)
    port = int(process.wait_for_stdout(LISTENING).group(1))
    conf = tmp_path / "server.conf"
    changed = wg.Configuration.from_file(conf)
    keys = [changed.add_peer(), changed.add_peer()]
    changed.to_file(conf)
    process.process.send_signal(signal.SIGHUP)
    texts = process.wait_for(
        lambda: len(client_configs(process.stdout)) == 3 and client_configs(process.stdout)
    )
    flooder, other = namespaces(), namespaces()
    settings = [client_settings(text) for text in texts[1:]]
    assert [wg.pubkey(s["private_key"]) for s in settings] == keys
    for ns, setting in zip((flooder, other), settings):
        await wg_clients(Listening(port), **setting, namespace=ns)

    loop = asyncio.get_running_loop()
    with flooder.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for udp_port in range(10000, 10300):
            await loop.sock_sendto(sock, b"flood", (TEST_HOST, udp_port))
            if udp_port % 100 == 0:
                await asyncio.sleep(0.01)
    await asyncio.sleep(1)
    assert await udp_echoes(other, 5, timeout=5) == 5
    share = process.wait_for_log(lambda r: "UDP flows" in r["message"], timeout=10)
    assert f"peer {keys[0]} has its share of 256 UDP flows" in share["message"], share

    # The flooder's address, as a destination of the other new peer.
    flooder_address = settings[0]["addresses"][0].split("/")[0]
    with other.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_sendto(sock, b"to a peer", (flooder_address, 7))
    refused = process.wait_for_log(
        lambda r: r.get("event") == "flow" and r["destination"] == f"{flooder_address}:7", timeout=10
    )
    assert refused["outcome"] == "refused: an address inside the tunnel", refused
    assert refused["peer"] == keys[1], refused
    echoed = process.wait_for_log(
        lambda r: r.get("event") == "flow" and r["destination"] == f"{TEST_HOST}:7" and r["peer"] == keys[1],
        timeout=30,
    )
    assert echoed["outcome"] != "?", echoed


def dns_query(name: str, number: int = 0) -> bytes:
    query = dns.message.make_query(name, dns.rdatatype.A)
    query.id = number
    return query.to_wire()


async def resolves(ns: Namespace, transport: str, timeout: float) -> list[str]:
    """TEST_NAME's addresses, asked of the tunnel's DNS address over `transport` from `ns`."""
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with ns.socket(socket.AF_INET, kind) as sock:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, ("10.0.0.53", 53)), 10)
        query = dns_query(TEST_NAME)
        if transport == "udp":
            await loop.sock_sendall(sock, query)
            wire = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
        else:
            await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
            wire = (await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout))[2:]
    return [rr.address for rrset in dns.message.from_wire(wire).answer for rr in rrset]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_one_peer_flooding_dns_queries_leaves_the_other_peers_theirs(test_host, proxy, transport):
    """The flooding peer asks for names that only the test host's DNS server could answer, and it never does:
    each lookup holds a resolver thread for seconds. The other peer's queries (a name in /etc/hosts) are answered
    at once, over UDP and TCP, whichever way the flood came."""
    process, flooder, other = await proxy(peers=2)
    loop = asyncio.get_running_loop()
    held = []
    if transport == "udp":
        with flooder.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("10.0.0.53", 53))
            for i in range(200):
                await loop.sock_sendall(sock, dns_query(f"n{i}.flood.test", i))
    else:
        for i in range(40):
            held.append(await connect(flooder, ("10.0.0.53", 53)))
            query = dns_query(f"n{i}.flood.test", i)
            await loop.sock_sendall(held[-1], struct.pack("!H", len(query)) + query)
    try:
        await asyncio.sleep(1)
        for way in ("udp", "tcp"):
            assert await resolves(other, way, timeout=3) == [TEST_HOST]
        record = process.wait_for_log(lambda r: "DNS lookups" in r["message"], timeout=10)
        assert record["level"] == "warning" and "its share of 16 DNS lookups" in record["message"], record
    finally:
        for sock in held:
            sock.close()


async def test_the_resolvers_threads_are_shared_fairly_and_a_given_up_lookup_frees_its_place(monkeypatch):
    """Without the network: lookups that block until released. One peer keeps at most its threads busy, the
    other's lookup runs meanwhile; a waiting lookup given up leaves at once, a running one holds its share until
    its thread returns; beyond its share a peer's lookup is refused."""
    release = threading.Event()
    started: list[str] = []

    def getaddrinfo(host: str, *args: Any) -> list[tuple[Any, ...]]:
        started.append(host)
        if host.startswith("slow"):
            release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    pool = forward.LookupPool(
        forward.Limits(resolver_threads=4, resolver_threads_per_peer=2, dns_lookups_per_peer=4)
    )
    slow = [pool.lookup("a", f"slow{i}", socket.AF_INET) for i in range(4)]
    with pytest.raises(forward.lookups.Busy):
        pool.lookup("a", "slow4", socket.AF_INET)
    assert (await asyncio.wait_for(pool.lookup("b", "fast", socket.AF_INET), 5))[0][4][0] == "192.0.2.1"
    assert sorted(started) == ["fast", "slow0", "slow1"]
    slow[3].cancel()  # waiting: gone at once
    await asyncio.sleep(0)
    assert pool.shares.held("a") == 3
    slow[0].cancel()  # running: holds its place until the thread returns
    await asyncio.sleep(0)
    assert pool.shares.held("a") == 3
    release.set()
    await asyncio.wait_for(asyncio.gather(slow[1], slow[2]), 5)
    for _ in range(100):
        if pool.shares.held("a") == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.shares.held("a") == 0 and "slow3" not in started


@pytest.mark.parametrize(
    "error, outcome",
    [
        (asyncio.TimeoutError(), "unreachable: timed out"),
        (TimeoutError(), "unreachable: timed out"),
        (OSError(errno.ETIMEDOUT, "Connect call failed ('192.0.2.99', 80)"), "unreachable: timed out"),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('192.0.2.99', 80)"),
            "unreachable: refused (nothing listens on that port)",
        ),
        (
            OSError(errno.EHOSTUNREACH, "Connect call failed ('192.0.2.99', 80)"),
            "unreachable: no route to host",
        ),
        (
            OSError(errno.ENETUNREACH, "Connect call failed ('192.0.2.99', 80)"),
            "unreachable: no route to network",
        ),
        (
            OSError(errno.EADDRNOTAVAIL, "Connect call failed ('192.0.2.99', 80)"),
            "unreachable: Cannot assign requested address",
        ),
    ],
)
def test_an_unreachable_destination_says_why(error: BaseException, outcome: str) -> None:
    from mitmproxy_wireguard.forward.flows import unreachable

    assert unreachable(error) == outcome
