"""Dial strings, and serving on a Unix socket."""

from __future__ import annotations

import pytest

from styxfs import client, dial, ramfs, wire

from .ports import reserved_ports


@pytest.mark.parametrize("text, want", [
    ("tcp!127.0.0.1!5640", dial.Address("tcp", "127.0.0.1", 5640)),
    ("tcp!*!5641", dial.Address("tcp", "*", 5641)),
    ("tcp!localhost", dial.Address("tcp", "localhost", 5640)),
    ("unix!/tmp/llama.sock", dial.Address("unix", path="/tmp/llama.sock")),
    ("127.0.0.1:8000", dial.Address("tcp", "127.0.0.1", 8000)),
])
def test_parse(text, want):
    assert dial.parse(text) == want


@pytest.mark.parametrize("text, error", [
    ("", "empty address"), ("udp!x!1", "network 'udp'"), ("tcp!h!port", "is not a number"),
    ("tcp!h!70000", "out of range"), ("unix!", "unix!/path"),
])
def test_parse_errors(text, error):
    with pytest.raises(ValueError, match=error):
        dial.parse(text)


def test_loopback():
    assert dial.is_loopback(dial.parse("tcp!127.0.0.1!1")) and dial.is_loopback(dial.parse("unix!/x"))
    assert not dial.is_loopback(dial.parse("tcp!*!1"))


async def test_serve_on_a_unix_socket(nursery, tmp_path):
    path = tmp_path / "ramfs.sock"
    await nursery.start(ramfs.make_server().serve, f"unix!{path}")
    async with client.connect(f"unix!{path}") as c:
        async with await c.create("hello", 0o644, wire.ORDWR) as f:
            await f.write(b"over a unix socket")
        assert await c.read_file("hello") == b"over a unix socket"


def test_port_bindable():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not dial.port_bindable("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            # The connection's own end: a node told to listen there could not.
            assert not dial.port_bindable("127.0.0.1", conn.getsockname()[1])
    with reserved_ports(1) as [free]:  # one nothing else takes meanwhile
        assert dial.port_bindable("127.0.0.1", free)
