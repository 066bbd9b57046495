"""QR codes of client configurations, which the mobile WireGuard apps import by scanning them."""

from __future__ import annotations

import io
import os

import segno

from ._files import write_private

# White on black, whatever the terminal's own colors: the code is drawn with its light modules as blocks.
_ANSI_START = "\x1b[97;40m"
_ANSI_END = "\x1b[0m"


def _make(text: str) -> segno.QRCode:
    # The lowest error correction keeps the code small; segno raises it where that costs no size.
    return segno.make(text, error="l", micro=False)


def terminal(text: str, color: bool = False) -> str:
    """The QR code of `text` as lines of Unicode half blocks, two modules a character.

    Light modules are drawn as blocks, which suits a light-on-dark terminal; `color` adds ANSI codes that draw
    white on black on any terminal.
    """
    out = io.StringIO()
    _make(text).terminal(out=out, border=2, compact=True)
    lines = out.getvalue().splitlines()
    if color:
        lines = [f"{_ANSI_START}{line}{_ANSI_END}" for line in lines]
    return "\n".join(lines) + "\n"


def save_png(text: str, path: str | os.PathLike[str], scale: int = 6) -> None:
    """Writes the QR code of `text` as a PNG image, `scale` pixels a module, with the standard quiet zone. The
    file is readable by its owner only, even if it existed: a client configuration holds its private key."""
    out = io.BytesIO()
    _make(text).save(out, kind="png", scale=scale, border=4)
    write_private(path, out.getvalue())
