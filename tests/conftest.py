"""Shared fixtures: servers on 127.0.0.1 port 0 in the test's nursery, the
tiny model, nodes and node processes on it or on the fake model
(fakemodel.py).  Helpers are in support.py."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import trio

from styxfs import dial

from .limbo_driver import dis, isolates  # noqa: F401 (fixtures of the Inferno-side tests)


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


@pytest.fixture(scope="session")
def fake_model(tmp_path_factory):
    """An empty fake.gguf, in a models directory of its own: the model path of
    a node on the fake model (tests/fakemodel.py), which reads no file."""
    path = tmp_path_factory.mktemp("fake") / "fake.gguf"
    path.write_bytes(b"")
    return str(path)


async def serve_node(nursery: trio.Nursery, engine, options: dict):
    from styxfs.llama.node import Node, NodeOptions

    # One llama.cpp thread: ggml's threads wait for each other at every op, so on a
    # loaded machine (a suite's) two make a tiny model's reply take seconds, not ms.
    options.setdefault("threads", 1)
    options.setdefault("listen", "tcp!127.0.0.1!0")
    node = Node(NodeOptions(**options), engine=engine)
    await nursery.start(node.run)
    return f"tcp!127.0.0.1!{dial.listening_port(node.listeners)}", node


@pytest.fixture
def start_node(nursery, tiny_model):
    """start_node(**NodeOptions fields, engine=None) -> (address, node), served in the test's nursery."""

    async def start(engine=None, **options):
        return await serve_node(nursery, engine, {"model": tiny_model, **options})

    return start


@pytest.fixture
def start_fake_node(nursery, fake_model):
    """start_fake_node(gate=None, **NodeOptions fields) -> (address, node): a
    node on the fake model, its steps held by gate (fakemodel.StepGate) if given."""
    from styxfs.llama.node import NodeOptions

    from .fakemodel import FakeEngine

    async def start(gate=None, **options):
        o = NodeOptions(**options)
        engine = FakeEngine(slots=o.slots, prefix_cache=o.prefix_cache, share_prefixes=o.share_prefixes, gate=gate)
        return await serve_node(nursery, engine, {"model": fake_model, **options})

    return start


def node_processes(model: str, fake: bool = False):
    """Three node processes, started at once, each on a port the OS chose
    and told back: [[id, process, address]]."""
    from .support import spawn_node_process, stop_processes

    spawned, started = [], []
    try:
        for _ in range(3):
            spawned.append(spawn_node_process(model, threads=1, slots=4, fake=fake))
        started = [[f"node-{i}", process, served()] for i, (process, served) in enumerate(spawned)]
        yield started  # a test may put a process of its own in place of one
    finally:
        stop_processes([p for p, _ in spawned] + [p for _, p, _ in started])  # at once; then each waited for


@pytest.fixture
def nodes(tiny_model):
    """Three node processes on the tiny model: [[id, process, address]]."""
    yield from node_processes(tiny_model)


@pytest.fixture
def fake_nodes(fake_model):
    """Three node processes on the fake model (python -m tests.fakemodel)."""
    yield from node_processes(fake_model, fake=True)


@pytest.fixture(autouse=True)
def watchdog():
    """A test that runs over LLAMAFS_TEST_TIMEOUT (90 s) prints its trio tasks
    and interrupts the run: a hang shows where it hangs and holds CI up for
    no hour.  (SIGALRM: its handler runs in the main thread, inside trio.run.)"""
    limit = float(os.environ.get("LLAMAFS_TEST_TIMEOUT", 90))

    def dump(task, depth=0):
        frames, coro = [], task.coro
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is None:
                break
            frames.append(f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        print("  " * depth + f"{task.name}: " + " > ".join(frames), file=sys.__stderr__)
        for child in task.child_nurseries:
            for t in child.child_tasks:
                dump(t, depth + 1)

    def on_alarm(signum, frame):
        print(f"\n{os.environ.get('PYTEST_CURRENT_TEST')} has run {limit:g} s; its tasks:", file=sys.__stderr__)
        try:
            dump(trio.lowlevel.current_root_task())
        except RuntimeError:
            pass  # not a trio test
        signal.raise_signal(signal.SIGINT)  # trio delivers it safely

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
