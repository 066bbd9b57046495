"""The command line, `mitmproxy-wireguard` or `python -m mitmproxy_wireguard`: an echo server or a transparent
proxy, ready for WireGuard clients, with their configurations and QR codes printed at start."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import errno
import json
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import Configuration, Server, ServerError, echo, forward, qr
from ._files import warn_if_readable, write_private
from ._program import host_port
from ._runtime import Runtime, give_addresses, write_given_addresses

logger = logging.getLogger("mitmproxy_wireguard.cli")

DEFAULT_PORT = 51820
# What client configurations have in place of a private key the server does not have.
PLACEHOLDER = "<the device's own key>"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return port


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of peers (1 to 1000)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (more than 0)")
    return seconds


def _upstream(text: str) -> forward.AnyUpstream:
    try:
        return forward.parse_upstream(text)
    except ValueError as e:  # The message never shows the credentials; a file's, its path and line.
        raise argparse.ArgumentTypeError(str(e)) from None


def _dns_server(text: str) -> tuple[str, int]:
    try:
        return forward.parse_dns_server(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="mitmproxy-wireguard",
        description="A user-space WireGuard server for any device that can be configured as a WireGuard "
        "client. It prints each client's configuration and QR code at start.",
    )
    # Not `required`: without a command, the whole help is printed (see `main`).
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "echo",
        parents=[common],
        help="echo every TCP connection and UDP datagram back, whatever its destination",
        description="An echo server: every TCP connection and UDP datagram that a client sends into the tunnel "
        "comes back as it was sent. Clients route only the tunnel's addresses to it.",
    )
    fwd = commands.add_parser(
        "forward",
        parents=[common],
        help="a transparent proxy: forward everything to its destination",
        description="A transparent proxy: every TCP connection and UDP datagram of the clients goes to the "
        "destination it was sent to, from this machine (or through --upstream: a proxy, or another WireGuard "
        "tunnel); DNS queries to the tunnel's DNS address are answered with this machine's resolver (or through "
        "the upstream). One log line per finished flow.",
    )
    add_forward_options(fwd)
    return parser


def common_options() -> argparse.ArgumentParser:
    """The options of every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conf",
        metavar="PATH",
        type=Path,
        help="the server's WireGuard configuration file (wg-quick format); created with fresh keys when "
        "missing, so that keys survive restarts. Without it, every start has fresh keys",
    )
    common.add_argument("--host", default="0.0.0.0", help="the address to listen on (default: %(default)s)")
    common.add_argument(
        "--port",
        type=_port,
        help=f"the UDP port to listen on (default: the file's ListenPort, else {DEFAULT_PORT})",
    )
    common.add_argument(
        "--peers",
        type=_count,
        default=1,
        metavar="N",
        help="how many clients a new configuration has (default: %(default)s)",
    )
    common.add_argument(
        "--endpoint",
        metavar="HOST[:PORT]",
        help="the server's address as clients reach it, for their configurations (default: this machine's "
        "address and the listen port)",
    )
    common.add_argument(
        "--export",
        metavar="DIR",
        type=Path,
        help="also write each client's configuration and QR code to DIR/client-N.conf and DIR/client-N.png",
    )
    common.add_argument(
        "--pcap",
        metavar="FILE",
        type=Path,
        help="write the packets inside the tunnel, decrypted, to FILE for tcpdump or Wireshark (pcapng, an "
        "interface per peer; created readable by its owner only)",
    )
    common.add_argument("--no-qr", action="store_true", help="print no QR codes")
    common.add_argument(
        "--json-log",
        action="store_true",
        help="log JSON lines, one object a record (peer statistics too: one record a peer)",
    )
    common.add_argument(
        "--stats",
        type=_seconds,
        metavar="N",
        help="print every peer's statistics every N seconds (and on SIGUSR1 in any case); SIGHUP applies the "
        "peers of a changed --conf file",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log debug records too")
    return common


def add_forward_options(fwd: argparse.ArgumentParser) -> None:
    """The options of `forward` alone."""
    fwd.add_argument(
        "--allow-local",
        action="store_true",
        help="allow destinations on this machine itself (its loopback, link-local and own addresses) and "
        "cloud metadata services",
    )
    limits = forward.Limits()
    fwd.add_argument(
        "--tcp-idle-timeout",
        type=_seconds,
        default=limits.tcp_idle_timeout,
        metavar="SECONDS",
        help="reset a TCP connection with no data either way for this long (default: %(default)g)",
    )
    fwd.add_argument(
        "--udp-idle-timeout",
        type=_seconds,
        default=limits.udp_idle_timeout,
        metavar="SECONDS",
        help="end a UDP flow with no datagram either way for this long (default: %(default)g)",
    )
    fwd.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=limits.connect_timeout,
        metavar="SECONDS",
        help="reset a TCP connection whose destination does not answer within this time (default: %(default)g)",
    )
    fwd.add_argument(
        "--upstream",
        type=_upstream,
        metavar="URL",
        help="send every connection through this proxy: socks5://[USER:PASSWORD@]HOST:PORT (UDP too, where it "
        "allows UDP ASSOCIATE) or http://[USER:PASSWORD@]HOST:PORT (HTTP CONNECT, no UDP); or wireguard:PATH: "
        "every connection and UDP flow goes out through the WireGuard tunnel of the client configuration at "
        "PATH (wg-quick format), and DNS to the DNS server it names",
    )
    fwd.add_argument(
        "--upstream-dns",
        type=_dns_server,
        metavar="IP[:PORT]",
        help="with --upstream: send DNS queries to the tunnel's DNS address on to this DNS server, over TCP "
        "through a proxy, through a WireGuard upstream's tunnel as they came (default there: the DNS of its "
        "configuration)",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a record; a flow's numbers are fields of its own."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(getattr(record, "flow", None) or {})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(verbose: bool, json_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_log:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(asctime)s %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Quiet, yet telling who connects, which handshakes fail and how each flow went.
    logging.getLogger("mitmproxy_wireguard").setLevel(logging.DEBUG if verbose else logging.INFO)


def raise_open_file_limit() -> None:
    """Every connection `forward` carries holds a socket: the soft limit on open files (often 1024) goes up to the
    hard limit, as far as the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Without a hard limit, the kernel's own cap (fs.nr_open) is 2**20 by default.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        logger.debug("could not raise the open-file limit from %d to %d: %s", soft, target, e)


def check_paths(conf: Path | None, export: Path | None) -> str | None:
    """What is wrong with the paths of `--conf` and `--export`, before a server starts, or None."""
    if conf is not None:
        if conf.is_dir():
            return (
                f"--conf {conf}: is a directory; give the path of a configuration file (created when missing)"
            )
        if not conf.exists() and not conf.parent.is_dir():
            return (
                f"--conf {conf}: the directory {conf.parent} does not exist; create it, or give a file in an "
                "existing directory (the file itself is created when missing)"
            )
    if export is not None:
        if export.exists() and not export.is_dir():
            return (
                f"--export {export}: is a file, not a directory; give a directory (created when missing) for "
                "the client-N.conf and client-N.png files"
            )
        try:
            export.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"--export {export}: cannot create the directory: {e.strerror or e}"
    return None


def path_error(option: str, path: Path | None, e: OSError) -> str:
    """An error of the file of `option` (its path named once), as the command line reports it."""
    if path is None:
        return str(e)
    return f"{option} {path}: {e.strerror or e}"


def listen_error(e: OSError, host: str, port: int) -> str | None:
    """What to do when the socket cannot be bound, or None for other errors."""
    if e.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on UDP {host_port(host or '*', port)}: the address is already in use (by another "
            "program, or another server); choose another port with --port (--port 0: any free one)"
        )
    if e.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on UDP {host_port(host, port)}: this machine has no such address; check --host"
    if e.errno == errno.EACCES:
        return f"cannot listen on UDP {host_port(host or '*', port)}: not permitted; choose a port above 1023"
    return None


def load_configuration(path: Path | None, port: int | None, peers: int) -> Configuration:
    """The configuration file at `path`, made and saved with fresh keys when missing; `port` overrides the
    listen port. Peers without AllowedIPs get the next free tunnel addresses, written into the file."""
    if path is not None and path.exists():
        warn_if_readable(path, logger)
        cfg = Configuration.from_file(path)
        given = give_addresses(cfg)
        if given:
            write_given_addresses(cfg, path, given)
        if port is not None:
            cfg.listen_port = port
        return cfg
    cfg = Configuration.generate(listen_port=DEFAULT_PORT if port is None else port, peers=peers)
    if path is not None:
        cfg.to_file(path)
        logger.info("wrote a new configuration with fresh keys to %s", path)
    return cfg


def client_endpoint(requested: str | None, host: str, port: int) -> str:
    """The Endpoint line of client configurations: `requested` (its port defaults to `port`), or this machine."""
    if not requested:
        return host_port(echo.endpoint_host(host), port)
    if requested.startswith("["):
        address, _, rest = requested[1:].partition("]")
        return f"[{address}]{rest}" if rest.startswith(":") else f"[{address}]:{port}"
    if requested.count(":") == 1:
        return requested
    return host_port(requested, port)


def client_report(
    cfg: Configuration,
    configs: list[str],
    show_qr: bool,
    color: bool,
    export: Path | None,
    only: Sequence[str] | None = None,
) -> str:
    """Each client's configuration and QR code, as printed at start; files in `export` too. `only`: the
    clients with these public keys alone.

    For a peer whose private key the server does not have (the device made its own), the configuration is a
    template with a placeholder key, with neither a QR code nor a file: it would not work as it is."""
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for i, (text, peer) in enumerate(zip(configs, cfg.peers), 1):
        if only is not None and peer["public_key"] not in only:
            continue
        addresses = ", ".join(peer["allowed_ips"]) or "no tunnel address"
        lines += [f"------ client {i}: {addresses} ------", text.rstrip(), ""]
        if peer["private_key"] is None:
            lines += [
                f"(A template: the device made its own key, {peer['public_key']}; put its private key in place "
                f"of {PLACEHOLDER}. No QR code and no file: with a placeholder key they would not work.)",
                "",
            ]
            continue
        if show_qr:
            lines += [qr.terminal(text, color=color)]
        if export is not None:
            conf = export / f"client-{i}.conf"
            write_private(conf, text.encode())
            qr.save_png(text, export / f"client-{i}.png")
            lines += [f"Written to {conf} and {export / f'client-{i}.png'}.", ""]
    return "\n".join(lines)


def reporter(
    args: argparse.Namespace, allowed_ips: str, dns: str | None
) -> Callable[[Server, Configuration, Sequence[str] | None], str]:
    """The client configurations of `cfg` (of the peers in `keys`, or all) for a running server."""

    def report(server: Server, cfg: Configuration, keys: Sequence[str] | None) -> str:
        port = server.getsockname()[1]
        configs = cfg.pretty_print(
            allowed_ips=allowed_ips, endpoint=client_endpoint(args.endpoint, args.host, port), dns=dns
        )
        color = sys.stdout.isatty()
        return client_report(cfg, configs, show_qr=not args.no_qr, color=color, export=args.export, only=keys)

    return report


def announcer(
    args: argparse.Namespace, cfg: Configuration, allowed_ips: str, dns: str | None, hint: list[str]
) -> Callable[[Server], None]:
    describe = reporter(args, allowed_ips, dns)

    def announce(server: Server) -> None:
        if args.pcap is not None:
            server.start_capture(args.pcap)
        port = server.getsockname()[1]
        report = describe(server, cfg, None)
        kind = "echo server" if args.command == "echo" else "transparent proxy"
        header = f"WireGuard {kind} listening on {args.host or '*'}:{port}."
        if args.conf is None:
            header += " Fresh keys: use --conf PATH to keep them."
        if args.pcap is not None:
            header += f" Capturing packets to {args.pcap}."
        print("\n".join([header, "", report, *hint]), flush=True)

    return announce


def added_reporter(
    args: argparse.Namespace, allowed_ips: str, dns: str | None
) -> Callable[[Server, Configuration, list[str]], None]:
    """Prints the client configurations of the peers that a reload added."""
    describe = reporter(args, allowed_ips, dns)

    def added(server: Server, cfg: Configuration, keys: list[str]) -> None:
        print(describe(server, cfg, keys), flush=True)

    return added


async def run(args: argparse.Namespace, cfg: Configuration) -> None:
    if args.command == "echo":
        allowed_ips, dns = echo.tunnel_networks(cfg), ""
    else:
        allowed_ips, dns = "0.0.0.0/0, ::/0", None
    # `forward` refuses the peers' tunnel addresses as destinations: as they are after each reload.
    policy = forward.Policy(cfg, args.allow_local) if args.command == "forward" else None
    runtime = Runtime(
        cfg,
        args.conf,
        port_given=args.port is not None,
        interval=args.stats,
        json_stats=args.json_log,
        on_added=added_reporter(args, allowed_ips, dns),
        on_reloaded=policy.update if policy is not None else None,
    )
    if args.command == "echo":
        announce = announcer(args, cfg, allowed_ips, dns, echo.echo_hint())
        await echo.serve(args.host, cfg.listen_port, cfg, announce=runtime.wrap(announce))
    else:
        dns = ", ".join(cfg.dns)
        upstream_dns = args.upstream_dns
        tunnel = args.upstream if isinstance(args.upstream, forward.WireGuardUpstream) else None
        if upstream_dns is None and tunnel is not None and tunnel.dns_servers:
            upstream_dns = tunnel.dns_servers[0]
        if upstream_dns is not None:
            server = host_port(*upstream_dns)
            hint = [f"DNS queries to {dns} go to {server} through {args.upstream}."] if dns else []
        elif tunnel is not None:
            hint = (
                [
                    f"DNS queries to {dns} are answered with this machine's resolver: {tunnel.path} names no "
                    "DNS server (give one there, or --upstream-dns IP to reach one through the tunnel)."
                ]
                if dns
                else []
            )
        else:
            hint = [f"DNS queries to {dns} are answered with this machine's resolver."] if dns else []
        if tunnel is not None:
            hint.append(f"Every connection and UDP flow goes through {tunnel.describe()}.")
        elif args.upstream is not None:
            hint.append(f"Every connection goes through {args.upstream}.")
        announce = announcer(args, cfg, allowed_ips, dns, hint)
        limits = forward.Limits(
            tcp_idle_timeout=args.tcp_idle_timeout,
            udp_idle_timeout=args.udp_idle_timeout,
            connect_timeout=args.connect_timeout,
        )
        await forward.serve(
            args.host,
            cfg,
            allow_local=args.allow_local,
            limits=limits,
            announce=runtime.wrap(announce),
            upstream=args.upstream,
            upstream_dns=upstream_dns,
            policy=policy,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "upstream_dns", None) is not None and args.upstream is None:
        parser.error("--upstream-dns needs --upstream")
    setup_logging(args.verbose, args.json_log)
    if isinstance(getattr(args, "upstream", None), forward.WireGuardUpstream):
        warn_if_readable(args.upstream.path, logger, "the tunnel's")
    raise_open_file_limit()
    problem = check_paths(args.conf, args.export)
    if problem is not None:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    try:
        cfg = load_configuration(args.conf, args.port, args.peers)
    except OSError as e:
        parser.exit(2, f"{parser.prog}: error: {path_error('--conf', args.conf, e)}\n")
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    try:
        asyncio.run(run(args, cfg))
    except OSError as e:
        message = listen_error(e, args.host, cfg.listen_port) or str(e)
        parser.exit(1, f"{parser.prog}: error: {message}\n")
    except (ServerError, forward.UpstreamError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        return 130
    return 0
