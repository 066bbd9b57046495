"""`forward` as a user runs it: the proxy in this namespace, a test host in a namespace of its own (an HTTP server
and a UDP echo on a documentation address), and a real WireGuard client in a third, set up from the configuration
that the command printed. Everything the client sends goes through the tunnel and on through the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard import forward
from helpers import Namespace, needs_client, run, start_client
from helpers_cli import Cli, Listening, client_configs, client_settings, config_fields

pytestmark = [needs_client, pytest.mark.timeout(120)]

TEST_HOST = "192.0.2.80"
TEST_NAME = "testhost.example"
LISTENING = r"listening on [^ ]+:(\d+)\."

UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({host!r}, 7))
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
"""


def wait_for_tcp(host: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def test_host(namespaces, tmp_path: Path):
    """A namespace with an HTTP server (a 4 MiB file) and a UDP echo on TEST_HOST, routed from here."""
    host: Namespace = namespaces()
    host.ip("address", "add", f"{TEST_HOST}/32", "dev", "lo")
    # `replace`: the route of an earlier test may outlive its namespace for a moment.
    run("ip", "route", "replace", f"{TEST_HOST}/32", "via", host.there)
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
        subprocess.Popen(host.exec(sys.executable, "-c", UDP_ECHO.format(host=TEST_HOST))),
    ]
    try:
        wait_for_tcp(TEST_HOST, 80)
        yield host, site
    finally:
        for process in processes:
            process.kill()
            process.wait(5)


@pytest.fixture
async def proxy(namespaces, tmp_path: Path):
    """`forward` with JSON logs, in a mount namespace whose /etc/hosts knows TEST_NAME, and a client namespace
    whose wireguard-go is set up from the printed configuration."""
    started: list[Cli] = []
    clients = []

    async def start(*extra: str) -> tuple[Cli, Namespace]:
        hosts = tmp_path / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{TEST_HOST} {TEST_NAME}\n")
        mount = f'mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec "$@"'
        args = ("forward", "--conf", str(tmp_path / "server.conf"), "--port", "0", "--json-log", *extra)
        process = Cli(*args, prefix=("unshare", "--mount", "sh", "-c", mount, "sh"))
        started.append(process)
        port = int(process.wait_for_stdout(LISTENING).group(1))
        text = client_configs(process.stdout)[0]
        assert config_fields(text)["DNS"] and config_fields(text)["MTU"]
        client_ns: Namespace = namespaces()
        client = await start_client(Listening(port), **client_settings(text), namespace=client_ns)
        clients.append(client)
        return process, client_ns

    yield start
    for client in clients:
        client.stop()
    for process in started:
        process.kill()


def flow_records(process: Cli, protocol: str, destination: str) -> list[dict]:
    return [
        r
        for r in process.json_records()
        if r.get("event") == "flow" and r["protocol"] == protocol and r["destination"] == destination
    ]


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
        for i in range(5):
            message = b"datagram %d " % i + os.urandom(500)
            await loop.sock_sendall(sock, message)
            assert await asyncio.wait_for(loop.sock_recv(sock, 2048), 10) == message

    # DNS to the tunnel's resolver address is answered with the proxy host's resolver.
    with client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("10.0.0.53", 53))
        query = dns.message.make_query(TEST_NAME, dns.rdatatype.A)
        await loop.sock_sendall(sock, query.to_wire())
        answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 10))
    assert answer.id == query.id
    assert [rr.address for rrset in answer.answer for rr in rrset] == [TEST_HOST]


async def test_the_proxy_hosts_own_addresses_are_refused(test_host, proxy):
    """The tunnel's TCP handshake completes before the proxy knows the destination (as with any transparent
    proxy of this kind); a refused destination then gets a RST, and nothing reaches the service."""
    host, _ = test_host
    # A service on the proxy's host: reachable through the tunnel only if the proxy forgot to refuse it.
    with socket.create_server(("0.0.0.0", 0)) as service:
        service.setblocking(False)
        port = service.getsockname()[1]
        process, client_ns = await proxy()
        loop = asyncio.get_running_loop()
        with client_ns.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(ConnectionResetError):
                # The reset may come before the connect call has seen the handshake complete.
                await asyncio.wait_for(loop.sock_connect(sock, (host.here, port)), 10)
                await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
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
