"""Web services behind a test WireGuard upstream (helpers_upstream.py), for `forward --upstream wireguard:PATH`:
run inside the upstream's namespace, on the kernel's stack, listening on the given addresses.

- TCP 80: HTTP, TCP 443: HTTPS (with the given certificate and key). `GET /file` answers the given file,
  `GET /whoami` the client's address as the server saw it.
- UDP 4000: answers each datagram with the sender's address.

`python3 upstream_web.py CERT KEY FILE ADDRESS...` prints `ready` once every socket listens, then a line for each
request or datagram, `<kind> <port> <client address>` ("http 80 10.77.0.2"), so that the test sees who came.
It runs until it is killed.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import sys
import threading
from typing import Any

HTTP_PORT = 80
HTTPS_PORT = 443
WHOAMI_PORT = 4000

_print_lock = threading.Lock()


def say(*words: object) -> None:
    with _print_lock:
        print(*words, flush=True)


def handler(kind: str, port: int, file: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            client = self.client_address[0]
            say(kind, port, client)
            if self.path == "/file":
                with open(file, "rb") as f:
                    body = f.read()
            elif self.path == "/whoami":
                body = client.encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def server(address: str, port: int, kind: str, file: str, tls: ssl.SSLContext | None) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    httpd = Server((address, port), handler(kind, port, file))
    if tls is not None:
        # The handshake happens in the request's thread, on its first read.
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


def whoami(address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, WHOAMI_PORT))

    def serve() -> None:
        while True:
            _, peer = sock.recvfrom(65536)
            say("udp", WHOAMI_PORT, peer[0])
            sock.sendto(f"{peer[0]} {peer[1]}".encode(), peer)

    threading.Thread(target=serve, daemon=True).start()


def main(cert: str, key: str, file: str, addresses: list[str]) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    for address in addresses:
        server(address, HTTP_PORT, "http", file, None)
        server(address, HTTPS_PORT, "https", file, tls)
        whoami(address)
    say("ready")
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
