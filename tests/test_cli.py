"""The command line, `mitmproxy-wireguard` or `python -m mitmproxy_wireguard`, run as a user runs it."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import mitmproxy_wireguard as wg
from helpers import (
    Namespace,
    assert_udp_echo,
    close_writer,
    decode_png_qr,
    needs_client,
    needs_tcpdump,
    open_connection,
    png_size,
    start_client,
    tcpdump,
)
from helpers_cli import Cli, Listening, client_configs, client_settings, config_fields

pytestmark = pytest.mark.timeout(90)

LISTENING = r"listening on [^ ]+:(\d+)\."


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mitmproxy_wireguard", *args], capture_output=True, text=True, timeout=30
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli():
    """Starts the command line; every process started is ended with the test."""
    started: list[Cli] = []

    def start(*args: str) -> Cli:
        process = Cli(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_help_names_the_commands_and_their_options() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    assert "echo" in out.stdout and "forward" in out.stdout
    for command in ("echo", "forward"):
        out = run_cli(command, "--help")
        assert out.returncode == 0, out.stderr
        for option in (
            "--conf",
            "--host",
            "--port",
            "--endpoint",
            "--export",
            "--json-log",
            "--stats",
            "--verbose",
        ):
            assert option in out.stdout
    forward_help = run_cli("forward", "--help").stdout
    for option in ("--allow-local", "--tcp-idle-timeout", "--udp-idle-timeout", "--connect-timeout"):
        assert option in forward_help
    out = run_cli()
    assert out.returncode == 2 and "COMMAND" in out.stderr


def test_the_console_script_is_installed() -> None:
    (script,) = [
        e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "mitmproxy-wireguard"
    ]
    assert script.value == "mitmproxy_wireguard.cli:main"
    path = shutil.which("mitmproxy-wireguard")
    if path is None:
        pytest.skip("the script's directory is not on PATH")
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "forward" in out.stdout


def test_echo_creates_the_configuration_file_and_reuses_it(cli, tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    args = ("echo", "--conf", str(conf), "--host", "127.0.0.1", "--port", "0", "--peers", "2")
    first = cli(*args, "--endpoint", "192.0.2.1")
    port = int(first.wait_for_stdout(LISTENING).group(1))
    first.wait_for_stdout("nc -u")
    assert first.stop() == 0

    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    cfg = wg.Configuration.from_file(conf)
    assert len(cfg.peers) == 2
    printed = client_configs(first.stdout)
    assert len(printed) == 2
    for text, peer in zip(printed, cfg.peers):
        fields = config_fields(text)
        assert fields["PrivateKey"] == peer["private_key"]
        assert fields["Address"] == ", ".join(peer["allowed_ips"])
        assert fields["Peer.PublicKey"] == cfg.server_public_key
        assert fields["Peer.Endpoint"] == f"192.0.2.1:{port}"
        # Echo clients route only the tunnel's networks to the server, and get no DNS that nobody answers.
        assert fields["Peer.AllowedIPs"] == "10.0.0.0/16, fd00::/64"
        assert "DNS" not in fields
    # A QR code of each configuration.
    assert sum(1 for line in first.stdout if line.startswith("███")) >= 2

    content = conf.read_bytes()
    second = cli(*args)
    second.wait_for_stdout("nc -u")
    assert second.stop() == 0
    assert conf.read_bytes() == content
    assert [config_fields(t)["PrivateKey"] for t in client_configs(second.stdout)] == cfg.client_private_keys
    assert "wrote a new configuration" in "\n".join(first.stderr)
    assert "wrote a new configuration" not in "\n".join(second.stderr)


def test_port_given_overrides_the_files_port_without_changing_the_file(cli, tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    wg.Configuration.generate(listen_port=0).to_file(conf)
    content = conf.read_bytes()
    port = free_udp_port()
    process = cli("echo", "--conf", str(conf), "--host", "127.0.0.1", "--port", str(port), "--no-qr")
    assert int(process.wait_for_stdout(LISTENING).group(1)) == port
    assert process.stop() == 0
    assert conf.read_bytes() == content
    assert not any("███" in line for line in process.stdout)


def test_without_conf_keys_are_fresh_and_nothing_is_written(cli, tmp_path: Path) -> None:
    process = cli("echo", "--host", "127.0.0.1", "--port", "0", "--endpoint", "192.0.2.1:4000", "--no-qr")
    process.wait_for_stdout("Fresh keys: use --conf")
    process.wait_for_stdout("nc -u")
    (text,) = client_configs(process.stdout)
    assert config_fields(text)["Peer.Endpoint"] == "192.0.2.1:4000"
    assert process.stop() == 0


def test_export_writes_each_clients_config_and_qr_code(cli, tmp_path: Path) -> None:
    out = tmp_path / "clients"
    process = cli("echo", "--host", "127.0.0.1", "--port", "0", "--peers", "2", "--export", str(out))
    process.wait_for_stdout("nc -u")
    assert process.stop() == 0
    printed = client_configs(process.stdout)
    assert sorted(p.name for p in out.iterdir()) == [
        "client-1.conf",
        "client-1.png",
        "client-2.conf",
        "client-2.png",
    ]
    for i, text in enumerate(printed, 1):
        assert (out / f"client-{i}.conf").read_text() == text
        assert stat.S_IMODE((out / f"client-{i}.conf").stat().st_mode) == 0o600
        png_size((out / f"client-{i}.png").read_bytes())
        assert decode_png_qr(out / f"client-{i}.png") == text


def test_export_over_existing_files_and_links_writes_private_files(cli, tmp_path: Path) -> None:
    """Files left by an earlier export with a looser mode, or links planted where the files go, neither keep
    their mode nor are written through: the client's private key stays private."""
    out = tmp_path / "clients"
    out.mkdir()
    (out / "client-1.conf").write_text("old")
    (out / "client-1.conf").chmod(0o644)
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_text("not to be touched")
    (out / "client-1.png").symlink_to(elsewhere)
    process = cli("echo", "--host", "127.0.0.1", "--port", "0", "--export", str(out))
    process.wait_for_stdout("nc -u")
    assert process.stop() == 0
    for name in ("client-1.conf", "client-1.png"):
        path = out / name
        assert not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert elsewhere.read_text() == "not to be touched"
    assert decode_png_qr(out / "client-1.png") == client_configs(process.stdout)[0]
    assert sorted(p.name for p in out.iterdir()) == ["client-1.conf", "client-1.png"]


