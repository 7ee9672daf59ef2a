"""DeploymentManager: start a deployment's nodes, serve the union, scale,
report and shut down — the original design's programmatic API, in trio.

    mgr = DeploymentManager("deployment.json")
    mgr.on("deployed", lambda: print("ready"))
    async with trio.open_nursery() as nursery:
        await mgr.deploy(nursery)            # or: await nursery.start(mgr.run)
        print(await mgr.evaluate("What is the meaning of life?", temperature=0))
        await mgr.scale(3)
        print(mgr.status())
        await mgr.shutdown()
"""

from __future__ import annotations

import getpass
import logging
import os
from functools import partial
from typing import Any, AsyncIterator, Callable

import trio

from styxfs import client, dial, tls, wire
from styxfs.auth import SecretAuthenticator, read_secret, secret_authenticator
from styxfs.server import Server
from styxfs.llama.settings import HEALTH_TIMEOUT, RESTART_LOG_LINES
from styxfs.trioutil import unwrapped

from .config import ConfigError, DeploymentConfig, NodeConfig
from .discovery import for_deployment
from .launch import NodeProcess, deployment_of, node_command, port_holder, wait_exit
from .pool import NodeHandle, Pool
from .supervise import Supervisor
from .union import make_union

log = logging.getLogger("coordinator.deploy")

EVENTS = ("deployed", "error", "node-up", "node-down", "node-restarted", "node-failed", "scaled", "shutdown")


