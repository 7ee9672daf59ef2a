"""llama-server, the peer to beat, built from the llama.cpp that llamafs runs.

    .venv/bin/python bench/llama_server.py      # prints the path, building it first if need be

The llama-cpp-python source distribution on the package index (the version
llamafs depends on) vendors llama.cpp; its `llama-server` target is built
with the same portable flags as bin/setup, into
~/.cache/llamafs/llama-server/VERSION/, once (about 15 minutes on 2 cores).
`LLAMA_SERVER=/path` or `llama-server` on PATH is used instead when there.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, as pyproject.toml pins it
FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
         "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release",
         "-DBUILD_SHARED_LIBS=OFF"]  # one binary that can move into the cache


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamafs" / "llama-server" / VERSION


def find() -> str | None:
    for candidate in (os.environ.get("LLAMA_SERVER"), shutil.which("llama-server"),
                      str(cache_dir() / "llama-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def build(log=print) -> str:
    """Download the sdist, build llama-server, keep it in the cache; its path."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as work:
        log(f"downloading the llama-cpp-python {VERSION} source distribution")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", work], check=True)
        (sdist,) = glob.glob(os.path.join(work, "llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        (source,) = glob.glob(os.path.join(work, "llama_cpp_python-*", "vendor", "llama.cpp"))
        build_dir = os.path.join(work, "build")
        log("configuring llama.cpp (portable: AVX2, FMA, F16C)")
        subprocess.run(["cmake", "-S", source, "-B", build_dir, *FLAGS], check=True, stdout=subprocess.DEVNULL)
        log("building llama-server (about 15 minutes on 2 cores)")
        subprocess.run(["cmake", "--build", build_dir, "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
                       check=True, stdout=subprocess.DEVNULL)
        (binary,) = glob.glob(os.path.join(build_dir, "bin", "llama-server"))
        shutil.copy2(binary, target / "llama-server")
    return str(target / "llama-server")


def find_or_build(log=print) -> str:
    return find() or build(log)


if __name__ == "__main__":
    print(find_or_build(lambda text: print(text, file=sys.stderr)))
