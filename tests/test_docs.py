"""The documentation users read: the stubs' docstrings are the native objects' own (so pdoc, help() and IDEs
say the same), and pdoc documents every public name."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

import mitmproxy_wireguard as wg
from mitmproxy_wireguard import _mitmproxy_wireguard as native

STUB = Path(native.__file__).with_name("_mitmproxy_wireguard.pyi")


def stub_docstrings() -> dict[str, str]:
    """Docstrings of the stub by dotted name: `genkey`, `Configuration`, `Configuration.to_file`, ..."""
    found = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
            found[node.name] = ast.get_docstring(node)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                setter = isinstance(item, ast.FunctionDef) and any(
                    isinstance(d, ast.Attribute) and d.attr == "setter" for d in item.decorator_list
                )
                if isinstance(item, ast.FunctionDef) and ast.get_docstring(item) and not setter:
                    found[f"{node.name}.{item.name}"] = ast.get_docstring(item)
    return found


def runtime_object(dotted: str) -> Any:
    obj: Any = native
    for part in dotted.split("."):
        obj = inspect.getattr_static(obj, part)
    return obj.__func__ if isinstance(obj, staticmethod) else obj


@pytest.mark.parametrize("name", sorted(stub_docstrings()))
def test_the_stub_and_the_native_object_say_the_same(name: str) -> None:
    doc = runtime_object(name).__doc__
    assert doc is not None, f"{name} has no docstring at runtime"
    assert inspect.cleandoc(doc) == stub_docstrings()[name]


def test_pdoc_documents_every_public_name(tmp_path: Path) -> None:
    pdoc = pytest.importorskip("pdoc")
    pdoc.pdoc("mitmproxy_wireguard", output_directory=tmp_path)
    page = (tmp_path / "mitmproxy_wireguard.html").read_text()
    for name in wg.__all__:
        assert f'id="{name}"' in page, f"{name} is not documented"
    # Docstrings and examples reach the page, not only the names.
    for text in (
        "ready to import into a WireGuard client",
        "start_server",
        "peer_public_keys",
        "readexactly",
        "wg genkey",
    ):
        assert text in page
