"""The `wg_pair` fixture as a user meets it: a test file in the README's form, run by pytest as a normal user
(not root), with no WireGuard program on the PATH, talks to its handler through a real WireGuard session."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What the user's test needs (with what these need in turn): the package, pytest and pytest-asyncio.
DISTRIBUTIONS = ["mitmproxy_wireguard", "pytest", "pytest-asyncio"]

USER_TEST = """
import os
import shutil

import pytest

import mitmproxy_wireguard as wg


async def handle_connection(stream: wg.TcpStream) -> None:
    data = await stream.read(100)
    stream.write(data.upper())
    stream.close()


@pytest.mark.asyncio
async def test_my_handler(wg_pair) -> None:
    pair = await wg_pair(handle_connection)
    reader, writer = await pair.tunnel.open_connection("192.0.2.1", 80)
    writer.write(b"hello")
    assert await reader.read() == b"HELLO"
    writer.close()


def test_as_a_normal_user_without_wireguard_programs() -> None:
    assert os.geteuid() != 0
    assert shutil.which("wireguard-go") is None and shutil.which("wg") is None
"""


def with_requirements(names: list[str]) -> set[str]:
    """The distributions `names` need to run, themselves included, as installed here."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        found.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def copy_distribution(name: str, dest: Path) -> None:
    """The files an installed distribution consists of (its metadata too: pytest finds plugins there)."""
    dist = importlib.metadata.distribution(name)
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file)))
        if file.parts[0] == ".." or not source.is_file():
            continue  # scripts installed outside site-packages
        target = dest / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def python_for(uid: int) -> str:
    """A Python interpreter of this version that `uid` can run (this one may live in root's home)."""
    for candidate in (
        os.path.realpath(sys.executable),
        f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
    ):
        check = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", candidate, "-c", "pass"],
            capture_output=True,
        )
        if check.returncode == 0:
            return candidate
    pytest.fail(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that user {uid} can run")


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to another user")
def test_a_handler_test_in_the_readmes_form_runs_as_a_normal_user() -> None:
    nobody = 65534
    with tempfile.TemporaryDirectory(prefix="wg-pair-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        packages = root / "site"
        for name in with_requirements(DISTRIBUTIONS):
            copy_distribution(name, packages)
        (root / "test_user.py").write_text(USER_TEST)
        empty_bin = root / "bin"
        empty_bin.mkdir()
        for path in root.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        result = subprocess.run(
            [
                shutil.which("setpriv") or "setpriv",
                f"--reuid={nobody}",
                f"--regid={nobody}",
                "--clear-groups",
                python_for(nobody),
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-W",
                "error",
                # pytest-asyncio warns without it, whatever the test (a deprecation of its own).
                "-o",
                "asyncio_default_fixture_loop_scope=function",
                "-q",
                str(root / "test_user.py"),
            ],
            cwd=root,
            env={"PATH": str(empty_bin), "PYTHONPATH": str(packages), "PYTHONNOUSERSITE": "1", "HOME": tmp},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
