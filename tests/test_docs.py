"""The documentation users read: the stubs' docstrings are the native objects' own (so pdoc, help() and IDEs
say the same), and pdoc documents every public name."""

from __future__ import annotations

import ast
import inspect
import pydoc
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


def test_the_docs_say_what_the_code_does() -> None:
    # Capture files have a Linux cooked header, as the README says, not raw IP.
    doc = inspect.getdoc(wg.Server.start_capture) or ""
    assert "LINUX_SLL" in doc and "(link type raw IP)" not in doc
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "link type LINUX_SLL" in readme
    # Every public method of a stream says what it does.
    for name, member in inspect.getmembers(wg.TcpStream, inspect.isfunction):
        if not name.startswith("_"):
            assert inspect.getdoc(member), f"TcpStream.{name} has no docstring"
    assert "FIN" in (inspect.getdoc(wg.TcpStream.close) or "")
    # The README's echo hint names a client that is everywhere too.
    assert "socat - TCP:10.0.0.42:1234" in readme


def test_a_configuration_shows_no_order_it_does_not_have() -> None:
    text = pydoc.render_doc(wg.Configuration, renderer=pydoc.plaintext)
    for name in ("__lt__", "__le__", "__gt__", "__ge__"):
        assert name not in text, f"help(Configuration) shows {name}"
    a = wg.Configuration.generate()
    assert a == wg.Configuration.from_json(a.to_json()) and a != wg.Configuration.generate()
    with pytest.raises(TypeError):
        a < a  # noqa: B015
