"""The coordinator's nodes: one 9P connection each, health checks, failover
hooks and draining.

A node is `up` while its health check (a read of its root ctl, with a
timeout of its own) passes and says a model is loaded; `down` otherwise;
`draining` when told to take no new sessions.  A node going down cancels
the requests in flight on it, so that they fail over at once.

A deployment of several models has a pool per model, within this one: a
node is in the pool of the model whose path its ctl reports (a coordinator
node: of each model its models/ lists), learnt again at each health check,
so a node that `load`s another model moves.  The strategies pick among the
healthy nodes of one model, each model with its own strategy state.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import trio

from styxfs import client
from styxfs.trioutil import unwrapped
from styxfs.llama import errors
from styxfs.llama.settings import CONNECT_TIMEOUT

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
        self.restarts = 0  # times the supervisor started that process again (supervise.py)
        self.crashed = ""  # why, while the supervisor finds it crashing again and again
        self.authenticate = pool.authenticate  # None for an isolate: its export is on loopback, without Tauth
        self.tls_name = None  # the name a tls! node's certificate must match, if not its address's host
        self.role = "node"  # or "coordinator", as its ctl says
        self.models: frozenset[str] = frozenset()  # the models it serves, as its last health check said

    @property
    def session_count(self) -> int:
        """What the strategies balance: sessions bound here, and being bound."""
        return len(self.sessions) + self.arriving

    @property
    def usable(self) -> bool:
        return self.state == "up" and not self.draining and self.client is not None

    @property
    def condition(self) -> str:
        """The state shown: failed (crashing again and again) while down."""
        return "failed" if self.crashed and self.state != "up" else self.state

    def health_text(self) -> str:
        state = "draining" if self.draining and self.state == "up" else self.condition
        lines = [("state", state), ("address", self.address), ("model", self.model_label), ("weight", self.weight),
                 ("sessions", len(self.sessions)), ("inflight", len(self.inflight)),
                 ("lastcheck", f"{self.last_check:.3f}"), ("latency", f"{self.latency:.6f}"),
                 ("failures", self.failures), ("restarts", self.restarts)]
        if self.state != "up" and (self.crashed or self.error):
            lines.append(("error", self.crashed or self.error))
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
        with trio.move_on_after(self.pool.connect_timeout) as connecting:
            async with client.connect(self.address, uname=self.pool.uname, flush_timeout=0.5,
                                      authenticate=self.authenticate, tls_context=self.pool.tls_context,
                                      tls_name=self.tls_name) as c:
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
        timed_out = []

        async def deadline(scope: trio.CancelScope) -> None:
            # Marked down at the deadline itself: cancelling the read then
            # waits for a silent node's Rflush, which may take much longer.
            await trio.sleep(self.pool.health_timeout)
            # Once is a slow node under load; twice running, a hung one: what
            # runs there fails over, and the connection is dropped.
            timed_out.append(self.failures >= 1)
            self._mark_down("health check timed out", cancel_inflight=timed_out[0])
            scope.cancel()

        async with unwrapped(), trio.open_nursery() as nursery:
            nursery.start_soon(deadline, nursery.cancel_scope)
            text = (await c.read_file("ctl")).decode(errors="replace")
            nursery.cancel_scope.cancel()
        self.last_check = time.time()
        if timed_out:
            if timed_out[0]:
                raise client.ConnectionLost("health check timed out")
            return
        self.latency = time.monotonic() - started
        fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        if fields.get("maxsessions", "").isdigit():
            self.max_sessions = int(fields["maxsessions"])
        await self._learn_models(c, fields)
        if fields.get("state") != "loaded":
            self._mark_down("model not loaded" + (f": {fields['error']}" if "error" in fields else ""),
                            cancel_inflight=False)
        else:
            self._mark_up()

    async def _learn_models(self, c: client.Client, fields: dict[str, str]) -> None:
        self.role = fields.get("role", "node")
        models = self.models  # as it was, if the listing times out
        if self.role == "coordinator":
            try:
                with trio.move_on_after(self.pool.health_timeout):
                    models = frozenset(d.name for d in await c.listdir("models"))
            except client.Error:
                models = frozenset()  # a coordinator without models/: its one model is the default
        elif fields.get("state") == "loaded":  # else it has no model to speak of (ctl says `model none`)
            models = frozenset([self.pool.model_of(fields.get("model", ""))])
        if models != self.models and self.models:
            log.info("node %s now serves %s (was %s)", self.id, ",".join(sorted(models)), self.model_label)
        self.models = models

    @property
    def model_label(self) -> str:
        """The models it serves, for people: `tiny`, `chat,tiny`, `-` before its first check."""
        return ",".join(sorted(self.models)) or "-"

    def serves(self, model: str) -> bool:
        return model in self.models or (not self.models and model == self.pool.default_model)

    def _mark_up(self) -> None:
        self.failures = 0
        if self.state != "up":
            log.info("node %s (model %s) is up", self.id, self.model_label)
            self.state, self.error = "up", ""
            self.pool.notify("node-up", self)

    def _mark_down(self, why: str, cancel_inflight: bool = True) -> None:
        self.failures += 1
        self.error = why
        if cancel_inflight:
            for scope in list(self.inflight):
                scope.cancel()  # what runs there fails over now
        if self.state != "down":
            log.warning("node %s (model %s) is down: %s", self.id, self.model_label, why)
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
                 health_timeout: float = 5.0, connect_timeout: float = CONNECT_TIMEOUT, seed: int | None = None,
                 notify: Callable[[str, NodeHandle], None] | None = None, authenticate=None, tls_context=None):
        self.nodes: list[NodeHandle] = []
        self.strategy = make_strategy(strategy, seed)
        self.seed = seed
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.connect_timeout = connect_timeout
        self.uname = getpass.getuser()
        self.authenticate = authenticate  # styxfs.auth.secret_authenticator(...) or None
        self.tls_context = tls_context  # what tls! nodes are checked by (styxfs.tls.client_context)
        self.nursery: trio.Nursery | None = None
        self.listeners: list[Callable[[str, NodeHandle], None]] = [notify] if notify else []
        self.configured: list[str] = []  # the deployment's models, the default first
        self.paths: dict[str, str] = {}  # a model's file (real path) -> its name
        self.strategies: dict[str, object] = {}  # a model's own strategy, beside the default's

    @property
    def default_model(self) -> str | None:
        return self.configured[0] if self.configured else None

    def model_of(self, path: str) -> str:
        """The name of the model at path: the deployment's, else the file's stem."""
        return self.paths.get(os.path.realpath(path) if path else "") or Path(path).stem or "none"

    def model_names(self) -> list[str]:
        """The models served: the deployment's, the default first, then any its nodes were found to have."""
        if len(self.configured) <= 1:
            return list(self.configured) or sorted({m for n in self.nodes for m in n.models})[:1]
        seen = {m for n in self.nodes for m in n.models}
        return self.configured + sorted(seen - set(self.configured))

    def nodes_of(self, model: str | None) -> list[NodeHandle]:
        """The nodes of a model's pool; with one model, or None, every node."""
        if model is None or len(self.model_names()) <= 1:
            return list(self.nodes)
        return [n for n in self.nodes if n.serves(model)]

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
        self.strategies = {}

    def healthy(self, model: str | None = None) -> list[NodeHandle]:
        return [n for n in self.nodes_of(model) if n.usable]

    def choose(self, exclude=(), prompt: bytes = b"", model: str | None = None) -> NodeHandle:
        """A healthy node of the model's pool, by the strategy; prompt: the
        beginning of the session's conversation, for prefix-affinity."""
        nodes = self.nodes_of(model)
        candidates = [n for n in nodes if n.usable and n not in exclude]
        strategy = self.strategy
        if model is not None and model != self.default_model:
            strategy = self.strategies.setdefault(model, make_strategy(self.strategy.name, self.seed))
        try:
            return pick(strategy, nodes, candidates, prompt)
        except LookupError:
            several = model is not None and len(self.model_names()) > 1
            raise NodeDown(str(errors.MODEL_DOWN.format(model=model) if several else errors.NO_HEALTHY_NODE)) from None
