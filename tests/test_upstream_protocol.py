"""The upstream proxy's parts without the network: URLs, SOCKS5's UDP ASSOCIATE messages, and the reading of an
HTTP proxy's reply (against a reply the test writes, on loopback)."""

from __future__ import annotations

import asyncio
import base64
import socket

import pytest

from mitmproxy_wireguard import forward
from mitmproxy_wireguard.forward import socks5


def test_upstream_urls_are_parsed_and_errors_never_show_the_password() -> None:
    up = forward.Upstream.from_url("socks5://us%3Aer:p%40ss@[fd00::1]:1080")
    assert (up.scheme, up.host, up.port, up.username, up.password) == (
        "socks5",
        "fd00::1",
        1080,
        "us:er",
        "p@ss",
    )
    assert str(up) == "socks5://[fd00::1]:1080" and "p@ss" not in repr(up)
    assert forward.Upstream.from_url("http://proxy.example:3128").carries_udp is False
    for url, part in [
        ("https://u:topsecret@h:1", "scheme"),
        ("socks5://u:topsecret@h", "port"),
        ("socks5://u:topsecret@h:99999", "port"),
        ("socks5://u:topsecret@:1080", "host"),
        ("socks5://u@h:1080", "credentials"),
        ("http://u:topsecret@h:1/path", "nothing after"),
    ]:
        with pytest.raises(ValueError, match=part) as e:
            forward.Upstream.from_url(url)
        assert "topsecret" not in str(e.value)
    # A URL without its scheme: the error suggests both schemes, never with the credentials.
    for url in ("proxy.example:3128", "u:topsecret@proxy.example:3128"):
        with pytest.raises(ValueError) as e:
            forward.Upstream.from_url(url)
        assert "no scheme" in str(e.value) and "topsecret" not in str(e.value)
        assert "socks5://proxy.example:3128" in str(e.value) and "http://proxy.example:3128" in str(e.value)
    assert forward.parse_dns_server("192.0.2.1") == ("192.0.2.1", 53)
    assert forward.parse_dns_server("[2001:db8::1]:5353") == ("2001:db8::1", 5353)
    with pytest.raises(ValueError):
        forward.parse_dns_server("dns.example")


def test_socks5_udp_messages_per_rfc_1928() -> None:
    assert socks5.greeting(False) == b"\x05\x01\x00" and socks5.greeting(True) == b"\x05\x02\x00\x02"
    assert socks5.chosen_method(b"\x05\x02", True) == socks5.USER_PASSWORD
    with pytest.raises(socks5.Socks5Error, match="no acceptable"):
        socks5.chosen_method(b"\x05\xff", False)
    with pytest.raises(socks5.Socks5Error, match="no acceptable"):
        socks5.chosen_method(b"\x05\x02", False)
    assert socks5.password_request("ab", "xyz") == b"\x01\x02ab\x03xyz"
    with pytest.raises(socks5.Socks5Error, match="refused"):
        socks5.check_password_reply(b"\x01\x01")
    assert socks5.associate_request() == b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"
    assert socks5.check_reply_head(b"\x05\x00\x00\x04") == socks5.IPV6
    with pytest.raises(socks5.Socks5Error, match="command not supported"):
        socks5.check_reply_head(b"\x05\x07\x00\x01")
    assert socks5.decode_address(socks5.IPV4, bytes([192, 0, 2, 1, 0x1F, 0x90])) == ("192.0.2.1", 8080)
    assert socks5.decode_address(socks5.DOMAIN, b"\x03abc\x00\x35") == ("abc", 53)
    # A datagram as built by hand from RFC 1928, section 7, and back.
    wire = b"\x00\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::7") + b"\x00\x07payload"
    assert socks5.pack_datagram("2001:db8::7", 7, b"payload") == wire
    assert socks5.unpack_datagram(wire) == ("2001:db8::7", 7, b"payload")
    for bad, problem in [
        (b"\x00\x00\x01\x01\xc0\x00\x02\x01\x00\x07x", "fragment"),
        (b"\x00\x00\x00\x01\xc0\x00", "malformed"),
        (b"\x01\x00\x00\x01\xc0\x00\x02\x01\x00\x07", "malformed"),
        (b"\x00\x00\x00\x09\x00", "address type"),
    ]:
        with pytest.raises(socks5.Socks5Error, match=problem):
            socks5.unpack_datagram(bad)