def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """Each forwarded connection holds a socket: a soft limit of 256 would cap the proxy at about that many."""
    process = Cli(
        "forward", "--host", "127.0.0.1", "--port", "0", "--no-qr", prefix=("prlimit", "--nofile=256:8192")
    )
    try:
        process.wait_for_stdout(LISTENING)
        limits = Path(f"/proc/{process.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
        assert process.stop() == 0
    finally:
        process.kill()


def test_json_log_writes_json_lines(cli, tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    process = cli(
        "forward", "--conf", str(conf), "--host", "127.0.0.1", "--port", "0", "--json-log", "--no-qr"
    )
    record = process.wait_for_log(lambda r: "wrote a new configuration" in r["message"])
    assert record["level"] == "info" and str(conf) in record["message"]
    process.wait_for_stdout("DNS queries to 10.0.0.53, fd00::53 are answered")
    assert process.stop() == 0
    assert all(line.startswith("{") for line in process.stderr)


@pytest.mark.parametrize(
    "text, where",
    [
        ("[Interface]\nPrivateKey = nope\n", "line 2"),
        ("[Interface]\nListenPort = 51820\n", "line 1"),
        (f"[Peer]\nPublicKey = {wg.pubkey(wg.genkey())}\n", "no [Interface] section"),
    ],
)
def test_a_broken_conf_is_an_error_that_names_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    conf = tmp_path / "broken.conf"
    conf.write_text(text)
    out = run_cli("forward", "--conf", str(conf), "--host", "127.0.0.1")
    assert out.returncode == 2
    assert str(conf) in out.stderr and where in out.stderr
    assert "Traceback" not in out.stderr
    assert conf.read_text() == text


def peer_by_public_key_only(conf: Path, before_peer: int | None = None) -> str:
    """Writes a `[Peer]` with a PublicKey alone (a device with its own key, no AllowedIPs) into `conf`, as a
    user does: at the end, or before the file's peer number `before_peer` (0 is the first). Returns the key.
    """
    public = wg.pubkey(wg.genkey())
    sections = conf.read_text().split("\n[Peer]\n")
    at = len(sections) if before_peer is None else before_peer + 1
    sections.insert(at, f"PublicKey = {public}\n")
    conf.write_text("\n[Peer]\n".join(sections))
    return public


def assert_template(text: str, server_public_key: str, address: str) -> None:
    """A client configuration with a placeholder for the device's own key, and all the rest."""
    fields = config_fields(text)
    assert fields["PrivateKey"] == "<the device's own key>"
    assert fields["Address"] == address
    assert fields["Peer.PublicKey"] == server_public_key
    assert fields["Peer.Endpoint"].startswith("127.0.0.1:")


@pytest.mark.parametrize("command", ["echo", "forward"])
def test_a_peer_known_by_its_public_key_only_gets_free_addresses_at_start(cli, tmp_path, command) -> None:
    cfg = wg.Configuration.generate(listen_port=0, peers=2)
    conf = tmp_path / "server.conf"
    cfg.to_file(conf)
    public = peer_by_public_key_only(conf, before_peer=1)
    assert not wg.Configuration.from_file(conf).peers[1]["allowed_ips"]

    process = cli(command, "--conf", str(conf), "--host", "127.0.0.1", "--endpoint", "127.0.0.1")
    process.wait_for_stdout("No QR code")
    process.wait_for_stdout(LISTENING)
    # The next free addresses (the third peer has .3), written into the file; the peers' order stays.
    after = wg.Configuration.from_file(conf)
    assert [p["public_key"] for p in after.peers] == [
        cfg.client_public_keys[0],
        public,
        cfg.client_public_keys[1],
    ]
    assert after.peers[1]["allowed_ips"] == ["10.0.0.4/32", "fd00::4/128"]
    assert after.peers[0]["allowed_ips"] == cfg.peers[0]["allowed_ips"]
    assert after.peers[2]["allowed_ips"] == cfg.peers[1]["allowed_ips"]
    printed = client_configs(process.stdout)
    assert len(printed) == 3
    assert_template(printed[1], cfg.server_public_key, "10.0.0.4/32, fd00::4/128")
    if command == "forward":
        assert config_fields(printed[1])["DNS"] == "10.0.0.53, fd00::53"
    # QR codes of the two others, none of the template.
    starts = [i for i, line in enumerate(process.stdout) if line.startswith("------ client ")]
    qr_lines = [i for i, line in enumerate(process.stdout) if line.startswith("███")]
    assert any(starts[0] < i < starts[1] for i in qr_lines) and any(i > starts[2] for i in qr_lines)
    assert not any(starts[1] < i < starts[2] for i in qr_lines)
    assert "gave it 10.0.0.4/32, fd00::4/128" in "\n".join(process.stderr)
    assert process.stop() == 0
    assert "Traceback" not in "\n".join(process.stderr)


def test_a_peer_known_by_its_public_key_only_gets_free_addresses_on_sighup(cli, tmp_path) -> None:
    cfg = wg.Configuration.generate(listen_port=0)
    conf = tmp_path / "server.conf"
    cfg.to_file(conf)
    process = cli("echo", "--conf", str(conf), "--host", "127.0.0.1", "--no-qr", "--json-log")
    process.wait_for_stdout(LISTENING)
    public = peer_by_public_key_only(conf)
    process.process.send_signal(signal.SIGHUP)
    process.wait_for_log(lambda r: r["message"] == f"peer {public} added (10.0.0.3/32, fd00::3/128)")
    process.wait_for_stdout("No QR code")
    # The configuration of the peer added, and no other one again.
    printed = client_configs(process.stdout)
    assert len(printed) == 2
    assert_template(printed[1], cfg.server_public_key, "10.0.0.3/32, fd00::3/128")
    assert wg.Configuration.from_file(conf).peers[1]["allowed_ips"] == ["10.0.0.3/32", "fd00::3/128"]
    # The file says what the server has: the next reload changes nothing.
    process.process.send_signal(signal.SIGHUP)
    process.wait_for(
        lambda: [r for r in process.json_records() if r["message"].startswith("reloaded")][1:], timeout=10
    )
    reloads = [r["message"] for r in process.json_records() if r["message"].startswith("reloaded")]
    assert reloads[1].endswith("0 peer(s) added, 0 removed, 0 changed"), reloads
    assert process.stop() == 0
    # And the next start gives it the same addresses.
    again = cli("echo", "--conf", str(conf), "--host", "127.0.0.1", "--no-qr")
    again.wait_for_stdout("No QR code")
    assert_template(client_configs(again.stdout)[1], cfg.server_public_key, "10.0.0.3/32, fd00::3/128")
    assert again.stop() == 0


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_number_is_an_error(value: str) -> None:
    out = run_cli("forward", "--host", "127.0.0.1", "--tcp-idle-timeout", value)
    assert out.returncode == 2
    assert "--tcp-idle-timeout" in out.stderr and "not a number of seconds" in out.stderr


def test_a_port_in_use_is_an_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = run_cli("echo", "--host", "127.0.0.1", "--port", str(port))
    assert out.returncode == 1
    assert "error" in out.stderr and "Traceback" not in out.stderr
    # Which address, and what to do.
    assert f"127.0.0.1:{port}" in out.stderr and "already in use" in out.stderr and "--port" in out.stderr


@pytest.mark.parametrize(
    "option, make, expected",
    [
        ("--conf", lambda tmp: tmp / "missing" / "server.conf", "does not exist"),
        ("--conf", lambda tmp: tmp, "is a directory"),
        ("--export", lambda tmp: tmp / "taken", "is a file, not a directory"),
    ],
)
def test_a_path_that_cannot_serve_is_an_error_naming_it(tmp_path: Path, option, make, expected) -> None:
    (tmp_path / "taken").write_text("")
    path = make(tmp_path)
    out = run_cli("echo", "--host", "127.0.0.1", "--port", "0", "--no-qr", option, str(path))
    assert out.returncode == 2, out
    assert f"error: {option} {path}: " in out.stderr and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "listening" not in out.stdout
    assert not (tmp_path / "missing").exists()


def test_without_a_command_the_help_is_printed(tmp_path: Path) -> None:
    out = run_cli()
    assert out.returncode == 2
    assert out.stderr.startswith("usage: ") and "transparent proxy" in out.stderr and "echo" in out.stderr
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "Without a command, it prints its help and exits with status 2." in readme


@needs_client
async def test_a_client_set_up_from_the_printed_config_reaches_the_echo_server(cli, wg_clients, tmp_path):
    process = cli("echo", "--conf", str(tmp_path / "server.conf"), "--host", "127.0.0.1", "--port", "0")
    port = int(process.wait_for_stdout(LISTENING).group(1))
    process.wait_for_stdout("nc -u")
    client = await wg_clients(Listening(port), **client_settings(client_configs(process.stdout)[0]))
    reader, writer = await open_connection("10.0.0.42", 1234)
    writer.write(b"hello through the tunnel")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"hello through the tunnel"
    await close_writer(writer)
    client.stop()
    assert process.stop() == 0


@needs_client
@needs_tcpdump
@pytest.mark.parametrize("command", ["echo", "forward"])
async def test_pcap_captures_the_tunnels_packets_until_the_server_stops(cli, wg_clients, tmp_path, command):
    """`--pcap FILE`: a ping (answered by the server itself in both commands) and, with echo, a TCP connection
    and a UDP datagram; the file is complete once the command has stopped."""
    pcap = tmp_path / "tunnel.pcapng"
    process = cli(command, "--pcap", str(pcap), "--host", "127.0.0.1", "--port", "0", "--no-qr")
    port = int(process.wait_for_stdout(LISTENING).group(1))
    assert process.wait_for_stdout(f"Capturing packets to {pcap}")
    settings = client_settings(client_configs(process.stdout)[0])
    await wg_clients(Listening(port), **dict(settings, routes=("10.0.0.0/24",)))
    ping = await asyncio.create_subprocess_exec(
        "ping", "-c", "2", "-i", "0.2", "-W", "5", "10.0.0.42", stdout=subprocess.DEVNULL
    )
    assert await asyncio.wait_for(ping.wait(), 20) == 0
    if command == "echo":
        reader, writer = await open_connection("10.0.0.42", 7)
        writer.write(b"captured")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"captured"
        await close_writer(writer)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"a datagram", ("10.0.0.42", 40000))
            assert sock.recv(100) == b"a datagram"
    assert process.stop() == 0
    assert stat.S_IMODE(pcap.stat().st_mode) == 0o600

    text = "\n".join(tcpdump(pcap))
    assert text.count("> 10.0.0.42: ICMP echo request") == 2, text
    assert text.count("10.0.0.42 > 10.0.0.") == 2 and text.count("ICMP echo reply") == 2, text
    if command == "echo":
        assert "> 10.0.0.42.7: Flags [S]," in text and "10.0.0.42.7 > " in text, text
        assert ": Flags [S.]," in text, text
        assert text.count("UDP, length 10") == 2, text


def test_pcap_to_an_unwritable_path_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "out.pcapng"
    out = run_cli("echo", "--pcap", str(path), "--host", "127.0.0.1", "--port", "0", "--no-qr")
    assert out.returncode == 1, out.stderr
    assert f"No such file or directory: '{path}'" in out.stderr
    assert "Traceback" not in out.stderr


@needs_client
async def test_two_clients_at_once_each_with_its_own_key_and_address(namespaces, tmp_path: Path):
    """`echo --peers 2`: two wireguard-go clients, each set up from its own printed configuration, talk at the
    same moment; each gets its own data back, and the server saw each at its own tunnel address."""
    process = Cli(
        "echo", "--conf", str(tmp_path / "server.conf"), "--port", "0", "--peers", "2", "--json-log"
    )
    clients = []
    try:
        port = int(process.wait_for_stdout(LISTENING).group(1))
        configs = process.wait_for(
            lambda: len(client_configs(process.stdout)) == 2 and client_configs(process.stdout)
        )
        sides = []
        for text in configs:
            ns: Namespace = namespaces()
            clients.append(await start_client(Listening(port), **client_settings(text), namespace=ns))
            sides.append((ns, config_fields(text)["Address"].split(",")[0].split("/")[0]))
        assert sides[0][1] != sides[1][1]
        loop = asyncio.get_running_loop()

        async def talk(ns: Namespace, address: str) -> None:
            with ns.socket() as sock:
                sock.setblocking(False)
                await asyncio.wait_for(loop.sock_connect(sock, ("10.0.0.42", 1234)), 10)
                assert sock.getsockname()[0] == address
                mine = os.urandom(256 << 10)
                await loop.sock_sendall(sock, mine)
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 10):
                    received += chunk
                assert received == mine
            with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(("10.0.0.42", 1234))
                await assert_udp_echo(sock, (os.urandom(300) for _ in range(5)))

        await asyncio.gather(*(talk(ns, address) for ns, address in sides))
    finally:
        for client in clients:
            client.stop()
        process.kill()


