"""mitmproxy 9.0.1, built on mitmproxy_wireguard 0.1.x, runs its WireGuard mode on this package unchanged.

`mitmdump --mode wireguard` runs from a venv of its own (made by tests/mitmproxy_venv.sh) with this package
in place of mitmproxy_wireguard, in this namespace. A real WireGuard client in a second namespace, set up from
the client configuration that mitmdump prints, fetches a page over HTTP and over HTTPS (trusting mitmproxy's
CA) from a test host in a third namespace, through the tunnel and through mitmproxy, and asks mitmproxy's DNS
at 10.0.0.53.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import dns.message
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import CI, Namespace, needs_client, run, start_client, wait_for_tcp
from helpers_cli import Cli, Listening, client_settings, config_fields

pytestmark = [needs_client, pytest.mark.mitmproxy, pytest.mark.timeout(120)]

VENV = Path(os.environ.get("MITMPROXY_VENV", "/tmp/mitmproxy-9.0.1-venv"))
SOURCES = Path(__file__).parent.parent / "python" / "mitmproxy_wireguard"
TEST_HOST = "192.0.2.80"
TEST_NAME = "testhost.example"

# The test host: HTTP on port 80 and HTTPS on port 443, both serving one directory.
WEB_SERVER = """
import functools, http.server, ssl, sys, threading
directory, cert, key, host = sys.argv[1:]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
plain = http.server.ThreadingHTTPServer((host, 80), handler)
secure = http.server.ThreadingHTTPServer((host, 443), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
secure.socket = context.wrap_socket(secure.socket, server_side=True)
threading.Thread(target=plain.serve_forever, daemon=True).start()
secure.serve_forever()
"""


def mitmdump() -> Path:
    """The venv's mitmdump, after checking that the venv has mitmproxy 9.0.1 and this tree's package (its
    Python files, at least). Without them the test is skipped, or fails under CI=true."""
    program = VENV / "bin" / "mitmdump"
    check = "import mitmproxy.version as v, mitmproxy_wireguard as w; print(v.VERSION, w.__file__)"
    problem = None
    if not program.exists():
        problem = f"no mitmproxy venv at {VENV}"
    else:
        out = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=30
        )
        version, _, init = out.stdout.strip().partition(" ")
        if out.returncode != 0 or version != "9.0.1":
            problem = f"{VENV} has no mitmproxy 9.0.1: {out.stdout}{out.stderr}"
        else:
            installed = Path(init).parent
            stale = [
                f.name
                for f in SOURCES.glob("**/*.py")
                if not (installed / f.relative_to(SOURCES)).exists()
                or (installed / f.relative_to(SOURCES)).read_bytes() != f.read_bytes()
            ]
            if stale:
                problem = f"{VENV} has another build of this package ({', '.join(stale)} differ)"
    if problem:
        problem += ": make the venv with `bash tests/mitmproxy_venv.sh`"
        if CI:
            pytest.fail(problem)
        pytest.skip(problem)
    return program


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for TEST_HOST signed by it: the CA's file, the certificate's and its key's."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test host CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TEST_HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(TEST_HOST))]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        return sock.getsockname()[1]


@pytest.fixture
def test_host(namespaces, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A namespace with a web server on TEST_HOST, routed from here: the directory it serves, and its CA."""
    host: Namespace = namespaces()
    host.ip("address", "add", f"{TEST_HOST}/32", "dev", "lo")
    # `replace`: the route of an earlier test may outlive its namespace for a moment.
    run("ip", "route", "replace", f"{TEST_HOST}/32", "via", host.there)
    site = tmp_path / "site"
    site.mkdir()
    ca, cert, key = certificates(tmp_path)
    command = [sys.executable, "-c", WEB_SERVER, str(site), str(cert), str(key), TEST_HOST]
    process = subprocess.Popen(host.exec(*command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_tcp((TEST_HOST, 80))
        wait_for_tcp((TEST_HOST, 443))
        yield site, ca
    finally:
        process.kill()
        process.wait(5)


def printed_client_config(stdout: list[str]) -> str | None:
    """The client configuration that mitmproxy logs between two lines of dashes, once it has."""
    text = "\n".join(stdout)
    found = re.search(r"^-{20,}\n(\[Interface\].*?)\n-{20,}$", text, re.MULTILINE | re.DOTALL)
    return found.group(1) + "\n" if found else None


@pytest.fixture
async def mitmproxy_client(
    namespaces, tmp_path: Path, test_host
) -> AsyncIterator[tuple[Cli, Namespace, Path]]:
    """mitmdump in WireGuard mode, trusting the test host's CA upstream, and a client namespace whose
    wireguard-go is set up from the configuration mitmdump printed: mitmdump, the client's namespace and
    mitmproxy's confdir."""
    program = mitmdump()
    _, test_ca = test_host
    confdir = tmp_path / "mitmproxy"
    confdir.mkdir()
    port = free_udp_port()
    options = ["--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={test_ca}"]
    # mitmproxy answers DNS sent to 10.0.0.53 with its host's resolver: there, with a hosts file of the test.
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{TEST_HOST} {TEST_NAME}\n")
    mount = f'mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec "$@"'
    process = Cli(
        *("--mode", "wireguard", "--listen-port", str(port), *options),
        prefix=("unshare", "--mount", "sh", "-c", mount, "sh"),
        program=(str(program),),
    )
    client = None
    try:
        text = process.wait_for(lambda: printed_client_config(process.stdout), timeout=60)
        fields = config_fields(text)
        assert fields["Address"] == "10.0.0.1/32" and fields["DNS"] == "10.0.0.53", text
        client_ns: Namespace = namespaces()
        client = await start_client(Listening(port), **client_settings(text), namespace=client_ns)
        yield process, client_ns, confdir
    finally:
        if client is not None:
            client.stop()
        process.kill()


async def fetch(client_ns: Namespace, url: str, *curl_args: str) -> bytes:
    out = await asyncio.to_thread(
        subprocess.run,
        client_ns.exec("curl", "-sS", "--fail", "--max-time", "30", *curl_args, url),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_mitmproxy_9_intercepts_http_and_https_through_a_real_client(test_host, mitmproxy_client):
    site, _ = test_host
    process, client_ns, confdir = mitmproxy_client
    pages = {name: os.urandom(256 << 10) for name in ("plain.bin", "secure.bin")}
    for name, content in pages.items():
        (site / name).write_bytes(content)

    body = await fetch(client_ns, f"http://{TEST_HOST}/plain.bin")
    assert hashlib.sha256(body).digest() == hashlib.sha256(pages["plain.bin"]).digest()
    # The client trusts mitmproxy's CA only: the fetch succeeds only through mitmproxy's interception.
    ca = confdir / "mitmproxy-ca-cert.pem"
    body = await fetch(client_ns, f"https://{TEST_HOST}/secure.bin", "--cacert", str(ca))
    assert hashlib.sha256(body).digest() == hashlib.sha256(pages["secure.bin"]).digest()

    for url in (f"http://{TEST_HOST}/plain.bin", f"https://{TEST_HOST}/secure.bin"):
        process.wait_for_stdout(rf"^10\.0\.0\.1:\d+: GET {re.escape(url)} HTTP/1\.1$", timeout=10)
    process.wait_for(lambda: sum(line.endswith(" 200 OK 256k") for line in process.stdout) == 2, timeout=10)
    assert process.stop() == 0
    output = process.output()
    assert "Traceback" not in output and "error" not in output.lower(), output


async def test_mitmproxy_9_answers_dns_through_the_tunnel(mitmproxy_client):
    """UDP both ways: the query reaches mitmproxy, its answer (by `send_datagram`) reaches the client."""
    process, client_ns, _ = mitmproxy_client
    loop = asyncio.get_running_loop()
    with client_ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("10.0.0.53", 53))
        for _ in range(3):
            query = dns.message.make_query(TEST_NAME, dns.rdatatype.A)
            await loop.sock_sendall(sock, query.to_wire())
            answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 10))
            assert answer.id == query.id
            assert [rr.address for rrset in answer.answer for rr in rrset] == [TEST_HOST]
    assert process.stop() == 0
    assert "Traceback" not in process.output()
