"""The coordinator's tree: the node's namespace (styxfs.llama.LlamaTree) over
a backend that dispatches each session to a node and streams the node's
reply back, plus nodes/ID/ (the node's own root, proxied, and `health`).

A session stays on its node (its KV cache is there) unless the node fails.
With failover on, a node that fails before the first byte of a reply is
replaced invisibly; one that dies mid-reply is replaced by another that is
given the conversation so far plus the reply so far, so the reader sees one
continuous reply.

What costs a turn time is sent ahead of it: sessions are made ahead on every
node (spares); a session is bound to its node when its settings or a turn's
first write arrive, and those go on to the node at once, without waiting for
the node's answer, so that the read which submits the turn finds them there.
"""

from __future__ import annotations

import itertools
import logging

import trio

from styxfs import client, wire
from styxfs.engine import Reply
from styxfs.errors import StyxError
from styxfs.llama import QNODES, Backend, LlamaTree, qpath
from styxfs.metrics import exposition, server_samples
from styxfs.sessions import Session
from styxfs.tree import Caller, Commands, Directory, Entry, Handle, TextFile, parse_number, quote
from styxfs.wire import DMDIR, Dir, Qid

from .config import STRATEGIES
from .pool import NodeDown, NodeHandle, Pool

log = logging.getLogger("coordinator.union")

SPARES = 4  # sessions made ahead on each node: a new session's first turn need not wait to make one


class Binding:
    """A session on a node, ready for turns: its ctl (the clone fid, held
    open, which keeps the session alive), its status open for re-reading,
    its data file opened ahead for the next turn, and what has been written
    to them ahead of that turn."""

    def __init__(self, node: NodeHandle, number: str, ctl: client.File, status: client.File, data: client.Fid):
        self.node, self.number, self.ctl, self.status = node, number, ctl, status
        self.data: client.Fid | None = data  # None while the next one is being opened
        self.settings: str | None = None  # the settings last written to its ctl
        self.ahead: bytes | None = b""  # prompt already in data for the next turn (None: unknown)
        self.calls: list[client.Call] = []  # writes sent ahead, their replies to come
        self.released = False

    @classmethod
    async def make(cls, node: NodeHandle, c: client.Client) -> "Binding":
        ctl = await c.open("clone", wire.ORDWR)
        opened: dict[str, client.File] = {}

        async def open_file(name: str, mode: int) -> None:
            opened[name] = await c.open(f"{number}/{name}", mode)

        try:
            number = (await ctl.read()).decode().strip()
            async with client.unwrapped(), trio.open_nursery() as nursery:  # both at once
                nursery.start_soon(open_file, "status", wire.OREAD)
                nursery.start_soon(open_file, "data", wire.ORDWR)
        except BaseException:
            for f in [*opened.values(), ctl]:
                await f.fid.clunk_quietly()
            raise
        return cls(node, number, ctl, opened["status"], opened["data"].fid)

    async def send_ahead(self, settings: str, prompt: bytes = b"") -> None:
        """Start writing the settings (if changed) and a piece of the next
        turn's prompt, without waiting for the replies (settle does)."""
        try:
            await self.settle()  # one batch at a time: the node may take a batch's writes in any order
        except client.Error:
            self.settings = self.ahead = None
            raise
        if settings != self.settings:
            self.settings = None  # unknown until sent
            self.calls.append(await self.ctl.fid.start_write(settings.encode(), 0))
            self.settings = settings
        if prompt:
            ahead, self.ahead = self.ahead, None
            self.calls.append(await self.data.start_write(prompt, 0))
            self.ahead = ahead + prompt

    async def settle(self) -> None:
        """The replies to the writes sent ahead; the first failure is raised."""
        calls, self.calls = self.calls, []
        try:
            for call in calls:
                await call.result()
        finally:
            for call in calls:
                await call.abandon()  # those a failure or a cancel left unanswered

    async def release(self, close: bool) -> None:
        """Let go of it (and close the session on the node), within 2 s."""
        self.released = True
        with trio.CancelScope(shield=True), trio.move_on_after(2):  # the deadline inside the shield
            try:
                await self.settle()
            except client.Error:
                pass
            try:
                if close:
                    await self.ctl.fid.write(b"close", 0)
            except client.Error:
                pass
            for fid in (self.data, self.status.fid, self.ctl.fid):
                if fid is not None:
                    await fid.clunk_quietly()


