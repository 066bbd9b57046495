"""The asyncio side of a running server: dispatches the engine's events to connections and handlers."""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence, Union, cast, overload

from . import _mitmproxy_wireguard as _native
from ._mitmproxy_wireguard import Configuration
from .peers import PeerStats
from .stream import TcpStream, _Connection

if TYPE_CHECKING:
    from ._mitmproxy_wireguard import _Event

logger = logging.getLogger("mitmproxy_wireguard")

Address = tuple[str, int]
ConnectionHandler = Callable[[TcpStream], Awaitable[None]]
DatagramHandler = Callable[[bytes, Address, Address], None]


class Refusal(enum.Enum):
    """How `accept_connection` (see `start_server`) refuses a connection: what the client gets for its SYN, as
    from a destination that refuses it or cannot be reached."""

    RESET = "reset"
    """A RST, as from a port that nothing listens on: the client sees "connection refused" (ECONNREFUSED)."""
    HOST_UNREACHABLE = "host-unreachable"
    """An ICMP destination-unreachable, host unreachable: "no route to host" (EHOSTUNREACH)."""
    NETWORK_UNREACHABLE = "network-unreachable"
    """An ICMP destination-unreachable, network unreachable: "network is unreachable" (ENETUNREACH)."""
    PROHIBITED = "prohibited"
    """An ICMP destination-unreachable, administratively prohibited, as a firewall that rejects it answers
    (Linux clients see EHOSTUNREACH for IPv4, EACCES for IPv6)."""
    SILENCE = "silence"
    """Nothing, to the SYN or its retransmissions, as a destination that drops packets: the client times out.
    The half-open connection counts toward the peer's limit until the server forgets it (after about a
    minute)."""


Answer = Union[bool, Refusal]
ConnectionAcceptor = Callable[[str, Address, Address], Union[Answer, Awaitable[Answer]]]


class _PeerAddress(tuple):  # type: ignore[type-arg]
    """A (host, port) pair that remembers the peer it came from: a reply sent to it reaches that peer even when
    several peers use the same tunnel address; `peer_public_key` names the peer."""

    peer: int
    peer_public_key: str


def _peer_address(addr: Address, peer: int, peer_public_key: str) -> Address:
    result = _PeerAddress(addr)
    result.peer = peer
    result.peer_public_key = peer_public_key
    return result


class ServerError(RuntimeError):
    """The server stopped on its own because a part of its engine failed; the message says which and why. Raised
    by `Server.wait_closed` (and so at the end of `async with server`); every connection was ended."""


