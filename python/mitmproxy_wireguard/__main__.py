"""`python -m mitmproxy_wireguard`: see `cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
