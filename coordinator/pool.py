"""The coordinator's nodes: one 9P connection each, health checks, failover
hooks and draining.

A node is `up` while its health check (a read of its root ctl, with a
timeout of its own) passes and says a model is loaded; `down` otherwise;
`draining` when told to take no new sessions.  A node going down cancels
the requests in flight on it, so that they fail over at once.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import time
from typing import Callable

import trio

from styxfs import client
from styxfs.llama import errors

from .balance import make_strategy, pick

log = logging.getLogger("coordinator.pool")


class NodeDown(Exception):
    pass


class NodeHandle:
    def __init__(self, pool: "Pool", id: str, address: str, weight: float = 1.0):
        self.pool = pool
        self.id, self.address, self.weight = id, address, weight
        self.state = "down"
        self.client: client.Client | None = None
        self.sessions: set = set()  # coordinator sessions bound to this node
        self.arriving = 0  # sessions being bound to it, their node session still being made
        self.inflight: set[trio.CancelScope] = set()
        self.last_check = 0.0
        self.latency = 0.0
        self.failures = 0
        self.error = "not yet checked"
        self.draining = False
        self.max_sessions = 0  # the node's cap, from its ctl (0: not yet known)
        self.scope = trio.CancelScope()
        self.process = None  # a local node process we started (deploy.py)
        self.authenticate = pool.authenticate  # None for an isolate: its export is on loopback, without Tauth

    @property
    def session_count(self) -> int:
        """What the strategies balance: sessions bound here, and being bound."""
        return len(self.sessions) + self.arriving

    @property
    def usable(self) -> bool:
        return self.state == "up" and not self.draining and self.client is not None

    def health_text(self) -> str:
        state = "draining" if self.draining and self.state == "up" else self.state
        lines = [("state", state), ("address", self.address), ("weight", self.weight),
                 ("sessions", len(self.sessions)), ("inflight", len(self.inflight)),
                 ("lastcheck", f"{self.last_check:.3f}"), ("latency", f"{self.latency:.6f}"),
                 ("failures", self.failures)]
        if self.state != "up" and self.error:
            lines.append(("error", self.error))
        return "".join(f"{k} {v}\n" for k, v in lines)

    async def run(self) -> None:
        """Keep a connection and check health, until removed."""
        with self.scope:
            while True:
                try:
                    await self._connection()
                except (client.Error, OSError) as e:
                    self._mark_down(str(e))
                await trio.sleep(min(self.pool.health_interval, 1.0))

    async def _connection(self) -> None:
        with trio.move_on_after(self.pool.health_timeout) as connecting:
            async with client.connect(self.address, uname=self.pool.uname, flush_timeout=0.5,
                                      authenticate=self.authenticate) as c:
                connecting.deadline = math.inf  # connected: no deadline but the checks' own
                self.client = c
                try:
                    while True:
                        await self.check(c)
                        await trio.sleep(self.pool.health_interval)
                finally:
                    self.client = None
        if connecting.cancelled_caught:
            self._mark_down("connect timed out")

    async def check(self, c: client.Client) -> None:
        started = time.monotonic()
        with trio.move_on_after(self.pool.health_timeout) as timer:
            text = (await c.read_file("ctl")).decode(errors="replace")
        self.last_check = time.time()
        if timer.cancelled_caught:
            # Once is a slow node under load; twice running, a hung one: what
            # runs there fails over, and the connection is dropped.
            hung = self.failures >= 1
            self._mark_down("health check timed out", cancel_inflight=hung)
            if hung:
                raise client.ConnectionLost("health check timed out")
            return
        self.latency = time.monotonic() - started
        fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        if fields.get("maxsessions", "").isdigit():
            self.max_sessions = int(fields["maxsessions"])
        if fields.get("state") != "loaded":
            self._mark_down("model not loaded" + (f": {fields['error']}" if "error" in fields else ""),
                            cancel_inflight=False)
        else:
            self._mark_up()

    def _mark_up(self) -> None:
        self.failures = 0
        if self.state != "up":
            log.info("node %s is up", self.id)
            self.state, self.error = "up", ""
            self.pool.notify("node-up", self)

    def _mark_down(self, why: str, cancel_inflight: bool = True) -> None:
        self.failures += 1
        self.error = why
        if cancel_inflight:
            for scope in list(self.inflight):
                scope.cancel()  # what runs there fails over now
        if self.state != "down":
            log.warning("node %s is down: %s", self.id, why)
            self.state = "down"
            self.pool.notify("node-down", self)

    def failed(self, why: str) -> None:
        """A request saw this node fail: down until a health check passes."""
        self._mark_down(why)

    @contextlib.contextmanager
    def request(self):
        """A request in flight here: cancelled if the node goes down, which
        then raises NodeDown."""
        if self.client is None or self.state != "up":
            raise NodeDown(f"node {self.id} is down")
        scope = trio.CancelScope()
        self.inflight.add(scope)
        try:
            with scope:
                yield self.client
        finally:
            self.inflight.discard(scope)
        if scope.cancelled_caught:
            raise NodeDown(f"node {self.id} went down")


class Pool:
    def __init__(self, *, strategy: str = "round-robin", health_interval: float = 30.0,
                 health_timeout: float = 5.0, seed: int | None = None,
                 notify: Callable[[str, NodeHandle], None] | None = None, authenticate=None):
        self.nodes: list[NodeHandle] = []
        self.strategy = make_strategy(strategy, seed)
        self.seed = seed
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.uname = getpass.getuser()
        self.authenticate = authenticate  # styxfs.auth.secret_authenticator(...) or None
        self.nursery: trio.Nursery | None = None
        self.listeners: list[Callable[[str, NodeHandle], None]] = [notify] if notify else []

    def notify(self, event: str, node: NodeHandle) -> None:
        for listener in self.listeners:
            try:
                listener(event, node)
            except Exception:
                log.exception("event listener failed on %s", event)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for node in self.nodes:
                nursery.start_soon(node.run)
            task_status.started()
            await trio.sleep_forever()

    def get(self, node_id: str) -> NodeHandle:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def add(self, node_id: str, address: str, weight: float = 1.0) -> NodeHandle:
        if any(n.id == node_id for n in self.nodes):
            raise ValueError(f"node {node_id} exists already")
        node = NodeHandle(self, node_id, address, weight)
        self.nodes.append(node)
        if self.nursery is not None:
            self.nursery.start_soon(node.run)
        return node

    def remove(self, node_id: str) -> NodeHandle:
        node = self.get(node_id)
        self.nodes.remove(node)
        node.scope.cancel()
        for scope in list(node.inflight):
            scope.cancel()
        return node

    def set_strategy(self, name: str) -> None:
        self.strategy = make_strategy(name, self.seed)

    def healthy(self) -> list[NodeHandle]:
        return [n for n in self.nodes if n.usable]

    def choose(self, exclude=(), prompt: bytes = b"") -> NodeHandle:
        """A healthy node, by the strategy; prompt: the beginning of the
        session's conversation, for prefix-affinity."""
        candidates = [n for n in self.healthy() if n not in exclude]
        try:
            return pick(self.strategy, self.nodes, candidates, prompt)
        except LookupError:
            raise NodeDown(str(errors.NO_HEALTHY_NODE)) from None
