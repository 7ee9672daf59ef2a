"""What the benchmarks share: node processes, free ports, the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from styxfs.dial import free_port, port_open  # noqa: F401 (free_port: for the benchmarks)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMAFS = [sys.executable, "-m", "coordinator.cli"]


def wait_for_port(port: int, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def start_node_process(model: str, threads: int = 2, slots: int = 4, port: int | None = None,
                       extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """`llamafs serve` as a process of its own; (process, dial string)."""
    port = port or free_port()
    cmd = LLAMAFS + ["serve", "--model", model, "--listen", f"tcp!127.0.0.1!{port}",
                     "--threads", str(threads), "--slots", str(slots)] + (extra or [])
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process=process)
    return process, f"tcp!127.0.0.1!{port}"


def start_coordinator_process(node_addresses: list[str], **network) -> tuple[subprocess.Popen, str]:
    """`llamafs deploy start` over running nodes (node-0, node-1, ...), in a
    process of its own as deployed, listening; (process, dial string).
    `network` adds to the config's network section."""
    port = free_port()
    config = {"name": "bench",
              "network": {"listen": f"tcp!127.0.0.1!{port}", "healthCheckInterval": 5000, **network},
              "nodes": [{"id": f"node-{i}", "address": "127.0.0.1", "port": int(address.rsplit("!", 1)[1])}
                        for i, address in enumerate(node_addresses)]}
    path = os.path.join(tempfile.mkdtemp(prefix="llamafs-bench-"), "deployment.json")
    with open(path, "w") as f:
        json.dump(config, f)
    process = subprocess.Popen(LLAMAFS + ["deploy", "start", "--config", path], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=60, process=process)
    except BaseException:
        stop_process(process)
        raise
    return process, f"tcp!127.0.0.1!{port}"


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def machine_line() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "amx_tile")
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(w for w in wanted if w in have)
                    break
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    return f"machine: {os.cpu_count()} cores, {cpu}, flags: {flags}, Python {platform.python_version()}"
