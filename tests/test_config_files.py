"""WireGuard configuration files, peers and tunnel addresses, client configurations and their QR codes: what a
user of `Configuration` and `mitmproxy_wireguard.qr` relies on."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

import mitmproxy_wireguard as wg
from helpers import decode_png_qr, png_size
from helpers_cli import config_fields
from mitmproxy_wireguard import qr


def keypair() -> tuple[str, str]:
    private = wg.genkey()
    return private, wg.pubkey(private)


# Round trips.


def test_file_round_trip_keeps_everything(tmp_path: Path) -> None:
    cfg = wg.Configuration.generate(listen_port=51820, peers=2)
    _, phone = keypair()
    cfg.add_peer(public_key=phone, preshared_key=wg.genkey(), persistent_keepalive=25)
    path = tmp_path / "wg0.conf"
    cfg.to_file(path)

    back = wg.Configuration.from_file(path)
    assert back == cfg
    assert back.peers == cfg.peers
    assert (back.listen_port, back.address, back.dns, back.mtu) == (51820, cfg.address, cfg.dns, 1420)
    again = tmp_path / "again.conf"
    back.to_file(str(again))
    assert again.read_text() == path.read_text()


def test_file_and_json_convert_into_each_other_without_loss(tmp_path: Path) -> None:
    cfg = wg.Configuration.generate(listen_port=0, peers=3)
    cfg.add_peer(public_key=keypair()[1], address="10.0.9.9/32")
    path = tmp_path / "wg0.conf"
    cfg.to_file(path)
    from_json = wg.Configuration.from_json(wg.Configuration.from_file(path).to_json())
    assert from_json == cfg
    from_json.to_file(tmp_path / "from_json.conf")
    assert (tmp_path / "from_json.conf").read_text() == path.read_text()
    assert json.loads(wg.Configuration.from_file(path).to_json()) == json.loads(cfg.to_json())


def test_the_file_is_private_and_replaced_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text("old")
    os.chmod(path, 0o644)
    cfg = wg.Configuration.generate()
    cfg.to_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["wg0.conf"]
    assert wg.Configuration.from_file(path) == cfg


def test_a_link_planted_where_the_new_file_is_made_is_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not to be touched")
    os.chmod(elsewhere, 0o644)
    (tmp_path / ".wg0.conf.tmp").symlink_to(elsewhere)
    cfg = wg.Configuration.generate()
    cfg.to_file(tmp_path / "wg0.conf")
    assert elsewhere.read_text() == "not to be touched"
    assert stat.S_IMODE((tmp_path / "wg0.conf").stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "wg0.conf"]


def test_a_file_as_people_write_it(tmp_path: Path) -> None:
    server, _ = keypair()
    _, phone = keypair()
    _, laptop = keypair()
    psk = wg.genkey()
    path = tmp_path / "server.conf"
    path.write_text(
        "# my server\n"
        "[interface]\n"
        f"  privatekey=  {server}   # keep secret\n"
        "LISTENPORT = 51000\n"
        "Address = 10.8.0.1/24\n"
        "address = fd08::1/64\n"
        "DNS = 10.8.0.1, lan\n"
        "MTU = 1380\n"
        "\n"
        "[Peer]  # phone\n"
        f"PublicKey = {phone}\n"
        f"PresharedKey = {psk}\n"
        "AllowedIPs = 10.8.0.2/32,fd08::2/128\n"
        "PersistentKeepalive = off\n"
        "\n"
        "[PEER]\n"
        "# PublicKey = an old key, commented out\n"
        f"publickey = {laptop}\n"
        "AllowedIPs = 10.8.0.3\n"
        "AllowedIPs = 192.168.50.0/24\n"
        "PersistentKeepalive = 25\n"
    )
    cfg = wg.Configuration.from_file(path)
    assert cfg.listen_port == 51000
    assert cfg.server_public_key == wg.pubkey(server)
    assert cfg.address == ["10.8.0.1/24", "fd08::1/64"]
    assert cfg.dns == ["10.8.0.1", "lan"]
    assert cfg.mtu == 1380
    assert cfg.client_public_keys == [phone, laptop]
    assert cfg.client_private_keys == []
    assert cfg.peers[0] == {
        "public_key": phone,
        "private_key": None,
        "preshared_key": psk,
        "allowed_ips": ["10.8.0.2/32", "fd08::2/128"],
        "persistent_keepalive": None,
    }
    assert cfg.peers[1]["allowed_ips"] == ["10.8.0.3/32", "192.168.50.0/24"]
    assert cfg.peers[1]["persistent_keepalive"] == 25
    # A new peer gets the next free host of the file's networks.
    cfg.add_peer()
    assert cfg.peers[2]["allowed_ips"] == ["10.8.0.4/32", "fd08::4/128"]


# Peers and their addresses.


def test_peers_get_their_own_addresses_of_both_families() -> None:
    cfg = wg.Configuration.generate(peers=3)
    assert cfg.address == ["10.0.0.1/16", "fd00::1/64"]
    assert [p["allowed_ips"] for p in cfg.peers] == [
        ["10.0.0.2/32", "fd00::2/128"],
        ["10.0.0.3/32", "fd00::3/128"],
        ["10.0.0.4/32", "fd00::4/128"],
    ]
    custom = wg.Configuration.custom(51820, wg.genkey(), [wg.genkey(), wg.genkey()])
    assert [p["allowed_ips"][0] for p in custom.peers] == ["10.0.0.2/32", "10.0.0.3/32"]


def test_addresses_skip_the_servers_and_the_dns_addresses() -> None:
    cfg = wg.Configuration.generate(peers=100)
    ipv4 = [p["allowed_ips"][0] for p in cfg.peers]
    assert len(set(ipv4)) == 100
    assert "10.0.0.1/32" not in ipv4 and "10.0.0.53/32" not in ipv4
    assert all(not p["allowed_ips"][1] == "fd00::53/128" for p in cfg.peers)


def test_add_and_remove_peers() -> None:
    cfg = wg.Configuration.generate(peers=2)
    generated = cfg.add_peer()
    assert cfg.client_public_keys[-1] == generated
    assert wg.pubkey(cfg.client_private_keys[-1]) == generated
    assert cfg.peers[-1]["allowed_ips"] == ["10.0.0.4/32", "fd00::4/128"]

    _, phone = keypair()
    psk = wg.genkey()
    assert cfg.add_peer(phone, psk) == phone
    assert cfg.peers[-1]["private_key"] is None and cfg.peers[-1]["preshared_key"] == psk
    assert len(cfg.client_private_keys) == 3

    second = cfg.client_public_keys[1]
    cfg.remove_peer(second)
    assert second not in cfg.client_public_keys and len(cfg.peers) == 3
    # The freed address goes to the next peer.
    cfg.add_peer()
    assert cfg.peers[-1]["allowed_ips"] == ["10.0.0.3/32", "fd00::3/128"]

    with pytest.raises(ValueError, match="no peer"):
        cfg.remove_peer(second)
    with pytest.raises(ValueError, match="already"):
        cfg.add_peer(phone)
    with pytest.raises(ValueError, match="public_key"):
        cfg.add_peer("not a key")
    with pytest.raises(ValueError, match="preshared_key"):
        cfg.add_peer(preshared_key="short")
    with pytest.raises(ValueError, match="does not belong"):
        cfg.add_peer(public_key=phone, private_key=wg.genkey())
    with pytest.raises(ValueError, match="overlaps"):
        cfg.add_peer(address="10.0.0.2/32")
    with pytest.raises(ValueError, match="persistent_keepalive"):
        cfg.add_peer(persistent_keepalive=0)
    assert len(cfg.peers) == 4


def test_a_peer_with_its_own_address() -> None:
    cfg = wg.Configuration.generate(peers=0)
    key = cfg.add_peer(address="10.0.7.7/32, fd00::7:7/128", persistent_keepalive=15)
    assert cfg.peers[0]["public_key"] == key
    assert cfg.peers[0]["allowed_ips"] == ["10.0.7.7/32", "fd00::7:7/128"]
    assert cfg.peers[0]["persistent_keepalive"] == 15
    assert "Address = 10.0.7.7/32, fd00::7:7/128\n" in cfg.pretty_print()[0]


async def test_a_server_starts_with_peers_known_by_public_key_only(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(
        f"[Interface]\nPrivateKey = {wg.genkey()}\nListenPort = 0\n\n[Peer]\nPublicKey = {keypair()[1]}\n"
    )

    async def handle(stream: wg.TcpStream) -> None:
        stream.close()

    cfg = wg.Configuration.from_file(path)
    async with await wg.start_server("127.0.0.1", cfg, handle, lambda *args: None) as server:
        assert server.getsockname()[1] != 0


# Client configurations.


def test_client_configs_use_each_peers_address_and_name_dns_and_mtu() -> None:
    cfg = wg.Configuration.generate(listen_port=51820, peers=2)
    _, phone = keypair()
    psk = wg.genkey()
    cfg.add_peer(phone, psk)
    texts = cfg.pretty_print(endpoint="192.0.2.1:51820")
    assert len(texts) == 3
    for text, peer in zip(texts, cfg.peers):
        fields = config_fields(text)
        assert fields["Address"] == ", ".join(peer["allowed_ips"])
        assert fields["DNS"] == "10.0.0.53, fd00::53"
        assert fields["MTU"] == "1420"
        assert fields["Peer.PublicKey"] == cfg.server_public_key
        assert fields["Peer.AllowedIPs"] == "0.0.0.0/0, ::/0"
        assert fields["Peer.Endpoint"] == "192.0.2.1:51820"
    assert config_fields(texts[0])["PrivateKey"] == cfg.client_private_keys[0]
    # A device with its own key: its config is a template with a placeholder key, and has the preshared key.
    assert config_fields(texts[2])["PrivateKey"] == "<the device's own key>"
    assert config_fields(texts[2])["Peer.PresharedKey"] == psk


def test_client_config_options() -> None:
    cfg = wg.Configuration.generate(listen_port=4000)
    (default,) = cfg.pretty_print()
    assert config_fields(default)["Peer.Endpoint"] == "127.0.0.1:4000"
    (text,) = cfg.pretty_print("10.0.0.7/32", "10.0.0.0/24", "[2001:db8::1]:4000", dns="", mtu=0)
    fields = config_fields(text)
    assert fields["Address"] == "10.0.0.7/32"
    assert fields["Peer.AllowedIPs"] == "10.0.0.0/24"
    assert fields["Peer.Endpoint"] == "[2001:db8::1]:4000"
    assert "DNS" not in fields and "MTU" not in fields
    (text,) = cfg.pretty_print(dns="192.0.2.53", mtu=1280)
    assert config_fields(text)["DNS"] == "192.0.2.53"
    assert config_fields(text)["MTU"] == "1280"
    with pytest.raises(ValueError, match="mtu"):
        cfg.pretty_print(mtu=100)
    with pytest.raises(ValueError, match="dns"):
        cfg.pretty_print(dns="not a name!")


def test_a_peer_without_address_needs_one_given(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(f"[Interface]\nPrivateKey = {wg.genkey()}\n[Peer]\nPublicKey = {keypair()[1]}\n")
    cfg = wg.Configuration.from_file(path)
    with pytest.raises(ValueError, match="no tunnel address"):
        cfg.pretty_print()
    assert "Address = 10.0.0.9/32" in cfg.pretty_print(address="10.0.0.9/32")[0]


# Broken files.

KEY = wg.genkey()
PEER = wg.pubkey(wg.genkey())
OTHER_PEER = wg.pubkey(wg.genkey())
BROKEN = {
    "no interface section": ("# empty\n", None, "[Interface]"),
    "key before any section": (f"PrivateKey = {KEY}\n", 1, "PrivateKey"),
    "no private key": ("[Interface]\nListenPort = 51820\n", 1, "PrivateKey"),
    "bad private key": ("[Interface]\nPrivateKey = abc\n", 2, "PrivateKey"),
    "bad port": (f"[Interface]\nPrivateKey = {KEY}\nListenPort = 65536\n", 3, "ListenPort"),
    "port not a number": (f"[Interface]\nPrivateKey = {KEY}\nListenPort = http\n", 3, "ListenPort"),
    "unknown field": (f"[Interface]\nPrivateKey = {KEY}\nColor = blue\n", 3, "Color"),
    "unsupported field": (f"[Interface]\nPrivateKey = {KEY}\nPostUp = iptables -F\n", 3, "PostUp"),
    "unknown section": (f"[Interface]\nPrivateKey = {KEY}\n\n[Peers]\n", 4, "[Peers]"),
    "second interface": (f"[Interface]\nPrivateKey = {KEY}\n[Interface]\n", 3, "[Interface]"),
    "not key = value": (f"[Interface]\nPrivateKey = {KEY}\nListenPort 51820\n", 3, "ListenPort 51820"),
    "value given twice": (f"[Interface]\nPrivateKey = {KEY}\nMTU = 1420\nMTU = 1280\n", 4, "MTU"),
    "bad address": (f"[Interface]\nPrivateKey = {KEY}\nAddress = 10.0.0.1/33\n", 3, "Address"),
    "bad mtu": (f"[Interface]\nPrivateKey = {KEY}\nMTU = 68\n", 3, "MTU"),
    "bad dns": (f"[Interface]\nPrivateKey = {KEY}\nDNS = 10.0.0.53, a b\n", 3, "DNS"),
    "peer without public key": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nAllowedIPs = 10.0.0.2\n",
        3,
        "PublicKey",
    ),
    "bad public key": (f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER[:-2]}\n", 4, "PublicKey"),
    "bad preshared key": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER}\nPresharedKey = x\n",
        5,
        "PresharedKey",
    ),
    "bad allowed ips": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.0.0.2/32, nowhere\n",
        5,
        "AllowedIPs",
    ),
    "bad keepalive": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER}\nPersistentKeepalive = often\n",
        5,
        "PersistentKeepalive",
    ),
    "endpoint": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER}\nEndpoint = 192.0.2.1:51820\n",
        5,
        "Endpoint",
    ),
    "same peer twice": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER}\n[Peer]\nPublicKey = {PEER}\n",
        6,
        "PublicKey",
    ),
    "overlapping allowed ips": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.0.0.0/24\n"
        f"[Peer]\nPublicKey = {OTHER_PEER}\nAllowedIPs = 10.0.0.2/32\n",
        8,
        "AllowedIPs",
    ),
    "a client key that is not the peer's": (
        f"[Interface]\nPrivateKey = {KEY}\n[Peer]\n# PrivateKey = {wg.genkey()}\nPublicKey = {PEER}\n",
        4,
        "PrivateKey",
    ),
}


@pytest.mark.parametrize("text, line, field", BROKEN.values(), ids=BROKEN.keys())
def test_broken_files_name_file_line_and_field(
    tmp_path: Path, text: str, line: int | None, field: str
) -> None:
    path = tmp_path / "broken.conf"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        wg.Configuration.from_file(path)
    message = str(info.value)
    assert str(path) in message
    assert field in message
    if line is None:
        assert "line" not in message
    else:
        assert re.search(rf"\bline {line}\b", message), message


def test_a_binary_file_is_a_value_error_and_a_missing_one_an_os_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.conf"
    path.write_bytes(b"[Interface]\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"binary\.conf, line 2"):
        wg.Configuration.from_file(path)
    with pytest.raises(FileNotFoundError):
        wg.Configuration.from_file(tmp_path / "missing.conf")


def test_plain_comments_that_look_like_keys_are_comments(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(
        f"[Interface]\nPrivateKey = {KEY}\n# ListenPort = 1\n[Peer]\n# PrivateKey = (on the phone)\n"
        f"PublicKey = {PEER}\n"
    )
    cfg = wg.Configuration.from_file(path)
    assert cfg.listen_port == 0 and cfg.peers[0]["private_key"] is None


# QR codes.


def test_png_qr_code_of_a_client_config_decodes_to_it(tmp_path: Path) -> None:
    (text,) = wg.Configuration.generate().pretty_print(endpoint="192.0.2.1:51820")
    path = tmp_path / "client.png"
    qr.save_png(text, path, scale=4)
    width, height = png_size(path.read_bytes())
    assert width == height and width % 4 == 0 and width >= 4 * (25 + 8)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decode_png_qr(path) == text


def test_terminal_qr_code_is_a_square_of_half_blocks() -> None:
    (text,) = wg.Configuration.generate().pretty_print(endpoint="192.0.2.1:51820")
    lines = qr.terminal(text).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert set("".join(lines)) <= set(" █▀▄")
    # Two modules a character vertically: about twice as wide as high, with a light quiet zone around.
    assert len(lines[0]) // 2 - 2 <= len(lines) <= len(lines[0]) // 2 + 2
    assert set(lines[0]) <= {"█", "▄"} and set(lines[-1]) <= {"▀", "█", " "}
    colored = qr.terminal(text, color=True).splitlines()
    assert all(line.startswith("\x1b[") and line.endswith("\x1b[0m") for line in colored)
