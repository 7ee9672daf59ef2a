"""Shared fixtures: servers on 127.0.0.1 port 0, in the test's nursery."""

from __future__ import annotations

import pytest
import trio

from styxfs import dial


async def start_server(nursery: trio.Nursery, server) -> str:
    """Serve on a free loopback port; the dial string to reach it."""
    listeners = await nursery.start(server.serve, "tcp!127.0.0.1!0")
    return f"tcp!127.0.0.1!{dial.listening_port(listeners)}"


@pytest.fixture
def anyio_backend():
    return "trio"
