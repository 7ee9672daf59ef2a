"""The coordinator's root files: ctl (its verbs and its text), model and
metrics (its own figures and its nodes', labelled by node), and nodes/."""

from __future__ import annotations

import trio

import styxfs
from styxfs import client, dial, wire
from styxfs.errors import StyxError
from styxfs.llama import errors
from styxfs.llama.namespace import LlamaTree, RootBackend
from styxfs.llama.metrics import server_samples
from styxfs.llama.modeldirs import check_model, status_line
from styxfs.metrics import exposition, merge
from styxfs.tree import Caller, Commands, Entry, parse_number

from .config import STRATEGIES
from .forwarding import ForwardingSessions
from .pool import NodeHandle, Pool
from .proxy import NodesDir, Proxy


class CoordinatorRoot(RootBackend):
    def __init__(self, pool: Pool, sessions: ForwardingSessions, proxy: Proxy, *, name: str = "llamafs",
                 scaler=None):
        self.pool = pool
        self.sessions = sessions
        self.name = name
        self.scaler = scaler  # async fn(n), from the deployment manager
        self.nodes_dir = NodesDir(proxy)

    def ctl_commands(self, tree: LlamaTree) -> Commands:
        commands = Commands()
        pool = self.pool

        @commands.verb("add", "ID ADDR [weight W]", 2, 4)
        def add(caller, args):
            node_id, address = args[0], args[1]
            weight = 1.0
            if len(args) > 2:
                if args[2] != "weight" or len(args) != 4:
                    raise errors.BAD_CTL(why="usage: add ID ADDR [weight W]")
                weight = parse_number("add weight", args[3], float, 0.0, 1e9)
            try:
                dial.parse(address)
            except ValueError as e:
                raise errors.BAD_CTL(why=f"add: {e}") from None
            try:
                pool.add(node_id, address, weight)
            except ValueError as e:
                raise errors.BAD_CTL(why=f"add: {e}") from None

        @commands.verb("remove", "ID", 1)
        def remove(caller, args):
            self._node(args[0])
            pool.remove(args[0])

        @commands.verb("drain", "ID", 1)
        def drain(caller, args):
            self._node(args[0]).draining = True

        @commands.verb("balance", "STRATEGY", 1)
        def balance(caller, args):
            if args[0] not in STRATEGIES:
                raise errors.BAD_CTL(why=f"balance: unknown strategy {args[0]!r}: use {' '.join(STRATEGIES)}")
            pool.set_strategy(args[0])

        @commands.verb("scale", "[MODEL] N", 1, 2)
        async def scale(caller, args):
            n = parse_number("scale", args[-1], int, 0, 256)
            model = args[0] if len(args) == 2 else None
            if model is not None:
                check_model(tree, model)
            if self.scaler is None:
                raise errors.SCALE_REFUSED()
            try:
                await self.scaler(n, model=model)
            except (RuntimeError, ValueError) as e:  # a node that would not start, say
                raise errors.SCALE_FAILED(why=e) from None

        return commands

    def _node(self, node_id: str) -> NodeHandle:
        try:
            return self.pool.get(node_id)
        except KeyError:
            raise errors.NO_SUCH_NODE(node=node_id) from None

    async def ctl_text(self, tree: LlamaTree) -> str:
        pool = self.pool
        lines = [("role", "coordinator"), ("version", styxfs.__version__), ("name", self.name), ("state", "loaded" if pool.healthy() else "unloaded"),
                 ("strategy", pool.strategy.name), ("failover", "on" if self.sessions.failover else "off"),
                 ("healthcheckinterval", int(pool.health_interval * 1000)),
                 ("requesttimeout", int(self.sessions.request_timeout * 1000)),
                 ("nodes", len(pool.nodes)), ("healthy", len(pool.healthy())),
                 ("sessions", len(tree.table.sessions)), ("maxsessions", tree.table.max_sessions)]
        text = "".join(f"{k} {v}\n" for k, v in lines)
        text += "".join(f"node {n.id} {n.address} {n.state}{' draining' if n.draining else ''} weight {n.weight}"
                        f"{''.join(f' model {m}' for m in sorted(n.models))}\n" for n in pool.nodes)
        return text + "".join(f"defaults {line}\n" for line in tree.defaults.lines().splitlines())

    def model_names(self) -> list[str]:
        return self.pool.model_names()

    async def model_status(self, tree: LlamaTree, model: str) -> str:
        """Nodes up and configured; context and mode as a healthy node of the model says."""
        context, chat = 0, None
        for node in self.pool.healthy(model):
            try:
                with trio.fail_after(self.pool.health_timeout):
                    names = [d.name for d in await node.client.listdir("models")]
                    name = model if model in names else names[0]
                    line = (await node.client.read_file(f"models/{name}/status")).decode()
                fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
                context, chat = fields.get("context", 0), {"chat": True, "raw": False}.get(fields.get("mode"))
                break
            except (client.Error, trio.TooSlowError, IndexError):
                continue
        sessions = sum(1 for s in tree.table.sessions.values() if self.sessions.model_of(s) == model)
        return status_line(len(self.pool.healthy(model)), len(self.pool.nodes_of(model)), context, chat, sessions)

    async def model_text(self) -> str:
        for node in self.pool.healthy(self.pool.default_model):
            try:
                with trio.fail_after(self.pool.health_timeout):
                    return (await node.client.read_file("model")).decode() + f"node {node.id}\n"
            except (client.Error, trio.TooSlowError):
                continue
        return "state unloaded\nerror no healthy node\n"

    async def tokens(self, name: str, data: bytes) -> bytes:
        """A healthy node's answer: its refusal is the answer too; a node that
        does not answer in time, or is lost, is passed over for the next."""
        for node in self.pool.healthy(self.pool.default_model):
            try:
                with trio.fail_after(self.sessions.request_timeout):
                    async with await node.client.open(name, wire.ORDWR) as f:
                        await f.write(data)
                        return await f.read_all()
            except client.ServerError as e:
                raise StyxError(str(e)) from None
            except (client.Error, trio.TooSlowError):
                continue
        raise errors.NO_HEALTHY_NODE()

    async def metrics_text(self, tree: LlamaTree) -> str:
        """Our own figures, then each healthy node's, labelled node="ID",
        merged into one exposition."""
        own = exposition([
            ("llamafs_coordinator_nodes", "gauge", "nodes configured", {}, len(self.pool.nodes)),
            ("llamafs_coordinator_healthy_nodes", "gauge", "nodes up", {}, len(self.pool.healthy())),
            ("llamafs_coordinator_sessions", "gauge", "open sessions", {}, len(tree.table.sessions)),
            ("llamafs_coordinator_max_sessions", "gauge", "the cap on open sessions", {}, tree.table.max_sessions),
            ("llamafs_coordinator_sessions_reclaimed_total", "counter", "idle sessions closed at the cap to make room",
             {}, tree.table.reclaimed),
            ("llamafs_coordinator_node_sessions_released_total", "counter",
             "node sessions let go behind idle sessions, to stay under a node's cap", {}, self.sessions.released),
            ("llamafs_coordinator_requests_total", "counter", "prompts dispatched", {}, self.sessions.requests),
            ("llamafs_coordinator_failovers_total", "counter", "turns moved to another node", {}, self.sessions.failovers),
        ] + self.sessions.figures.samples("llamafs_coordinator") + server_samples(tree.server) + [
            ("llamafs_coordinator_model_healthy_nodes", "gauge", "nodes up, by model", {"model": m},
             len(self.pool.healthy(m))) for m in self.pool.model_names()
        ] + [
            ("llamafs_node_up", "gauge", "1 if the node passes its health check", self._labels(n),
             1 if n.state == "up" else 0) for n in self.pool.nodes
        ] + [
            ("llamafs_node_health_check_seconds", "gauge", "how long the node's last health check took",
             self._labels(n), n.latency) for n in self.pool.nodes
        ] + [
            ("llamafs_node_inflight", "gauge", "turns the coordinator has running on the node", self._labels(n),
             len(n.inflight)) for n in self.pool.nodes
        ] + [
            ("llamafs_node_restarts_total", "counter", "times the deployment started the node's crashed process again",
             self._labels(n), n.restarts) for n in self.pool.nodes
        ])
        nodes = []
        for node in self.pool.healthy():
            try:
                with trio.fail_after(self.pool.health_timeout):
                    nodes.append((self._labels(node), (await node.client.read_file("metrics")).decode()))
            except (client.Error, trio.TooSlowError):
                continue
        return merge(own, nodes)

    def _labels(self, node: NodeHandle) -> dict[str, str]:
        """A node's samples' labels: its id, and with several models its model."""
        return {"node": node.id, **({"model": node.model_label} if len(self.pool.model_names()) > 1 else {})}

    async def extra_entries(self, caller: Caller) -> list[Entry]:
        return [self.nodes_dir]

