"""Runs inputs of one target, records findings and keeps counts."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import sys
import time
import traceback

from . import FINDINGS_DIR
from .decoder import decoder_input
from .loop import TrioThread
from .oracle import ErrorLog, Finding, where
from .server import server_input


class Runner:
    """Calls one target on inputs: `runner(data)` records what an input breaks
    and goes on; `run_one(data)` raises it."""

    def __init__(self, target: str, findings_dir: str = FINDINGS_DIR, timeout: float = 10.0,
                 stop_on_finding: bool = False, quiet: bool = False):
        self.target, self.findings_dir, self.timeout = target, findings_dir, timeout
        self.stop_on_finding, self.quiet = stop_on_finding, quiet
        self.stats = {"target": target, "cases": 0, "findings": {}, "kinds": {}, "started": time.time()}
        self.stats_path: str | None = None
        if target == "server":
            self.log = ErrorLog()
            self.loop = TrioThread()

    def close(self) -> None:
        """Stop the loop and give styxfs's logging back (for use in a test process)."""
        if self.target == "server":
            self.loop.close()
            self.log.uninstall()

    def run_one(self, data: bytes) -> None:
        """Raises what the input raised (Finding or any other exception)."""
        if self.target == "decoder":
            decoder_input(data, self.stats)
            return
        try:
            self.loop.call(server_input, data, self.log, self.stats, timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise Finding("wedged: the trio loop did not finish the input", f"{self.timeout} s real time") from None

    def __call__(self, data: bytes) -> None:
        self.stats["cases"] += 1
        try:
            self.run_one(data)
        except Exception as e:
            wedged = isinstance(e, Finding) and e.kind.startswith("wedged")
            self.record(data, e)
            if wedged:
                self.write_stats()
                os._exit(3)  # the loop is gone: nothing more can run
            if self.stop_on_finding:
                raise

    def record(self, data: bytes, e: Exception) -> None:
        signature = e.kind if isinstance(e, Finding) else where(e)
        entry = self.stats["findings"].setdefault(signature, {"count": 0, "files": []})
        entry["count"] += 1
        name = f"{self.target}-{hashlib.sha1(data).hexdigest()[:16]}"
        path = os.path.join(self.findings_dir, name + ".bin")
        if len(entry["files"]) >= 3 or path in entry["files"]:
            return
        os.makedirs(self.findings_dir, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        text = "".join(traceback.format_exception(e))
        with open(os.path.join(self.findings_dir, name + ".txt"), "w") as f:
            f.write(f"target: {self.target}\nsignature: {signature}\ninput: {data!r}\n\n{text}")
        entry["files"].append(path)
        if not self.quiet:
            print(f"\n*** finding ({signature}) saved to {path}\n{text}", file=sys.stderr, flush=True)

    def write_stats(self, path: str | None = None) -> None:
        path = path or self.stats_path
        if path:
            self.stats["elapsed"] = time.time() - self.stats["started"]
            with open(path + ".tmp", "w") as f:
                json.dump(self.stats, f)
            os.replace(path + ".tmp", path)