class Remote:
    """A coordinator session's life on nodes."""

    def __init__(self):
        self.binding: Binding | None = None
        self.turns: list[bytes] = []  # the conversation so far, prompts and replies
        self.reply: Reply | None = None

    @property
    def node(self) -> NodeHandle | None:
        return self.binding.node if self.binding else None


class UnionBackend(Backend):
    role = "coordinator"

    def __init__(self, pool: Pool, *, name: str = "llamafs", failover: bool = True,
                 request_timeout: float = 60.0, scaler=None):
        self.pool = pool
        self.name = name
        self.failover = failover
        self.request_timeout = request_timeout
        self.scaler = scaler  # async fn(n), from the deployment manager
        self.remotes: dict[int, Remote] = {}
        self.nursery: trio.Nursery | None = None
        self.requests = 0
        self.failovers = 0
        self.qids = _QidMap()
        self.tree: LlamaTree | None = None  # make_union sets it
        self.spares: dict[NodeHandle, list[Binding]] = {}
        self.spare_wanted = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self.keep_spares()

    # -- sessions --------------------------------------------------------------

    def attach_session(self, session: Session) -> None:
        self.remotes[session.number] = Remote()

    async def submit(self, session: Session, text: bytes) -> Reply:
        if not self.pool.healthy():
            raise StyxError("no healthy node")
        remote = self.remotes[session.number]
        reply = Reply(stream_interval=0)  # the node's replies come in pieces already: pass each on
        remote.reply = reply
        self.requests += 1
        self.nursery.start_soon(self.forward, session, remote, text, reply)
        return reply

    def cancel(self, session: Session) -> None:
        remote = self.remotes.get(session.number)
        if remote and remote.reply and not remote.reply.ended and not remote.reply.text_complete:
            remote.reply.cancel_requested = True
            if remote.binding is not None:
                try:
                    self.nursery.start_soon(self._remote_ctl, remote.binding, b"cancel")
                except RuntimeError:  # shutting down: the node's session goes too
                    pass

    async def reset(self, session: Session) -> None:
        remote = self.remotes.get(session.number)
        if remote is not None:
            remote.turns = []
            if remote.binding is not None:
                await self._remote_ctl(remote.binding, b"reset")

    async def close(self, session: Session) -> None:
        remote = self.remotes.pop(session.number, None)
        if remote is not None:
            await self._unbind(remote, close=True)

    async def _remote_ctl(self, binding: Binding, command: bytes) -> None:
        try:
            with trio.move_on_after(self.pool.health_timeout):
                await binding.ctl.fid.write(command, 0)
        except client.Error as e:
            log.info("%s on node %s: %s", command.decode(), binding.node.id, e)

    async def _unbind(self, remote: Remote, close: bool) -> None:
        binding, remote.binding = remote.binding, None
        if binding is not None:
            binding.node.sessions.discard(remote)
            await binding.release(close)

    async def _bind(self, remote: Remote, c: client.Client, node: NodeHandle) -> Binding:
        """A session on this node for remote: a spare one made ahead, or a new one."""
        spares = self.spares.get(node, [])
        binding = spares.pop() if spares else await Binding.make(node, c)
        remote.binding = binding
        node.sessions.add(remote)
        return binding

    async def keep_spares(self) -> None:
        """Keep SPARES sessions made ahead on every usable node, so that a new
        session's first turn does not wait for clone, walk and open."""
        while True:
            self.spare_wanted = trio.Event()
            for node in list(self.spares):
                if node not in self.pool.nodes or not node.usable:
                    for binding in self.spares.pop(node):
                        self.nursery.start_soon(binding.release, True)
            for node in self.pool.healthy():
                spares = self.spares.setdefault(node, [])
                while len(spares) < SPARES and node.usable and (c := node.client) is not None:
                    try:
                        with trio.fail_after(self.pool.health_timeout):
                            spares.append(await Binding.make(node, c))
                    except (client.Error, trio.TooSlowError) as e:
                        log.info("no spare session on node %s: %s", node.id, e)
                        break
                    except Exception:  # a bug here must not take the coordinator down
                        log.exception("making a spare session on node %s", node.id)
                        break
            with trio.move_on_after(1):
                await self.spare_wanted.wait()

    # -- forwarding ------------------------------------------------------------

    async def prepare(self, session: Session, prompt: bytes = b"") -> None:
        """Bind the session to a node (if it is new) and send the settings and
        the prompt's first write on ahead, answering the client at once."""
        remote = self.remotes.get(session.number)
        if remote is None or (remote.reply is not None and not remote.reply.ended):
            return
        # Not interruptible: once the node may have a write, the binding must say so.
        with trio.CancelScope(shield=True), trio.move_on_after(self.pool.health_timeout):
            try:
                if remote.binding is None:
                    if remote.turns:
                        return  # a new node must first be given the conversation: the turn does that
                    node = self.pool.choose()
                    with node.request() as c:
                        await self._bind(remote, c, node)
                b = remote.binding
                if b.data is None or b.ahead is None or len(prompt) > b.data.iounit:
                    prompt = b""  # the turn sends it
                with b.node.request():
                    await b.send_ahead(settings_text(session), prompt)
            except (NodeDown, client.Error) as e:
                log.info("session %d: nothing sent ahead: %s", session.number, e)  # the turn sees to it
            except Exception:  # a bug here must not fail the client's write
                log.exception("session %d: sending ahead", session.number)

    async def forward(self, session: Session, remote: Remote, text: bytes, reply: Reply) -> None:
        """Run one turn on a node, failing over as the config says."""
        tried: set[NodeHandle] = set()
        with trio.move_on_after(self.request_timeout) as timer:
            while not reply.ended:
                try:
                    node = remote.node if remote.node in self.pool.healthy() else self.pool.choose(tried)
                except NodeDown as e:
                    reply.set_state("error", str(e))
                    break
                try:
                    await self._turn_on(node, session, remote, text, reply)
                except (NodeDown, client.ConnectionLost, OSError) as e:
                    log.warning("session %d: node %s failed: %s", session.number, node.id, e)
                    node.failed(str(e))
                    tried.add(node)
                    await self._unbind(remote, close=False)
                    if reply.text_complete:  # it failed after the end: only the figures are lost
                        reply.set_state("cancelled" if reply.cancel_requested else "done")
                        break
                    if not self.failover:
                        reply.set_state("error", f"node {node.id} failed")
                        break
                    self.failovers += 1
                except client.ServerError as e:
                    reply.set_state("error", e.ename)
                    break
        if timer.cancelled_caught:
            reply.set_state("error", "request timed out")
            self.cancel(session)
        if not reply.ended:
            reply.set_state("error", "no node could answer")
        remote.turns += [text, bytes(reply.text)]
        self.spare_wanted.set()  # now, not while the turn (which may have taken one) was starting

    async def _turn_on(self, node: NodeHandle, session: Session, remote: Remote, text: bytes, reply: Reply) -> None:
        with node.request() as c:
            reply.node = node.id
            prompt = text
            b = remote.binding
            if b is not None and (b.ahead is None or not text.startswith(b.ahead)):
                # That session on the node holds a prompt for a turn that never came.
                await self._unbind(remote, close=True)
            if remote.node is not node:
                await self._unbind(remote, close=True)
                await self._bind(remote, c, node)
                # A node new to this session: give it the conversation so far,
                # and the reply so far when we take over in the middle of one.
                prompt = b"".join(remote.turns) + text + bytes(reply.text)
            b = remote.binding
            if b.data is None:
                b.data = (await c.open(f"{b.number}/data", wire.ORDWR)).fid
            # The node takes a turn's settings when the turn is submitted, at the
            # first read: so what is left of settings and prompt goes at once.
            rest = prompt[len(b.ahead):]
            small = rest if len(rest) <= b.data.iounit else b""
            await b.send_ahead(settings_text(session), small)
            await b.settle()
            if reply.cancel_requested:
                # Closed first: a data file clunked unread would submit the prompt.
                await self._unbind(remote, close=True)
                reply.set_state("cancelled")
                return
            data, b.data, b.ahead = b.data, None, b""
            f = client.File(data)
            try:
                if rest and not small:
                    await f.write(rest)
                if reply.state == "queued":
                    reply.set_state("generating")
                async for piece in f.stream():
                    reply.append(piece, 0)
            except BaseException:
                await data.clunk_quietly()
                raise
            reply.complete_text()
            # The status now; the data file's clunk (and the next one's open) after.
            status_read = await b.status.fid.start_read(256, 0)
            self.nursery.start_soon(self._next_data, b, c, data)
            status = (await status_read.result()).data.decode()
        state, fields = parse_status(status)
        reply.tokens_in = int(fields.get("tokens_in", 0))
        reply.tokens_out += int(fields.get("tokens_out", 0))
        if state == "error":
            reply.set_state("error", fields.get("error", "generation failed"))
        else:
            reply.set_state("cancelled" if state == "cancelled" or reply.cancel_requested else "done")

    async def _next_data(self, binding: Binding, c: client.Client, used: client.Fid) -> None:
        """The data file for the binding's next turn, opened ahead (and the
        used one clunked)."""
        await used.clunk_quietly()
        try:
            with trio.fail_after(self.pool.health_timeout):
                fid = (await c.open(f"{binding.number}/data", wire.ORDWR)).fid
        except (client.Error, trio.TooSlowError):
            return
        if binding.data is None and not binding.released:
            binding.data = fid
        else:
            await fid.clunk_quietly()

    # -- the root's files --------------------------------------------------------

    def ctl_commands(self, tree: LlamaTree) -> Commands:
        commands = Commands()
        pool = self.pool

        @commands.verb("add", "ID ADDR [weight W]", 2, 4)
        def add(caller, args):
            node_id, address = args[0], args[1]
            weight = 1.0
            if len(args) > 2:
                if args[2] != "weight" or len(args) != 4:
                    raise StyxError("bad ctl request: usage: add ID ADDR [weight W]")
                weight = parse_number("add weight", args[3], float, 0.0, 1e9)
            from styxfs import dial
            try:
                dial.parse(address)
            except ValueError as e:
                raise StyxError(f"bad ctl request: add: {e}") from None
            try:
                pool.add(node_id, address, weight)
            except ValueError as e:
                raise StyxError(f"bad ctl request: add: {e}") from None

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
                raise StyxError(f"bad ctl request: balance: unknown strategy {args[0]!r}: use {' '.join(STRATEGIES)}")
            pool.set_strategy(args[0])

        @commands.verb("scale", "N", 1)
        async def scale(caller, args):
            n = parse_number("scale", args[0], int, 0, 256)
            if self.scaler is None:
                raise StyxError("scale: this coordinator starts no nodes (use deploy start)")
            try:
                await self.scaler(n)
            except RuntimeError as e:  # a node that would not start, say
                raise StyxError(f"scale: {e}") from None

        return commands

    def _node(self, node_id: str) -> NodeHandle:
        try:
            return self.pool.get(node_id)
        except KeyError:
            raise StyxError(f"no such node: {node_id}") from None

    async def ctl_text(self, tree: LlamaTree) -> str:
        pool = self.pool
        lines = [("role", "coordinator"), ("name", self.name), ("state", "loaded" if pool.healthy() else "unloaded"),
                 ("strategy", pool.strategy.name), ("failover", "on" if self.failover else "off"),
                 ("healthcheckinterval", int(pool.health_interval * 1000)),
                 ("requesttimeout", int(self.request_timeout * 1000)),
                 ("nodes", len(pool.nodes)), ("healthy", len(pool.healthy())),
                 ("sessions", len(tree.table.sessions)), ("maxsessions", tree.table.max_sessions)]
        text = "".join(f"{k} {v}\n" for k, v in lines)
        text += "".join(f"node {n.id} {n.address} {n.state}{' draining' if n.draining else ''} weight {n.weight}\n"
                        for n in pool.nodes)
        return text + "".join(f"defaults {line}\n" for line in tree.defaults.lines().splitlines())

    async def model_text(self) -> str:
        for node in self.pool.healthy():
            try:
                with trio.fail_after(self.pool.health_timeout):
                    return (await node.client.read_file("model")).decode() + f"node {node.id}\n"
            except (client.Error, trio.TooSlowError):
                continue
        return "state unloaded\nerror no healthy node\n"

    async def metrics_text(self, tree: LlamaTree) -> str:
        own = exposition([
            ("llamafs_coordinator_nodes", "gauge", "nodes configured", {}, len(self.pool.nodes)),
            ("llamafs_coordinator_healthy_nodes", "gauge", "nodes up", {}, len(self.pool.healthy())),
            ("llamafs_coordinator_sessions", "gauge", "open sessions", {}, len(tree.table.sessions)),
            ("llamafs_coordinator_requests_total", "counter", "prompts dispatched", {}, self.requests),
            ("llamafs_coordinator_failovers_total", "counter", "turns moved to another node", {}, self.failovers),
        ] + server_samples(tree.server) + [
            ("llamafs_node_up", "gauge", "1 if the node passes its health check", {"node": n.id},
             1 if n.state == "up" else 0) for n in self.pool.nodes])
        parts = [own]
        for node in self.pool.healthy():
            try:
                with trio.fail_after(self.pool.health_timeout):
                    text = (await node.client.read_file("metrics")).decode()
            except (client.Error, trio.TooSlowError):
                continue
            parts.append(label_metrics(text, node.id))
        return "".join(parts)

    async def extra_entries(self, caller: Caller) -> list[Entry]:
        return [NodesDir(self)]


