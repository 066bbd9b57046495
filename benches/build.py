"""Builds the benchmark venvs (never touches the shared install nor the project's target/ directory).

    python3 benches/build.py            # all three venvs
    python3 benches/build.py --new      # this project: release wheel of the working tree -> /tmp/bench-venv-new
    python3 benches/build.py --old      # mitmproxy_wireguard 0.1.23 from PyPI -> /tmp/bench-venv-old
    python3 benches/build.py --rs       # mitmproxy_rs 0.11.5 from PyPI -> /tmp/bench-venv-rs (paths.py only)

The new venv gets a wheel built by `maturin build --release` from the working tree as it is now, with its own
cargo target directory (/tmp/bench-target), plus matplotlib for plot.py. What was built (commit, dirty files,
time) is written to BENCH_BUILD_INFO.json in the venv, and the runner copies it into its results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_NEW_VENV,
    DEFAULT_OLD_VENV,
    DEFAULT_RS_VENV,
    OLD_VERSION,
    REPO,
    RS_VERSION,
    git_state,
    log,
)


def run(
    *cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 1800
) -> None:
    log("+", " ".join(map(str, cmd)))
    subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=True, timeout=timeout)


def make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", venv)
    return python


def build_new(venv: Path, wheels: Path, target_dir: Path) -> None:
    python = make_venv(venv)
    run(python, "-m", "pip", "install", "-q", "--upgrade", "maturin>=1.5,<2", "matplotlib")
    if wheels.exists():
        shutil.rmtree(wheels)
    state = git_state()
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    started = time.time()
    run(venv / "bin" / "maturin", "build", "--release", "-o", wheels, "-i", python, cwd=REPO, env=env)
    wheel = sorted(wheels.glob("mitmproxy_wireguard-*.whl"))[-1]
    run(python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel)
    # Then its dependencies (dnspython and the others of pyproject.toml: the client imports them), without
    # reinstalling what is there.
    run(python, "-m", "pip", "install", "-q", wheel)
    info = {
        "wheel": wheel.name,
        "profile": "release",
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
        "commit": state["commit"],
        "dirty_files": state["dirty_files"],
    }
    (venv / "BENCH_BUILD_INFO.json").write_text(json.dumps(info, indent=2))
    log(
        f"built {wheel.name} into {venv} (commit {state['commit'][:10]}, {len(state['dirty_files'])} dirty files)"
    )


def build_old(venv: Path, wheel: Path | None) -> None:
    python = make_venv(venv)
    spec = str(wheel) if wheel else f"mitmproxy_wireguard=={OLD_VERSION}"
    run(python, "-m", "pip", "install", "-q", "--force-reinstall", spec)
    (venv / "BENCH_BUILD_INFO.json").write_text(json.dumps({"installed": spec}, indent=2))


def build_rs(venv: Path) -> None:
    """mitmproxy_rs without its dependencies: the one it has on Linux, mitmproxy_linux, has no wheel for this
    machine (its source build fetches from the network) and only serves its local-capture mode, which the
    WireGuard mode never calls. An empty stand-in module lets mitmproxy_rs import."""
    python = make_venv(venv)
    run(python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", f"mitmproxy_rs=={RS_VERSION}")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stand_in = Path(purelib) / "mitmproxy_linux"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "__init__.py").write_text(
        '"""Stand-in for mitmproxy_linux (benches/build.py): mitmproxy_rs imports it, WireGuard mode never'
        ' calls it."""\n'
    )
    run(python, "-c", "import mitmproxy_rs.wireguard")
    (venv / "BENCH_BUILD_INFO.json").write_text(
        json.dumps({"installed": f"mitmproxy_rs=={RS_VERSION}", "stand_in": str(stand_in)}, indent=2)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new", action="store_true", help="build this project's venv only")
    parser.add_argument("--old", action="store_true", help=f"build the {OLD_VERSION} venv only")
    parser.add_argument("--new-venv", type=Path, default=DEFAULT_NEW_VENV)
    parser.add_argument("--rs", action="store_true", help=f"build the mitmproxy_rs {RS_VERSION} venv only")
    parser.add_argument("--old-venv", type=Path, default=DEFAULT_OLD_VENV)
    parser.add_argument("--rs-venv", type=Path, default=DEFAULT_RS_VENV)
    parser.add_argument("--wheels", type=Path, default=Path("/tmp/bench-wheels-new"))
    parser.add_argument("--target-dir", type=Path, default=Path("/tmp/bench-target"),
                        help="cargo target directory of the release build (kept apart from the project's)")  # fmt: skip
    parser.add_argument(
        "--old-wheel", type=Path, help=f"install {OLD_VERSION} from this wheel instead of PyPI"
    )
    args = parser.parse_args()
    every = not (args.new or args.old or args.rs)
    if args.new or every:
        build_new(args.new_venv, args.wheels, args.target_dir)
    if args.old or every:
        build_old(args.old_venv, args.old_wheel)
    if args.rs or every:
        build_rs(args.rs_venv)


if __name__ == "__main__":
    main()
