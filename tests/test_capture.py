"""Packet capture through real WireGuard clients: the file is read back with tcpdump, and with a pcapng library
for what tcpdump does not print (which peer, which way)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import stat
import subprocess
import time

import pytest

import mitmproxy_wireguard as wg
from helpers import assert_udp_echo, close_writer, needs_client, needs_tcpdump, open_connection, tcpdump

pytestmark = [needs_client, pytest.mark.timeout(60)]

LINKTYPE_LINUX_SLL = 113
SLL_HEADER = 16
INBOUND, OUTBOUND = 1, 2


async def udp_exchange(host: str, port: int, messages: list[bytes]) -> int:
    """Sends each message and waits for its echo; returns the client's port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        await assert_udp_echo(sock, messages, timeout=5)
        port: int = sock.getsockname()[1]
        return port


@needs_tcpdump
# python-pcapng 2.1 warns about its own field definitions.
@pytest.mark.filterwarnings("ignore:Field type should not be:DeprecationWarning")
async def test_capture_holds_a_tcp_handshake_and_udp_datagrams_of_each_peer(start, wg_clients, tmp_path):
    setup = await start(peers=2)
    second = await wg_clients(
        setup.server,
        setup.cfg.server_public_key,
        setup.cfg.client_private_keys[1],
        addresses=tuple(setup.cfg.peers[1]["allowed_ips"]),
        routes=("10.0.1.0/24",),
    )
    # Each client's tunnel addresses, as the configuration gave them.
    me, me6 = (a.split("/")[0] for a in setup.cfg.peers[0]["allowed_ips"])
    other = setup.cfg.peers[1]["allowed_ips"][0].split("/")[0]
    path = tmp_path / "tunnel.pcapng"
    before = time.time()
    setup.server.start_capture(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    reader, writer = await open_connection("10.0.0.42", 8080)
    writer.write(b"hello capture")
    assert await asyncio.wait_for(reader.readexactly(13), 5) == b"hello capture"
    tcp_port = writer.get_extra_info("sockname")[1]
    await close_writer(writer)
    messages = [b"datagram %d" % i for i in range(3)]
    udp_port = await udp_exchange("10.0.0.42", 40000, messages)
    second_port = await udp_exchange("10.0.1.42", 40001, [b"from the second peer"])
    v6_port = await udp_exchange("fd00::42", 40002, [b"over IPv6"])
    setup.server.stop_capture()
    after = time.time()

    lines = tcpdump(path)
    text = "\n".join(lines)
    client = re.escape(f"{me}.{tcp_port}")
    assert re.search(rf"IP {client} > 10\.0\.0\.42\.8080: Flags \[S\],", text), text
    assert re.search(rf"IP 10\.0\.0\.42\.8080 > {client}: Flags \[S\.\],", text), text
    assert re.search(rf"IP {client} > 10\.0\.0\.42\.8080: Flags \[P\.\].*length 13", text), text
    for ends in [f"{me}.{udp_port} > 10.0.0.42.40000", f"10.0.0.42.40000 > {me}.{udp_port}"]:
        assert text.count(f"IP {ends}: UDP, length 10") == 3, text
    for ends in [f"{other}.{second_port} > 10.0.1.42.40001", f"10.0.1.42.40001 > {other}.{second_port}"]:
        assert text.count(f"IP {ends}: UDP, length 20") == 1, text
    for ends in [f"{me6}.{v6_port} > fd00::42.40002", f"fd00::42.40002 > {me6}.{v6_port}"]:
        assert text.count(f"IP6 {ends}: UDP, length 9") == 1, text
    # Each packet's direction, from the cooked header.
    with_direction = "\n".join(tcpdump(path, "-e"))
    assert re.search(rf" In ethertype IPv4 .*: {client} > 10\.0\.0\.42\.8080: Flags \[S\],", with_direction)
    assert re.search(
        rf" Out ethertype IPv4 .*: 10\.0\.0\.42\.8080 > {client}: Flags \[S\.\],", with_direction
    )
    assert re.search(r" Out ethertype IPv6 .*: fd00::42\.40002 > ", with_direction), with_direction
    # Wall-clock times (tcpdump honours the file's timestamp resolution), in order.
    times = [float(line.split()[0]) for line in lines]
    assert before - 1 <= times[0] and times[-1] <= after + 1, (before, times, after)
    assert times == sorted(times)

    # Which peer and which way: an interface per peer, named by its public key, and each packet's direction.
    pcapng = pytest.importorskip("pcapng")
    interfaces: list[str] = []
    packets: list[tuple[str, int, bytes]] = []
    with open(path, "rb") as f:
        for block in pcapng.FileScanner(f):
            if isinstance(block, pcapng.blocks.InterfaceDescription):
                assert block.link_type == LINKTYPE_LINUX_SLL
                interfaces.append(block.options["if_name"])
            elif isinstance(block, pcapng.blocks.EnhancedPacket):
                direction = int(block.options["epb_flags"]) & 3
                packets.append((interfaces[block.interface_id], direction, block.packet_data[SLL_HEADER:]))
    assert interfaces == [setup.client.public_key, second.public_key]
    first, second_key = interfaces
    ipv4 = [(key, way, data) for key, way, data in packets if data[0] >> 4 == 4]
    udp = [(key, way) for key, way, data in ipv4 if data[9] == socket.IPPROTO_UDP]
    assert udp == [(first, INBOUND), (first, OUTBOUND)] * 3 + [(second_key, INBOUND), (second_key, OUTBOUND)]
    udp6 = [(key, way) for key, way, data in packets if data[0] >> 4 == 6 and data[6] == socket.IPPROTO_UDP]
    assert udp6 == [(first, INBOUND), (first, OUTBOUND)]
    tcp = [(way, data[33]) for key, way, data in ipv4 if key == first and data[9] == socket.IPPROTO_TCP]
    syn, syn_ack = 0x02, 0x12
    assert tcp[:2] == [(INBOUND, syn), (OUTBOUND, syn_ack)]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (Wireshark)")
async def test_wireshark_reads_the_peer_and_direction_of_each_packet(start, tmp_path):
    setup = await start()
    path = tmp_path / "wireshark.pcapng"
    setup.server.start_capture(path)
    reader, writer = await open_connection("10.0.0.42", 8080)
    tcp_port = writer.get_extra_info("sockname")[1]
    await close_writer(writer)
    setup.server.stop_capture()
    fields = [
        "frame.interface_name",
        "frame.packet_flags_direction",
        "ip.src",
        "tcp.srcport",
        "tcp.flags.str",
    ]
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            *(f for name in fields for f in ("-e", name)),
            "-Y",
            "tcp",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    key = setup.client.public_key
    me = setup.cfg.peers[0]["allowed_ips"][0].split("/")[0]
    assert rows[0][:4] == [key, "0x00000001", me, str(tcp_port)] and "S" in rows[0][4], rows
    assert rows[1][:4] == [key, "0x00000002", "10.0.0.42", "8080"] and "A" in rows[1][4], rows


@needs_tcpdump
async def test_closing_the_server_completes_the_capture_with_its_resets(start, tmp_path):
    setup = await start()
    path = tmp_path / "closing.pcapng"
    setup.server.start_capture(str(path))
    reader, writer = await open_connection("10.0.0.42", 8080)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
    setup.server.close()
    await asyncio.wait_for(setup.server.wait_closed(), 5)
    text = "\n".join(tcpdump(path))
    assert re.search(r"IP 10\.0\.0\.42\.8080 > 10\.0\.0\.\d+\.\d+: Flags \[R", text), text
    await close_writer(writer)


async def test_start_capture_errors_name_the_path(start, tmp_path):
    setup = await start()
    missing = tmp_path / "no-such-directory" / "out.pcapng"
    with pytest.raises(FileNotFoundError) as info:
        setup.server.start_capture(missing)
    assert info.value.filename == str(missing)
    assert str(missing) in str(info.value)

    path = tmp_path / "one.pcapng"
    setup.server.start_capture(path)
    with pytest.raises(RuntimeError, match="one.pcapng"):
        setup.server.start_capture(tmp_path / "two.pcapng")
    setup.server.stop_capture()
    setup.server.stop_capture()  # none runs: nothing to do
    # A new capture after the first one stopped.
    setup.server.start_capture(tmp_path / "two.pcapng")
    setup.server.stop_capture()
    assert (tmp_path / "two.pcapng").stat().st_size > 0


async def test_a_link_at_the_capture_path_is_refused_not_followed(start, tmp_path):
    setup = await start()
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    link = tmp_path / "linked.pcapng"
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="link") as info:
        setup.server.start_capture(link)
    assert info.value.filename == str(link)
    setup.server.stop_capture()
    assert target.read_bytes() == b"precious" and link.is_symlink()
    # A link to nowhere is not followed either: nothing is created where it points.
    dangling = tmp_path / "dangling.pcapng"
    dangling.symlink_to(tmp_path / "made-through-the-link")
    with pytest.raises(PermissionError, match="link"):
        setup.server.start_capture(dangling)
    setup.server.stop_capture()
    assert not (tmp_path / "made-through-the-link").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_a_file_of_another_user_at_the_capture_path_is_refused(start, tmp_path):
    """Someone who made the file first (in a shared folder such as /tmp) would own the capture, and could read
    every peer's traffic through the handle they keep open."""
    setup = await start()
    path = tmp_path / "theirs.pcapng"
    path.write_bytes(b"")
    os.chown(path, 65534, 65534)  # nobody
    path.chmod(0o644)
    with open(path, "rb") as theirs:
        with pytest.raises(PermissionError, match="another user") as info:
            setup.server.start_capture(path)
        assert info.value.filename == str(path)
        reader, writer = await open_connection("10.0.0.42", 8080)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
        await close_writer(writer)
        setup.server.stop_capture()
        assert theirs.read() == b""
    assert path.stat().st_uid == 65534 and path.stat().st_size == 0


async def test_a_capture_replaces_a_file_of_ours_without_writing_into_it(start, tmp_path):
    """A file of ours is replaced by a new one (mode 0600): a handle on the old one, or a hard link to it, sees
    nothing of the capture."""
    setup = await start()
    path = tmp_path / "ours.pcapng"
    path.write_bytes(b"old")
    path.chmod(0o644)
    os.link(path, tmp_path / "hard-link")
    with open(path, "rb") as old:
        setup.server.start_capture(path)
        setup.server.stop_capture()
        assert old.read() == b"old"
    assert (tmp_path / "hard-link").read_bytes() == b"old"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid() and st.st_size > 3