def settings_text(session: Session) -> str:
    """The session's settings as node ctl lines (stop cleared, then set)."""
    s = session.sampling
    lines = [f"{k} {getattr(s, k)}" for k in ("temperature", "topk", "topp", "minp", "seed", "maxtokens",
                                             "repeatpenalty")]
    lines.append("stop")
    lines += [f"stop {quote(stop)}" for stop in s.stop]
    return "\n".join(lines) + "\n"


def parse_status(text: str) -> tuple[str, dict[str, str]]:
    words = text.split()
    fields = {}
    for word in words[1:]:
        key, _, value = word.partition("=")
        fields[key] = value.strip("'")
    return (words[0] if words else "error"), fields


def label_metrics(text: str, node_id: str) -> str:
    """A node's exposition with node="ID" added to every sample."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue  # the coordinator's own HELP/TYPE lines would repeat per node
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, labels = name_labels.split("{", 1)
            out.append(f'{name}{{node="{node_id}",{labels} {value}')
        else:
            out.append(f'{name_labels}{{node="{node_id}"}} {value}')
    return "\n".join(out) + "\n" if out else ""


# ---- nodes/: each node's own tree, proxied ------------------------------------------


class _QidMap:
    """Local qid paths for proxied files: stable, unique, below 2**32."""

    def __init__(self):
        self.paths: dict[tuple[str, int], int] = {}
        self.counter = itertools.count(0x80000000)

    def local(self, node_id: str, remote_path: int) -> int:
        key = (node_id, remote_path)
        if key not in self.paths:
            self.paths[key] = next(self.counter) & 0xFFFFFFFF
        return self.paths[key]


class NodesDir(Directory):
    """nodes/: the deployment's owner's only."""

    def __init__(self, backend: UnionBackend):
        super().__init__("nodes", qpath(0, QNODES))
        self.backend = backend

    async def children(self, caller: Caller) -> list[Entry]:
        self.backend.tree.check_owner(caller)
        return [NodeDir(self.backend, n) for n in self.backend.pool.nodes]

    async def walk(self, name: str, caller: Caller) -> Entry:
        self.backend.tree.check_owner(caller)
        try:
            return NodeDir(self.backend, self.backend.pool.get(name))
        except KeyError:
            raise StyxError(f"no such node: {name}") from None


class NodeDir(Entry):
    """nodes/ID: the node's root, proxied, plus health."""

    def __init__(self, backend: UnionBackend, node: NodeHandle):
        super().__init__(node.id, backend.qids.local(node.id, 1 << 40), DMDIR | 0o555)
        self.backend, self.node = backend, node
        self.health = TextFile("health", backend.qids.local(node.id, 1 << 41), read=lambda c: node.health_text())

    async def children(self, caller: Caller) -> list[Entry]:
        remote = RemoteEntry(self.backend, self.node, [], Dir(qid=Qid(0x80, 0, 0), mode=DMDIR | 0o555))
        try:
            entries = await remote.children(caller)
        except StyxError:
            entries = []
        return [self.health] + entries

    async def walk(self, name: str, caller: Caller) -> Entry:
        if name == "health":
            return self.health
        root = RemoteEntry(self.backend, self.node, [], Dir(qid=Qid(0x80, 0, 0), mode=DMDIR | 0o555))
        return await root.walk(name, caller)


