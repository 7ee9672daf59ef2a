"""llamafs as a user installs it: a wheel, in a fresh virtual environment,
used from outside the checkout.

The wheel's dependencies are the ones bin/setup installed (llama-cpp-python
among them, built from source with the portable flags: built again without
them it would be the build that crashes here, and take minutes): the fresh
environment reaches them through a .pth line naming the checkout
environment's site-packages.  A .pth line adds a directory to the path but
runs none of the .pth files in it, so the checkout's editable install of
llamafs stays out, and `import styxfs` finds the wheel's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .inferno import find_emu
from .support import ROOT, spawn_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), ROOT],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("llamafs-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment holding the wheel (not editable)."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "llamafs-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return env


def listed_files(root, *folders: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", *folders], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return listed.stdout.split()


def test_the_wheel_holds_every_file_of_the_packages_the_checkout_tracks(wheel):
    tracked = {name for name in listed_files(ROOT, "styxfs", "coordinator") if not name.endswith(".pyc")}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert tracked and tracked <= names, sorted(tracked - names)
    # The top-level limbo/ travels as coordinator/limbo/, all but the tests' driver.
    limbo = {f"coordinator/{name}" for name in listed_files(ROOT, "limbo")} - {"coordinator/limbo/testdriver.b"}
    assert limbo and limbo <= names, sorted(limbo - names)
    assert "coordinator/limbo/testdriver.b" not in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def run(env: Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(env / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def deployed(venv: Path, config: dict, cwd: Path, **options):
    """`llamafs deploy start` of the installed package, serving; stopped by
    SIGINT at the end, which it must take cleanly."""
    path = cwd / "deployment.json"
    path.write_text(json.dumps(config))
    deployer, served = spawn_ready([str(venv / "bin" / "llamafs"), "deploy", "start", "--config", str(path)],
                                   subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, **options)
    try:
        address = served()  # where it listens: the port the OS chose, told back
    except RuntimeError as e:
        raise RuntimeError(f"{e}:\n{deployer.communicate(timeout=60)[1]}") from None
    try:
        yield address
    finally:
        deployer.send_signal(signal.SIGINT)
        deployer.communicate(timeout=60)
    assert deployer.returncode == 0


def ask_through(env: Path, address: str, cwd: Path) -> None:
    ask = run(env, "llamafs", "ask", "--addr", address, "--maxtokens", "4", "Once upon a time", cwd=cwd)
    assert ask.returncode == 0 and ask.stdout.strip(), ask.stderr


def test_the_installed_package_serves_asks_and_deploys(venv, tiny_model, tmp_path):
    where = run(venv, "python", "-c", "import styxfs, coordinator; print(styxfs.__file__, coordinator.__file__)",
                cwd=tmp_path)
    assert where.returncode == 0 and str(ROOT) not in where.stdout and str(venv) in where.stdout, where
    version = run(venv, "llamafs", "--version", cwd=tmp_path)
    assert version.returncode == 0 and "llamafs, version" in version.stdout
    # A node, by the package's own entry point.
    node, served = spawn_ready([str(venv / "bin" / "python"), "-m", "styxfs.llama", "--model", tiny_model,
                                "--listen", "tcp!127.0.0.1!0", "--threads", "1"], cwd=tmp_path)
    try:
        ask_through(venv, served(), tmp_path)
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(30)
    # A deployment of two nodes, started by the installed llamafs.
    config = {"name": "installed", "modelPath": tiny_model, "model": {"threads": 1},  # every port the OS's choice
              "network": {"basePort": 0, "listen": "tcp!127.0.0.1!0"}, "nodes": [{"id": "a"}, {"id": "b"}]}
    with deployed(venv, config, tmp_path) as address:
        status = run(venv, "llamafs", "status", "--addr", address, cwd=tmp_path)
        assert " up " in status.stdout and "a " in status.stdout and "b " in status.stdout, status
        ask_through(venv, address, tmp_path)


@pytest.mark.skipif(find_emu() is None, reason="Inferno emu not found: set INFERNO_ROOT or put emu on PATH")
def test_the_installed_package_puts_an_isolate_in_front_of_a_node(venv, tiny_model, tmp_path):
    config = {"name": "isolated", "isolation": "dis", "modelPath": tiny_model,
              "model": {"threads": 1, "contextSize": 512},
              "network": {"basePort": 0, "listen": "tcp!127.0.0.1!0"}, "nodes": [{"id": "a"}]}
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # the .dis go here, not into the package
    with deployed(venv, config, tmp_path, env=env) as address:
        ask_through(venv, address, tmp_path)
    assert list((tmp_path / "cache" / "llamafs" / "dis").glob("*/llamacpp.dis"))
    assert not list(venv.rglob("*.dis"))
