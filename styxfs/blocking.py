"""A small blocking API for scripts: one call, one connection.

    from styxfs import blocking
    print(blocking.read("tcp!127.0.0.1!5640", "model").decode())
    blocking.write("tcp!127.0.0.1!5640", "ctl", "defaults temperature 0")
"""

from __future__ import annotations

import trio

from . import client
from .wire import Dir


def _run(address: str, action, **options):
    async def main():
        async with client.connect(address, **options) as c:
            return await action(c)

    return trio.run(main)


def read(address: str, path: str, **options) -> bytes:
    """The whole of a file."""
    return _run(address, lambda c: c.read_file(path), **options)


def write(address: str, path: str, data: bytes | str, **options) -> None:
    """Open path for writing (with OTRUNC, as `echo >` does), write, clunk."""
    return _run(address, lambda c: c.write_file(path, data), **options)


def listdir(address: str, path: str = "", **options) -> list[Dir]:
    return _run(address, lambda c: c.listdir(path), **options)