class Server:
    """A running WireGuard server. Create it with `start_server`."""

    def __init__(
        self,
        engine: _native.Engine,
        handle_connection: ConnectionHandler,
        receive_datagram: DatagramHandler,
        accept_connection: ConnectionAcceptor | None = None,
    ):
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._handle_connection = handle_connection
        self._receive_datagram = receive_datagram
        self._accept_connection = accept_connection
        self._connections: dict[int, _Connection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._error: ServerError | None = None
        # Requests to the engine that wait for their reply, by number.
        self._requests: dict[int, asyncio.Future[list[PeerStats] | list[str] | None]] = {}
        self._request_numbers = itertools.count(1)
        self._wakeup_fd = engine.wakeup_fd()
        self._loop.add_reader(self._wakeup_fd, self._process_events)

    def getsockname(self) -> Address:
        """The UDP address the server listens on, `(host, port)`."""
        return self._engine.getsockname()

    def send_datagram(self, data: bytes, src_addr: Address, dst_addr: Address) -> None:
        """Sends a UDP datagram into the tunnel, from `src_addr` to `dst_addr` (a peer's address). To answer a
        datagram, swap the addresses `receive_datagram` got: the reply then reaches the peer it came from, even
        when several peers use the same tunnel address."""
        self._engine.send_datagram(bytes(data), src_addr, dst_addr, getattr(dst_addr, "peer", None))

    def start_capture(self, path: str | os.PathLike[str]) -> None:
        """Starts writing the packets inside the tunnel to `path`, a pcapng file for tcpdump or Wireshark: the
        decrypted IP packets from and to every peer, each peer an interface of its own named by its public key,
        with each packet's direction. The packets have a Linux "cooked" header (link type LINUX_SLL), not raw
        IP: libpcap, and so tcpdump, refuses a pcapng file with more than one raw IP interface. The file is created
        readable by its owner only: it holds the peers' traffic in clear. A regular file of this user at `path` is
        replaced by a new one (renamed over it: a handle or a hard link on the old one sees nothing of the
        capture); a FIFO or device of this user is written into as it is; a symbolic link, or anything of another
        user, is refused with `PermissionError`.

        The disk never slows the tunnel down: when the file cannot be written as fast as packets come, packets
        are left out of the capture, and the count is logged when the capture stops. Raises `OSError` (with the
        path as its `filename`) if the file cannot be created, `RuntimeError` if a capture is already running.
        """
        self._engine.start_capture(path)

    def stop_capture(self) -> None:
        """Stops the packet capture, if one is running: the file is complete and closed when this returns.
        Closing the server stops it too, once `wait_closed` returns, after the last packets (the resets that end
        open connections)."""
        self._engine.stop_capture()

    async def peers(self) -> list[PeerStats]:
        """Every peer's statistics, in the order the peers were added: keys, endpoint, last handshake, traffic,
        open connections, UDP flows and drops (see `PeerStats`). The engine's tasks are asked for them: the
        call waits for their answer, not for any traffic. `RuntimeError` once the server is closed."""
        request = next(self._request_numbers)
        self._engine.request_stats(request)
        stats = await self._reply(request)
        assert stats is not None
        return cast("list[PeerStats]", stats)

    async def add_peer(
        self,
        public_key: str,
        allowed_ips: str | Sequence[str] | None = None,
        preshared_key: str | None = None,
        persistent_keepalive: int | None = None,
    ) -> list[str]:
        """Adds a peer to the running server; it may handshake once this returns. Returns its AllowedIPs.

        `allowed_ips` are its tunnel addresses, as text (comma-separated) or a list; by default the next free
        ones of the server's tunnel networks, as `Configuration.add_peer` gives them. A bad value, a key the
        server has already or addresses that overlap another peer's are a `ValueError` naming the argument.
        The `Configuration` the server was started with is not changed.
        """
        if allowed_ips is not None and not isinstance(allowed_ips, str):
            allowed_ips = ", ".join(allowed_ips)
        request = next(self._request_numbers)
        self._engine.add_peer(request, public_key, allowed_ips, preshared_key, persistent_keepalive)
        added = await self._reply(request)
        assert added is not None
        return cast("list[str]", added)

    async def remove_peer(self, public_key: str) -> None:
        """Removes a peer from the running server. When this returns, its connections have ended (their
        handlers saw `ConnectionResetError`; the client got a RST if its session still worked), replies to its
        UDP addresses no longer reach it and its handshakes are refused. `ValueError` if the server has no peer
        with this key."""
        request = next(self._request_numbers)
        self._engine.remove_peer(request, public_key)
        await self._reply(request)

    def _reply(self, request: int) -> asyncio.Future[list[PeerStats] | list[str] | None]:
        future: asyncio.Future[list[PeerStats] | list[str] | None] = self._loop.create_future()
        self._requests[request] = future
        return future

    def close(self) -> None:
        """Stops the server: every open connection ends and the listening socket closes."""
        if not self._closing:
            self._closing = True
            self._engine.close()

    def is_closing(self) -> bool:
        """Whether `close()` was called."""
        return self._closing

    async def wait_closed(self) -> None:
        """Waits until the server has stopped and every handler has ended. Raises `ServerError` if the server
        stopped because its engine failed rather than because `close()` was called."""
        await asyncio.shield(self._closed)
        handlers = list(self._handlers)
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        if self._error is not None:
            raise self._error

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        host, port = self.getsockname()
        return f"Server(address={host!r}, port={port}, connections={len(self._connections)})"

    def _process_events(self) -> None:
        for event in self._engine.take_events():
            try:
                self._dispatch(event)
            except Exception:
                # One faulty protocol or callback must not cost the other events of the batch.
                logger.exception("error while handling event %r", event)

    def _dispatch(self, event: _Event) -> None:
        # The commonest kinds first.
        if isinstance(event, _native.ConnectionData):
            conn = self._connections.get(event.id)
            if conn is not None:
                conn.data_received(event.data)
        elif isinstance(event, _native.DatagramReceived):
            src = _peer_address(event.src, event.peer, event.peer_public_key)
            try:
                self._receive_datagram(event.data, src, event.dst)
            except Exception:
                logger.exception("receive_datagram failed for a datagram from %s to %s", event.src, event.dst)
        elif isinstance(event, _native.ConnectionDrained):
            conn = self._connections.get(event.id)
            if conn is not None:
                conn.drained(event.bytes)
        elif isinstance(event, _native.ConnectionEstablished):
            self._connection_established(event)
        elif isinstance(event, _native.ConnectionRequested):
            self._connection_requested(event)
        elif isinstance(event, _native.ConnectionEof):
            conn = self._connections.get(event.id)
            if conn is not None:
                conn.eof_received()
        elif isinstance(event, _native.ConnectionClosed):
            conn = self._connections.pop(event.id, None)
            if conn is not None:
                exc = ConnectionResetError("Connection reset by peer") if event.reset else None
                conn.connection_lost(exc)
        elif isinstance(event, _native.RequestDone):
            self._replied(event)
        elif isinstance(event, _native.ServerClosed):
            self._server_closed(event.error)

    def _replied(self, event: _native.RequestDone) -> None:
        future = self._requests.pop(event.request, None)
        if future is None or future.done():
            return  # The caller was cancelled.
        if event.error is not None:
            future.set_exception(ValueError(event.error))
        elif event.stats is not None:
            future.set_result([PeerStats(**s) for s in event.stats])
        else:
            future.set_result(event.allowed_ips)

    def _connection_requested(self, event: _native.ConnectionRequested) -> None:
        """A SYN waits for `accept_connection`'s answer."""
        if self._closing or self._accept_connection is None:
            self._answer(event.id, not self._closing)
            return
        try:
            answer = self._accept_connection(event.peer_public_key, event.src, event.dst)
        except Exception:
            logger.exception("accept_connection failed for a connection from %s to %s", event.src, event.dst)
            answer = False
        if inspect.isawaitable(answer):
            task = self._loop.create_task(self._await_answer(event, answer))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        else:
            self._answer(event.id, answer)

    async def _await_answer(self, event: _native.ConnectionRequested, answer: Awaitable[Answer]) -> None:
        try:
            result: Any = await answer
        except Exception:
            logger.exception("accept_connection failed for a connection from %s to %s", event.src, event.dst)
            result = False
        self._answer(event.id, result)

    def _answer(self, id: int, answer: Any) -> None:
        if answer is True:
            text = "accept"
        elif answer is False:
            text = "reset"
        elif isinstance(answer, Refusal):
            text = answer.value
        else:
            logger.error(
                "accept_connection returned %r, not True, False or a Refusal: the connection is reset", answer
            )
            text = "reset"
        if self._closing and text == "accept":
            text = "reset"
        try:
            self._engine.answer_connection(id, text)
        except RuntimeError:
            pass  # The engine has stopped: the client's connection went with it.

    def _connection_established(self, event: _native.ConnectionEstablished) -> None:
        id = event.id
        extra = {
            "peername": event.src,
            "sockname": event.dst,
            "original_dst": event.dst,
            "original_src": event.endpoint,
            "peer_public_key": event.peer_public_key,
        }
        # The loop passed on: looking it up again costs a system call each time (the running loop's pid check).
        reader = asyncio.StreamReader(loop=self._loop)
        conn = _Connection(self._engine, id, reader, extra, self._forget, self._loop)
        if self._closing:
            conn.abort()
            return
        self._connections[id] = conn
        task = self._loop.create_task(self._run_handler(TcpStream(reader, conn)))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _forget(self, id: int) -> None:
        self._connections.pop(id, None)

    async def _run_handler(self, stream: TcpStream) -> None:
        try:
            await self._handle_connection(stream)
        except Exception:
            logger.exception("connection handler failed for %r", stream)
            stream.close()

    def _server_closed(self, error: str | None) -> None:
        if error is not None:
            logger.error("the server stopped: %s", error)
            self._error = ServerError(error)
        self._closing = True
        self._loop.remove_reader(self._wakeup_fd)
        self._engine.join()
        for conn in list(self._connections.values()):
            conn.connection_lost(ConnectionAbortedError("the server was closed"))
        for task in self._handlers:
            task.cancel()
        for future in self._requests.values():
            if not future.done():
                future.set_exception(RuntimeError("the server is closed"))
        self._requests.clear()
        if not self._closed.done():
            self._closed.set_result(None)


@overload
async def start_server(
    host: str,
    cfg: Configuration,
    handle_connection: ConnectionHandler,
    receive_datagram: DatagramHandler,
    *,
    accept_connection: ConnectionAcceptor | None = None,
) -> Server: ...


@overload
async def start_server(
    host: str,
    port: int,
    private_key: str,
    peer_public_keys: list[str],
    handle_connection: ConnectionHandler,
    receive_datagram: DatagramHandler,
    *,
    accept_connection: ConnectionAcceptor | None = None,
) -> Server: ...


async def start_server(host: str, *args: Any, **kwargs: Any) -> Server:
    """Starts a WireGuard server on `host` and returns it, in either of two forms:

    - `start_server(host, cfg, handle_connection, receive_datagram)`: the key, listen port and peers of a
      `Configuration`.
    - `start_server(host, port, private_key, peer_public_keys, handle_connection, receive_datagram)`: the call
      of mitmproxy_wireguard 0.1.x, by position or by these names, with the server's private key and each
      peer's public key as base64 text. Peers given this way may use any tunnel address, and two of them the
      same one (replies reach the peer a connection or datagram came from); the server claims no tunnel
      address of its own. So mitmproxy 9's WireGuard mode, whose clients all use 10.0.0.1, runs unchanged.

    `handle_connection(stream)` runs as a task for every TCP connection a peer opens, to any address;
    `receive_datagram(data, src_addr, dst_addr)` is called for every UDP datagram a peer sends. `host` may be
    IPv4 or IPv6, or "" for every address of both; a listen port of 0 picks a free one (see `getsockname`).
    Bad keys or ports are a `ValueError` naming the argument.

    `accept_connection(peer_public_key, src_addr, dst_addr)`, a keyword argument of either form, decides on
    each TCP connection before the client hears anything: the server holds the client's SYN until it answers
    `True` (the handshake completes, then `handle_connection` runs), `False` (a RST: "connection refused") or
    a `Refusal` (a RST, an ICMP destination-unreachable, or silence), or returns an awaitable of one of these,
    as a proxy that connects to the destination first does. An exception in it is logged and the connection
    reset. Without it, every SYN is answered at once and `handle_connection` decides once the handshake is
    done.

    ```python
    async def main() -> None:
        cfg = Configuration.generate(listen_port=51820)
        print(cfg.pretty_print(endpoint="192.0.2.1:51820")[0])

        async def handle_connection(stream: TcpStream) -> None:
            stream.write(await stream.read(65536))  # echo one chunk
            stream.close()

        def receive_datagram(data: bytes, src_addr: tuple[str, int], dst_addr: tuple[str, int]) -> None:
            server.send_datagram(data, dst_addr, src_addr)  # echo

        server = await start_server("0.0.0.0", cfg, handle_connection, receive_datagram)
        async with server:
            await asyncio.Event().wait()
    ```
    """
    if _is_0_1_call(args, kwargs):
        return _call(
            _start_with_keys,
            "start_server(host, port, private_key, peer_public_keys, handle_connection, receive_datagram)",
            host,
            args,
            kwargs,
        )
    cfg = args[0] if args else kwargs.get("cfg")
    if cfg is not None and not isinstance(cfg, Configuration):
        raise TypeError(
            f"start_server() takes a Configuration or a port after host, not {type(cfg).__name__}"
        )
    return _call(_start, "start_server(host, cfg, handle_connection, receive_datagram)", host, args, kwargs)


def _call(start: Callable[..., Server], form: str, host: str, args: Any, kwargs: dict[str, Any]) -> Server:
    """`start(host, *args, **kwargs)`; arguments that do not fit are a `TypeError` that names the public call
    `form`, not the function behind it."""
    try:
        inspect.signature(start).bind(host, *args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{form}: {e}") from None
    return start(host, *args, **kwargs)


def _is_0_1_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether `start_server`'s arguments after `host` are those of the 0.1.x form: `port` by name, or a port
    number where the configuration would be (a bool is no port)."""
    if args:
        return isinstance(args[0], int) and not isinstance(args[0], bool)
    return "port" in kwargs


def _start(
    host: str,
    cfg: Configuration,
    handle_connection: ConnectionHandler,
    receive_datagram: DatagramHandler,
    *,
    accept_connection: ConnectionAcceptor | None = None,
) -> Server:
    if accept_connection is None:
        engine = _native.start_engine(host, cfg)
    else:
        engine = _native.start_engine(host, cfg, True)
    return Server(engine, handle_connection, receive_datagram, accept_connection)


def _start_with_keys(
    host: str,
    port: int,
    private_key: str,
    peer_public_keys: list[str],
    handle_connection: ConnectionHandler,
    receive_datagram: DatagramHandler,
    *,
    accept_connection: ConnectionAcceptor | None = None,
) -> Server:
    cfg = Configuration._from_keys(port, private_key, peer_public_keys)
    return _start(host, cfg, handle_connection, receive_datagram, accept_connection=accept_connection)