async def test_what_follows_the_http_proxys_reply_in_the_same_segment_is_kept() -> None:
    """A destination that speaks first may have its greeting in the same read as the proxy's reply; it belongs to
    the connection. Checked against a reply written in one piece by the test, on loopback."""
    requests: list[bytes] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        if b"Proxy-Authorization: Basic " + base64.b64encode(b"user:pass") in requests[-1]:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n220 greetings\r\n")
        else:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with await asyncio.start_server(reply, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        upstream = forward.Upstream.from_url(f"http://user:pass@127.0.0.1:{port}")
        reader, writer = await upstream.open_connection("2001:db8::1", 25, timeout=5)
        assert await asyncio.wait_for(reader.readline(), 5) == b"220 greetings\r\n"
        writer.close()
        assert requests[0].startswith(b"CONNECT [2001:db8::1]:25 HTTP/1.1\r\n")
        wrong = forward.Upstream.from_url(f"http://user:wrong@127.0.0.1:{port}")
        with pytest.raises(forward.UpstreamError, match="refused: 407 Proxy Authentication Required"):
            await wrong.open_connection("192.0.2.1", 25, timeout=5)


def test_the_command_line_checks_the_upstream_options(capsys: pytest.CaptureFixture[str]) -> None:
    from mitmproxy_wireguard import cli

    args = cli.build_parser().parse_args(
        ["forward", "--upstream", "socks5://u:topsecret@192.0.2.1:1080", "--upstream-dns", "192.0.2.53"]
    )
    assert str(args.upstream) == "socks5://192.0.2.1:1080" and args.upstream_dns == ("192.0.2.53", 53)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["forward", "--upstream", "socks5://u:topsecret@192.0.2.1"])
    error = capsys.readouterr().err
    assert "--upstream" in error and "port" in error and "topsecret" not in error
    with pytest.raises(SystemExit):
        cli.main(["forward", "--upstream-dns", "192.0.2.53"])
    assert "--upstream-dns needs --upstream" in capsys.readouterr().err


def test_the_command_line_reads_a_wireguard_upstream(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--upstream wireguard:PATH` reads the client configuration at start: a missing or bad file is an error
    that names the path (and the line), before anything runs."""
    import mitmproxy_wireguard as wg
    from mitmproxy_wireguard import cli

    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            cli.build_parser().parse_args(["forward", *argv])
        assert exited.value.code == 2
        return capsys.readouterr().err

    key, server_key = wg.genkey(), wg.pubkey(wg.genkey())
    good = tmp_path / "upstream.conf"
    good.write_text(
        f"[Interface]\nPrivateKey = {key}\nAddress = 10.9.0.2/32, fd09::2/128\nDNS = 10.9.0.1, example.test\n\n"
        f"[Peer]\nPublicKey = {server_key}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n"
    )
    upstream = cli.build_parser().parse_args(["forward", "--upstream", f"wireguard:{good}"]).upstream
    assert isinstance(upstream, forward.WireGuardUpstream) and upstream.carries_udp
    assert str(upstream) == f"wireguard:{good}" and upstream.endpoint == "192.0.2.1:51820"
    assert upstream.addresses == ["10.9.0.2", "fd09::2"] and upstream.dns_servers == [("10.9.0.1", 53)]
    assert key not in repr(upstream) + str(upstream) + upstream.describe()

    missing = tmp_path / "missing.conf"
    message = error("--upstream", f"wireguard:{missing}")
    assert (
        f"argument --upstream: wireguard:{missing}: cannot read the client configuration: No such file"
        in message
    )
    assert "needs the path" in error("--upstream", "wireguard:")
    assert "Is a directory" in error("--upstream", f"wireguard:{tmp_path}")
    bad = tmp_path / "bad.conf"
    bad.write_text(good.read_text().replace("192.0.2.1:51820", "192.0.2.1"))
    assert f'{bad}, line 8: "192.0.2.1" is not host:port' in error("--upstream", f"wireguard:{bad}")
    server = tmp_path / "server.conf"
    wg.Configuration.generate().to_file(server)
    assert f"{server}" in error("--upstream", f"wireguard:{server}")
    # A path alone: the scheme it needs is named.
    assert f"give wireguard:{good}" in error("--upstream", str(good))


async def test_a_wireguard_upstream_refuses_destinations_outside_its_allowed_ips(tmp_path) -> None:
    """Replies from outside the tunnel's AllowedIPs would be dropped: such a destination is refused at once
    (the tunnel need not run for that), with the reason in the flow's outcome."""
    import mitmproxy_wireguard as wg

    path = tmp_path / "upstream.conf"
    path.write_text(
        f"[Interface]\nPrivateKey = {wg.genkey()}\nAddress = 10.9.0.2/32\n\n[Peer]\n"
        f"PublicKey = {wg.pubkey(wg.genkey())}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 10.9.0.0/16\n"
    )
    upstream = forward.WireGuardUpstream.from_file(path)
    outside = f"refused: 10.10.0.1:80 is outside the AllowedIPs of upstream wireguard:{path} (10.9.0.0/16)"
    with pytest.raises(forward.UpstreamError) as refused:
        await upstream.open_connection("10.10.0.1", 80, timeout=5)
    assert str(refused.value) == outside
    with pytest.raises(forward.UpstreamError, match="outside the AllowedIPs"):
        await upstream.open_datagram(("2001:db8::1", 53))
    # Inside them, only the tunnel is missing.
    with pytest.raises(forward.UpstreamError, match="is not started"):
        await upstream.open_connection("10.9.0.1", 80, timeout=5)
