"""Starts a WireGuard echo server and prints a client configuration for it. Ctrl-C stops it.

python3 echo_test_server.py [HOST] [PORT]
"""

import asyncio
import logging
import sys

from mitmproxy_wireguard.echo import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 51820
    asyncio.run(serve(host, port))