class DeploymentManager:
    def __init__(self, config: DeploymentConfig | dict | str | os.PathLike, *, seed: int | None = None,
                 health_timeout: float | None = None, node_log_dir: str | None = None):
        if isinstance(config, (str, os.PathLike)):
            config = DeploymentConfig.load(config)
        elif isinstance(config, dict):
            config = DeploymentConfig.from_dict(config)
        self.config = config
        net = config.network
        interval = net.healthCheckInterval / 1000
        secret = read_secret(config.authSecretFile) if config.authSecretFile else None
        self.secret = secret
        self.authenticate = secret_authenticator(secret) if secret else None
        try:  # the CA our nodes' certificates chain to, and our own certificate
            tls_context = tls.client_context(net.tls.ca, net.tls.cert, net.tls.key) if net.tls else None
        except tls.TLSError as e:
            raise ConfigError(f"network.tls: {e}") from None
        if not health_timeout:  # the config's, else the check interval within settings' bounds
            low, high = HEALTH_TIMEOUT
            health_timeout = net.healthTimeout / 1000 if net.healthTimeout else min(high, max(low, interval))
        self.pool = Pool(strategy=net.loadBalancing, health_interval=interval, health_timeout=health_timeout,
                         connect_timeout=net.connectTimeout / 1000, seed=seed,
                         notify=self._node_event, authenticate=self.authenticate, tls_context=tls_context)
        self.discovery = for_deployment(self)  # nodes found by DNS, with srv or dns entries
        self.sessions, self.root, self.tree = make_union(self.pool, name=config.name, failover=net.enableFailover,
                                             request_timeout=net.requestTimeout / 1000, scaler=self.scale,
                                             owner=config.owner or getpass.getuser(),
                                             session_timeout=net.sessionTimeout / 1000,
                                             max_sessions=net.maxSessions)
        self.server = Server(self.tree, authenticator=SecretAuthenticator(secret) if secret else None)
        self.tree.server = self.server
        self.listeners: list = []
        self.address = net.listen
        self.http_port = 0  # where HTTP listens, with network.http
        self.processes: dict[str, NodeProcess] = {}
        self.isolates: dict = {}  # node id -> isolation.Isolate, with isolation "dis"
        self.handlers: dict[str, list[Callable]] = {e: [] for e in EVENTS}
        self.node_log_dir = node_log_dir
        self.cancel_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        self.deployed = False
        self.changed = trio.Event()  # a node came up or went down, or a process of ours ended
        self.supervisor = Supervisor(self, net.restart)  # restarts our node processes that crash

    # -- events --------------------------------------------------------------------

    def on(self, event: str, callback: Callable) -> None:
        if event not in self.handlers:
            raise ValueError(f"unknown event {event!r}: use one of {', '.join(EVENTS)}")
        self.handlers[event].append(callback)

    def emit(self, event: str, *args) -> None:
        for callback in self.handlers[event]:
            try:
                callback(*args)
            except Exception:
                log.exception("%s handler failed", event)

    def _node_event(self, event: str, node: NodeHandle) -> None:
        self.supervisor.node_event(event, node)
        self._changed()
        self.emit(event, node.id)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- life --------------------------------------------------------------------------

    async def deploy(self, nursery: trio.Nursery, timeout: float = 180.0) -> None:
        """Start what the config says in nursery; returns once every node is
        healthy and the union is served.  Raises on failure (and emits error)."""
        async with unwrapped():
            await nursery.start(self.run, timeout)

    async def run(self, timeout: float = 180.0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with unwrapped(), trio.open_nursery() as nursery:
                self.nursery = nursery
                self.cancel_scope = nursery.cancel_scope
                net = self.config.network
                await self._model_paths()
                for node in self.config.nodes:
                    if not node.record:  # a record's nodes are found, never started (discovery.py)
                        await self._start_node(node)
                await nursery.start(self.pool.run)
                if self.discovery:
                    await nursery.start(self.discovery.run)
                await nursery.start(self.tree.run)
                await self._wait_healthy(timeout)
                self.listeners = await nursery.start(self.server.serve, self.address)
                if self.listeners and dial.parse(self.address).network == "tcp":
                    self.address = str(dial.served(dial.parse(self.address), self.listeners))
                if net.http:
                    from styxfs.llama.web import serve_http  # hypercorn: only where HTTP is served

                    self.http_port = await nursery.start(partial(serve_http, net.http, self.server,
                                                                 secret=self.secret))
                self.deployed = True
                task_status.started(self)
                self.emit("deployed")
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                self.emit("error", e)
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_processes()

    async def _model_paths(self) -> None:
        """The pool's map from a model's file to its name: the file a node's ctl reports names its pool."""
        from styxfs.llama.models import ModelNotFound, model_path

        self.pool.configured = self.config.model_names()
        for name in self.pool.configured:
            try:
                path = await trio.to_thread.run_sync(model_path, self.config.model_path(name))
            except (ModelNotFound, ImportError, OSError) as e:
                log.warning("model %s: %s", name, e)  # its nodes fail to load it, and say why
                continue
            self.pool.paths[os.path.realpath(path)] = name

    async def _start_node(self, node: NodeConfig) -> NodeHandle:
        """Spawn `llamafs serve` for a local node not yet listening (behind an
        isolate with isolation "dis"); connect to it.  A local node already
        listening is taken as it is (a node started by hand), unless another
        deployment started it: then this one stops, naming both."""
        host = "127.0.0.1" if node.address == "localhost" else node.address
        if node.is_local and dial.port_open(host, node.port):
            holder = port_holder(node.port)
            owner = deployment_of(holder) if holder else None
            if owner is not None:
                raise RuntimeError(f"node {node.id}: port {node.port} is held by pid {holder}, a node of the "
                                   f"deployment of pid {owner}: stop that one first, or give this one other ports")
            log.info("node %s: taking the node already listening on port %d (pid %s)", node.id, node.port, holder)
        elif node.is_local:
            await self.launch(node)
        address = node.dial
        if self.pool.tls_context and node.id not in self.processes and node.id not in self.isolates:
            address = "tls!" + address.split("!", 1)[1]  # ours on loopback stay plain: TLS is for the network
        handle = self.pool.add(node.id, address, node.weight)
        handle.process = self.processes.get(node.id)
        if node.id in self.isolates:
            handle.authenticate = None  # the isolate authenticates to the node; its export is local
        return handle

    async def launch(self, node: NodeConfig) -> NodeProcess:
        """The node's process, and its isolate with isolation "dis"; what is
        left of earlier ones (a restart's) stopped first."""
        isolate = self.isolates.pop(node.id, None)
        if isolate is not None:
            await trio.to_thread.run_sync(isolate.stop)
        if (old := self.processes.get(node.id)) is not None:
            await old.stop()
        isolated = self.config.isolation == "dis"
        # Port 0 (a node's with isolation "dis", or the config's): the OS's choice, told back.
        process = await self._spawn(node, "tcp!127.0.0.1!0" if isolated else node.dial)
        if isolated or node.port == 0:
            served = await self._served(node, process)
            if isolated:
                await self._isolate(node, served)
            else:
                node.port = dial.parse(served).port  # and its restarts' port
        return process

    async def _spawn(self, node: NodeConfig, listen: str) -> NodeProcess:
        """A process for the node, listening on listen, supervised."""
        def exited() -> None:
            self._changed()
            if self.processes.get(node.id) is process and not process.stopping:  # a crash, not a stop
                self.supervisor.exited(node.id, process.returncode, f"exited (status {process.returncode})"
                                       f"{process.log_tail(RESTART_LOG_LINES)}")

        process = await NodeProcess.start(self.nursery, node.id, node_command(self.config, node, listen),
                                          self.node_log_dir, on_exit=exited)
        self.processes[node.id] = process
        return process

    async def _served(self, node: NodeConfig, process: NodeProcess, timeout: float = 180) -> str:
        """Where the node process serves, once it says so."""
        with trio.move_on_after(timeout):
            served = await process.ready()
            if served is None:
                await wait_exit(process.process)
                raise RuntimeError(f"node {node.id} exited (status {process.returncode}) before listening"
                                   f"{process.log_tail()}")
            return served
        raise RuntimeError(f"node {node.id} not serving after {timeout:.0f} s{process.log_tail()}")

    async def _isolate(self, node: NodeConfig, node_dial: str) -> None:
        """An Inferno emu in front of the node, serving on the node's port (0: one the OS chooses)."""
        from styxfs.llama.models import model_path

        from .isolation import Isolate

        model = str(await trio.to_thread.run_sync(model_path, self.config.model_path(self.config.node_model(node))))
        log_path = os.path.join(self.node_log_dir, f"{node.id}-isolate.log") if self.node_log_dir else None
        isolate = Isolate(node.id, log_path=log_path)
        await isolate.start_async(node_dial, os.path.abspath(model), self.config.node_value(node, "contextSize"),
                                  self.config.node_value(node, "gpuLayers"), node.port,
                                  auth_secret_file=self.config.authSecretFile)
        node.port = isolate.port  # the same, or the OS's choice for port 0
        self.isolates[node.id] = isolate
        self.nursery.start_soon(self._watch_isolate, node.id, isolate)

    async def _watch_isolate(self, node_id: str, isolate) -> None:
        reason = await isolate.wait_dead()
        if self.isolates.get(node_id) is isolate:  # not stopped by us
            log.error("the isolate of node %s died: %s", node_id, reason)
            self.emit("error", RuntimeError(f"the isolate of node {node_id} died: {reason}"))
            self.supervisor.exited(node_id, 1, f"isolate died: {reason}")

    async def _stop_processes(self, ids: list[str] | None = None) -> None:
        ids = list(set(self.processes) | set(self.isolates)) if ids is None else ids
        for node_id in ids:
            isolate = self.isolates.pop(node_id, None)
            if isolate is not None:
                await trio.to_thread.run_sync(isolate.stop)
        async with trio.open_nursery() as nursery:
            for node_id in ids:
                process = self.processes.pop(node_id, None)
                if process is not None:
                    nursery.start_soon(process.stop)

    async def drain(self, node_id: str, timeout: float = 60.0) -> None:
        """No new sessions to the node; wait for what is in flight there."""
        node = self.pool.get(node_id)
        node.draining = True
        with trio.move_on_after(timeout):
            while node.inflight:
                await trio.sleep(0.05)

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Drain every node, stop serving, stop the node processes we started."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(timeout):
                async with trio.open_nursery() as nursery:
                    for node in list(self.pool.nodes):
                        nursery.start_soon(self.drain, node.id, timeout)
            if self.cancel_scope is not None:
                self.cancel_scope.cancel()
            await self._stop_processes()
        self.emit("shutdown")

    async def scale(self, n: int, model: str | None = None) -> None:
        """n nodes of the model (None: the default): spawn local ones on the
        next free ports from basePort, or drain and stop the last ones (what
        is in flight finishes first)."""
        if n < 0:
            raise ValueError("scale: a negative number of nodes")
        model = model or self.config.default_model
        if model not in self.config.model_names():
            raise ValueError(f"scale: no such model {model!r}: the models are {', '.join(self.config.model_names())}")
        while len(self._nodes_of(model)) < n:
            node = self._next_node(model)
            self.config.nodes.append(node)
            await self._start_node(node)
        if len(self._nodes_of(model)) > n:
            extra = self._nodes_of(model)[n:]
            async with trio.open_nursery() as nursery:
                for node in extra:
                    nursery.start_soon(self.drain, node.id)
            for node in extra:
                self.pool.remove(node.id)
                self.config.nodes = [c for c in self.config.nodes if c.id != node.id]
            await self._stop_processes([node.id for node in extra])
        await self._wait_healthy(180)
        self.emit("scaled", n)

    def _nodes_of(self, model: str) -> list[NodeHandle]:
        """The model's nodes, as the config says (a node added by ctl: as it says)."""
        if len(self.config.model_names()) <= 1:
            return list(self.pool.nodes)
        configured = {c.id: self.config.node_model(c) for c in self.config.nodes}
        return [h for h in self.pool.nodes if configured.get(h.id, model if h.serves(model) else None) == model]

    async def _wait_healthy(self, timeout: float) -> None:
        """Until every node is up; a node process of ours that exits first is
        an error at once, not a wait for the timeout."""
        with trio.move_on_after(timeout):
            while len(self.pool.healthy()) < len(self.pool.nodes):
                changed = self.changed
                for node in self.pool.nodes:
                    if (node.process is not None and node.process.returncode is not None
                            and node.id not in self.supervisor.seen_up):  # else the supervisor's to restart
                        raise RuntimeError(f"node {node.id} exited (status {node.process.returncode}) before it was"
                                           f" up{node.process.log_tail()}")
                await changed.wait()
            return
        down = ", ".join(f"{n.id} ({n.error})" for n in self.pool.nodes if n.state != "up")
        raise RuntimeError(f"nodes not healthy after {timeout:.0f} s: {down}")

    def _next_node(self, model: str | None = None) -> NodeConfig:
        taken_ids = {n.id for n in self.config.nodes}
        taken_ports = {n.port for n in self.config.nodes}
        port = self.config.network.basePort
        while port and (port in taken_ports or not dial.port_bindable("127.0.0.1", port)):  # 0: the OS's choice
            port += 1
        i = len(self.config.nodes)
        while f"node-{i}" in taken_ids:
            i += 1
        several = len(self.config.model_names()) > 1
        return NodeConfig(id=f"node-{i}", address="localhost", port=port, model=model if several else None)

    # -- use ---------------------------------------------------------------------------

    async def stream(self, prompt: str, **settings: Any) -> AsyncIterator[bytes]:
        """The reply, piece by piece, through the coordinator's own files."""
        if not self.deployed:
            raise RuntimeError("not deployed")
        # The connection lives in a task of its own: a generator must not
        # yield from inside a nursery (client.connect has one).
        send, receive = trio.open_memory_channel(0)
        failure: list[BaseException] = []
        self.nursery.start_soon(self._ask, prompt, settings, send, failure)
        async with receive:
            async for piece in receive:
                yield piece
        if failure:
            raise failure[0]

    async def _ask(self, prompt: str, settings: dict, send: trio.MemorySendChannel,
                   failure: list[BaseException]) -> None:
        async with send:
            try:
                async with client.connect(self.address, authenticate=self.authenticate) as c:
                    async with await c.open("clone", wire.ORDWR) as ctl:
                        number = (await ctl.read()).decode().strip()
                        for key, value in settings.items():
                            await ctl.fid.write(f"{key} {value}".encode(), 0)
                        async with await c.open(f"{number}/data", wire.ORDWR) as data:
                            await data.write(prompt)
                            async for piece in data.stream():
                                await send.send(piece)
                        await ctl.fid.write(b"close", 0)
            except (client.Error, OSError) as e:
                failure.append(e)
            except trio.BrokenResourceError:
                pass  # the reader stopped reading

    async def evaluate(self, prompt: str, **settings: Any) -> str:
        pieces = [piece async for piece in self.stream(prompt, **settings)]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def status(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "address": self.address,
            "strategy": self.pool.strategy.name,
            "sessions": len(self.tree.table.sessions),
            "models": [{"name": m, "state": "up" if self.pool.healthy(m) else "down",
                        "nodes": f"{len(self.pool.healthy(m))}/{len(self.pool.nodes_of(m))}"}
                       for m in self.pool.model_names()],
            "nodes": [{"id": n.id, "address": n.address, "state": n.condition, "draining": n.draining,
                       "model": ",".join(sorted(n.models)),
                       "weight": n.weight, "sessions": len(n.sessions), "inflight": len(n.inflight),
                       "latency": n.latency, "failures": n.failures, "restarts": n.restarts,
                       "error": n.crashed or n.error,
                       "pid": n.process.pid if n.process else None} for n in self.pool.nodes],
        }

    getStatus = status  # the original name


# The original design's names.
LimboDeploymentManager = DeploymentManager