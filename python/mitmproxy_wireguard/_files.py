"""Files that hold private keys: client configurations and their QR codes."""

from __future__ import annotations

import os
import tempfile


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
