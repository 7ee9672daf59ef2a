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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny random-weight model (tests/tinymodel.py), in a models directory of its own."""
    from .tinymodel import write_tiny_model

    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf"))


@pytest.fixture
def start_node(nursery, tiny_model):
    """start_node(**NodeOptions fields, engine=None) -> (address, node), served in the test's nursery."""
    from styxfs.node import Node, NodeOptions

    async def start(engine=None, **options):
        options.setdefault("model", tiny_model)
        options.setdefault("threads", 2)
        options.setdefault("listen", "tcp!127.0.0.1!0")
        node = Node(NodeOptions(**options), engine=engine)
        await nursery.start(node.run)
        return f"tcp!127.0.0.1!{dial.listening_port(node.listeners)}", node

    return start
