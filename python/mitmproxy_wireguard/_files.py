"""Files that hold private keys: client configurations and their QR codes."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from ._mitmproxy_wireguard import Configuration


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes `path` as a whole, readable by its owner only, whatever was there: a new file (mode 0600, never
    written through a link) is renamed over it, so an existing file's looser mode or a link planted at `path`
    does not carry over."""
    directory, name = os.path.split(os.fspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=directory or ".")
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def warn_if_readable(path: Path, logger: logging.Logger, whose: str = "the server's") -> None:
    """Warns, as wg-quick does, when others than the owner may read or write the configuration file at `path`:
    it holds a private key (`whose`)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # Reading it fails and says why.
    if mode & 0o077:
        logger.warning(
            "%s is accessible by group or others (mode %04o) and holds %s private key: chmod 600 %s",
            path,
            mode,
            whose,
            path,
        )


def read_whole_configuration(path: Path) -> Configuration:
    """Reads the configuration file at `path` for a reload: once, into memory, and parses what was read. A file
    caught while someone writes it is refused (`ValueError`) rather than applied in part, as far as that can be
    told: its last line has no newline at its end (WireGuard's tools, editors and `to_file` end every line with
    one), or its size or modification time changed while it was read. A file cut right after a line end cannot
    be told from a whole one: replace the file atomically (write a new file, then rename it over the old one).
    """
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
        data
    ) != after.st_size:
        raise ValueError(f"{path} changed while it was read: write a new file and rename it over the old one")
    if data and not data.endswith(b"\n"):
        raise ValueError(
            f"{path}: the last line has no newline at its end, so the file may be only partly written; end it "
            "with a newline, or write a new file and rename it over the old one"
        )
    return Configuration._from_bytes(data, str(path))
