"""What the command line does while a server runs: prints the peers' statistics on SIGUSR1 and every `--stats`
seconds (a `wg show`-like table on stdout, or JSON lines with `--json-log`), and applies a changed `--conf` file
on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any, Callable

from . import Configuration, Server
from ._files import read_whole_configuration, warn_if_readable
from .peers import show

logger = logging.getLogger("mitmproxy_wireguard.cli")
stats_logger = logging.getLogger("mitmproxy_wireguard.stats")


def give_addresses(cfg: Configuration) -> dict[str, list[str]]:
    """Gives each peer without AllowedIPs the next free tunnel addresses, as `add_peer` gives them (a running
    server's too), in the order of the peers, which stays as it was. Returns the addresses given, by public key.
    """
    peers = cfg.peers
    missing = [peer for peer in peers if not peer["allowed_ips"]]
    if not missing:
        return {}
    for peer in missing:
        cfg.remove_peer(peer["public_key"])
    for peer in missing:
        _add(cfg, peer, None)
    given = {peer["public_key"]: peer["allowed_ips"] for peer in cfg.peers}
    # Again in the file's order: each with the addresses it has now.
    for peer in cfg.peers:
        cfg.remove_peer(peer["public_key"])
    for peer in peers:
        _add(cfg, peer, ", ".join(given[peer["public_key"]]))
    return {peer["public_key"]: given[peer["public_key"]] for peer in missing}


def _add(cfg: Configuration, peer: dict[str, Any], address: str | None) -> None:
    cfg.add_peer(
        peer["public_key"],
        peer["preshared_key"],
        private_key=peer["private_key"],
        address=address,
        persistent_keepalive=peer["persistent_keepalive"],
    )


def write_given_addresses(cfg: Configuration, path: Path, given: dict[str, list[str]]) -> None:
    """Writes the addresses that `give_addresses` gave into the configuration file, so that the peers keep
    them; a file that cannot be written is logged (the addresses hold until the server stops)."""
    for key, addresses in given.items():
        logger.info("peer %s has no AllowedIPs in %s: gave it %s", key, path, ", ".join(addresses))
    try:
        cfg.to_file(path)
    except (ValueError, OSError) as e:
        logger.warning("could not write the peers' new AllowedIPs to %s: %s", path, e)


def _settings(peer: dict[str, Any]) -> tuple[Any, ...]:
    """What a change of needs the peer replaced."""
    return (sorted(peer["allowed_ips"]), peer["preshared_key"], peer["persistent_keepalive"])


class Runtime:
    """Statistics and reloads for one server of the command line."""

    def __init__(
        self,
        cfg: Configuration,
        conf: Path | None,
        *,
        port_given: bool,
        interval: float | None,
        json_stats: bool,
        on_added: Callable[[Server, Configuration, list[str]], None] | None = None,
        on_reloaded: Callable[[Configuration], None] | None = None,
    ):
        """`on_added(server, cfg, keys)` tells users of the peers that a reload added: `cfg` is the file as
        applied, `keys` the new peers' public keys. `on_reloaded(cfg)` follows every reload that was applied.
        """
        self._cfg = cfg
        self._conf = conf
        self._port_given = port_given
        self._interval = interval
        self._json_stats = json_stats
        self._on_added = on_added
        self._on_reloaded = on_reloaded
        # The peers as the server has them, by public key.
        self._peers = {peer["public_key"]: peer for peer in cfg.peers}
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def wrap(self, announce: Callable[[Server], None]) -> Callable[[Server], None]:
        """`start`, then `announce`: the command line runs them once the server runs. Once users read that it
        listens, SIGHUP and SIGUSR1 are handled (not: end the process)."""

        def ready(server: Server) -> None:
            self.start(server)
            announce(server)

        return ready

    def start(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._spawn, lambda: self.report(server))
        loop.add_signal_handler(signal.SIGHUP, self._spawn, lambda: self.reload(server))
        if self._interval:
            self._spawn(lambda: self._every(server, self._interval or 0))

    def _spawn(self, work: Callable[[], Any]) -> None:
        task = asyncio.ensure_future(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _every(self, server: Server, seconds: float) -> None:
        while not server.is_closing():
            await asyncio.sleep(seconds)
            await self.report(server)

    async def report(self, server: Server) -> None:
        """Prints the table, or logs one JSON record per peer."""
        try:
            stats = await server.peers()
        except RuntimeError:
            return  # The server is closed.
        if self._json_stats:
            for peer in stats:
                stats_logger.info("peer %s", peer.public_key, extra={"flow": peer.as_dict()})
        else:
            print(show(stats, self._cfg.server_public_key, server.getsockname()[1]), flush=True)

    async def reload(self, server: Server) -> None:
        """Reads the configuration file again and applies its peers: new ones are added, missing ones removed,
        changed ones (AllowedIPs, PresharedKey, PersistentKeepalive) replaced. A peer without AllowedIPs gets
        the next free tunnel addresses, written into the file. A broken file changes nothing, nor does a file
        that is only partly written as far as `read_whole_configuration` can tell (its last line lacks a newline).
        """
        async with self._reloading:
            if self._conf is None:
                logger.warning("SIGHUP: there is no --conf file to reload")
                return
            warn_if_readable(self._conf, logger)
            try:
                cfg = read_whole_configuration(self._conf)
            except (ValueError, OSError) as e:
                logger.error("could not reload %s, the peers stay as they were: %s", self._conf, e)
                return
            # The addresses are given in the file, not by the server, so that the peers keep them.
            given = give_addresses(cfg)
            if given:
                write_given_addresses(cfg, self._conf, given)
            if cfg.server_public_key != self._cfg.server_public_key or (
                not self._port_given and cfg.listen_port != self._cfg.listen_port
            ):
                logger.warning(
                    "%s: a new PrivateKey or ListenPort takes effect at the next start", self._conf
                )
            fresh = {peer["public_key"]: peer for peer in cfg.peers}
            gone = [key for key in self._peers if key not in fresh]
            changed = [
                k for k in self._peers if k in fresh and _settings(self._peers[k]) != _settings(fresh[k])
            ]
            new = [key for key in fresh if key not in self._peers]
            added: list[str] = []
            for key in gone + changed:
                try:
                    await server.remove_peer(key)
                except (ValueError, RuntimeError) as e:
                    logger.error("could not remove peer %s: %s", key, e)
                    continue
                del self._peers[key]
                if key in gone:
                    logger.info("peer %s removed", key)
            for key in changed + new:
                peer = fresh[key]
                try:
                    allowed_ips = await server.add_peer(
                        key,
                        peer["allowed_ips"] or None,
                        peer["preshared_key"],
                        peer["persistent_keepalive"],
                    )
                except (ValueError, RuntimeError) as e:
                    logger.error("could not add peer %s: %s", key, e)
                    continue
                # As the file has it: the next reload compares with the file.
                self._peers[key] = peer
                if key in new:
                    added.append(key)
                logger.info(
                    "peer %s %s (%s)", key, "changed" if key in changed else "added", ", ".join(allowed_ips)
                )
            logger.info(
                "reloaded %s: %d peer(s) added, %d removed, %d changed",
                self._conf,
                len(new),
                len(gone),
                len(changed),
            )
            if self._on_reloaded is not None:
                self._on_reloaded(cfg)
            if added and self._on_added is not None:
                self._on_added(server, cfg, added)