@needs_client
async def test_preshared_keys_are_used_in_the_handshake(namespaces, tmp_path: Path):
    """A peer with a PresharedKey in the server's file: a client with that key gets through, one with another
    key (and otherwise the same configuration) does not."""
    server_key, client_key, psk = wg.genkey(), wg.genkey(), wg.genkey()
    conf = tmp_path / "server.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {server_key}\nListenPort = 0\nAddress = 10.0.0.1/24\n\n"
        f"[Peer]\nPublicKey = {wg.pubkey(client_key)}\nPresharedKey = {psk}\nAllowedIPs = 10.0.0.2/32\n"
    )
    process = Cli("echo", "--conf", str(conf), "--no-qr")
    clients = []
    try:
        port = int(process.wait_for_stdout(LISTENING).group(1))
        loop = asyncio.get_running_loop()
        for key, works in ((wg.genkey(), False), (psk, True)):
            ns: Namespace = namespaces()
            clients.append(
                await start_client(
                    Listening(port),
                    wg.pubkey(server_key),
                    client_key,
                    addresses=("10.0.0.2/32",),
                    routes=("10.0.0.0/24",),
                    namespace=ns,
                    preshared_key=key,
                )
            )
            with ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(("10.0.0.42", 1234))
                replies = 0
                for _ in range(3 if works else 2):
                    await loop.sock_sendall(sock, b"psk")
                    try:
                        replies += await asyncio.wait_for(loop.sock_recv(sock, 2048), 2) == b"psk"
                    except asyncio.TimeoutError:
                        pass
            assert (replies > 0) == works, f"preshared key {'right' if works else 'wrong'}: {replies} replies"
            clients[-1].stop()
    finally:
        for client in clients:
            client.stop()
        process.kill()