class RemoteEntry(Entry):
    """A file of a node's tree, reached over the coordinator's connection."""

    def __init__(self, backend: UnionBackend, node: NodeHandle, path: list[str], stat: Dir):
        name = path[-1] if path else node.id
        super().__init__(name, backend.qids.local(node.id, stat.qid.path), stat.mode, stat.uid or "llamafs")
        self.backend, self.node, self.path, self.remote_stat = backend, node, path, stat

    def stat(self, caller: Caller) -> Dir:
        s = self.remote_stat
        return Dir(qid=self.qid, mode=s.mode, atime=s.atime, mtime=s.mtime, length=s.length,
                   name=self.name, uid=s.uid, gid=s.gid, muid=s.muid)

    def _client(self) -> client.Client:
        if self.node.client is None:
            raise StyxError(f"node {self.node.id} is down")
        return self.node.client

    async def _call(self, coroutine_fn):
        try:
            with trio.fail_after(self.backend.request_timeout):
                return await coroutine_fn(self._client())
        except client.ServerError as e:
            raise StyxError(e.ename) from None
        except (client.Error, trio.TooSlowError) as e:
            raise StyxError(f"node {self.node.id}: {e or 'timed out'}") from None

    async def walk(self, name: str, caller: Caller) -> Entry:
        path = self.path + [name]
        stat = await self._call(lambda c: c.stat("/".join(path)))
        return RemoteEntry(self.backend, self.node, path, stat)

    async def children(self, caller: Caller) -> list[Entry]:
        dirs = await self._call(lambda c: c.listdir("/".join(self.path)))
        return [RemoteEntry(self.backend, self.node, self.path + [d.name], d) for d in dirs]

    async def open(self, mode: int, caller: Caller) -> Handle:
        if self.is_dir:
            return await super().open(mode, caller)

        async def do_open(c):
            fid = await c.walk("/".join(self.path))
            try:
                await fid.open(mode)
            except BaseException:
                await fid.clunk_quietly()
                raise
            return fid

        return RemoteHandle(self, await self._call(do_open))


class RemoteHandle(Handle):
    def __init__(self, entry: RemoteEntry, fid: client.Fid):
        super().__init__(entry)
        self.fid = fid

    async def read(self, offset: int, count: int) -> bytes:
        return await self.entry._call(lambda c: self.fid.read(count, offset))

    async def write(self, offset: int, data: bytes) -> int:
        return await self.entry._call(lambda c: self.fid.write(data, offset))

    async def clunk(self, aborted: bool) -> None:
        await self.fid.clunk_quietly()


def make_union(pool: Pool, **options) -> tuple[UnionBackend, LlamaTree]:
    tree_options = {k: options.pop(k) for k in ("max_sessions", "session_timeout", "owner") if k in options}
    backend = UnionBackend(pool, **options)
    backend.tree = LlamaTree(backend, **tree_options)
    return backend, backend.tree

