"""Node sessions: the sessions a coordinator holds on its nodes.

Each is a Binding, ready for turns.  NodeSessions makes them, binds them to
coordinator sessions and lets them go; it keeps SPARES made ahead on every
usable node, so that a new session's first turn does not wait for clone,
walk and open; and it stays under each node's cap, which counts all that we
hold there: bound sessions, spares and those being made.  When and where a
session is bound is the forwarding's business (forwarding.py).
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from styxfs import client, wire
from styxfs.llama import errors
from styxfs.llama.sessions import Session
from styxfs.llama.settings import SPARES
from styxfs.trioutil import unwrapped

from .pool import NodeHandle, Pool

log = logging.getLogger("coordinator.node_sessions")


class NodeFull(Exception):
    """The node is at its cap and every session on it is busy."""


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
        self.files: dict[str, bytes] = {}  # what was written to the session's setting files
        self.released = False

    @classmethod
    async def make(cls, node: NodeHandle, c: client.Client, clone: str = "clone") -> "Binding":
        ctl = await c.open(clone, wire.ORDWR)
        opened: dict[str, client.File] = {}

        async def open_file(name: str, mode: int) -> None:
            opened[name] = await c.open(f"{number}/{name}", mode)

        try:
            number = (await ctl.read()).decode().strip()
            async with unwrapped(), trio.open_nursery() as nursery:  # both at once
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


class Bound(Protocol):
    """What a node session is bound to: a coordinator session's state
    (forwarding's Remote), which node.sessions holds."""

    session: Session
    binding: Binding | None


class NodeSessions:
    """Our sessions on every node: bound ones (in each node's sessions),
    spares made ahead, and those being made."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.spares: dict[NodeHandle, list[Binding]] = {}
        self.making: dict[NodeHandle, int] = {}  # sessions being made on each node
        self.spare_wanted = trio.Event()
        self.released = 0  # node sessions let go behind idle sessions of ours, for room on the node
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self.keep_spares()

    def clone_path(self, node: NodeHandle, model: str | None) -> str:
        """Where a session of the model is made on the node: a coordinator
        node of several models makes it in models/NAME/, a node has one."""
        if node.role == "coordinator" and model is not None and len(self.pool.model_names()) > 1:
            return f"models/{model}/clone"
        return "clone"

    async def bind(self, bound: Bound, c: client.Client, node: NodeHandle, model: str | None = None) -> Binding:
        """A session on this node for bound (of the model): a spare one made
        ahead, or a new one.  A node at its cap with nothing of ours to let go
        raises NodeFull."""
        clone = self.clone_path(node, model)
        spares = self.spares.get(node, []) if clone == "clone" else []
        if spares:
            binding = spares.pop()
        else:
            node.arriving += 1  # the strategies count it at once: sessions bound together spread out
            try:
                binding = await self._make(node, c, room=True, clone=clone)
            finally:
                node.arriving -= 1
        bound.binding = binding
        node.sessions.add(bound)
        return binding

    async def unbind(self, bound: Bound, close: bool) -> None:
        binding, bound.binding = bound.binding, None
        if binding is not None:
            binding.node.sessions.discard(bound)
            await binding.release(close)

    async def _make(self, node: NodeHandle, c: client.Client, room: bool, clone: str = "clone") -> Binding:
        """A new session on the node, counted as held while it is made (so
        that makes at once cannot pass the node's cap together); with room,
        an idle one of ours is let go first if the node is at its cap."""
        self.making[node] = self.making.get(node, 0) + 1
        try:
            if room:
                await self._make_room(node)
            try:
                return await Binding.make(node, c, clone)
            except client.ServerError as e:
                if e.ename.startswith(errors.TOO_MANY_SESSIONS.prefix):
                    raise NodeFull(e.ename) from None
                raise
        finally:
            self.making[node] -= 1

    def held(self, node: NodeHandle) -> int:
        """Sessions we hold on the node: bound ones, spares, and those being made."""
        return len(node.sessions) + len(self.spares.get(node, [])) + self.making.get(node, 0)

    async def _make_room(self, node: NodeHandle) -> None:
        """At the node's cap, let go of the node session behind our least
        recently used idle session there (it is given its conversation again,
        on whichever node, at its next turn): the node can never reclaim
        sessions whose files we hold open."""
        while node.max_sessions and self.held(node) > node.max_sessions:  # ours, being made, is counted
            idle = [b for b in node.sessions if b.session.idle]
            if not idle:
                return  # every one busy: the node refuses, and says why
            victim = min(idle, key=lambda b: b.session.last_active)
            await self.unbind(victim, close=True)
            self.released += 1

    def want_spares(self) -> None:
        """Make spares now (a turn may have taken one), not at the next round."""
        self.spare_wanted.set()

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
                if self.clone_path(node, self.pool.default_model) != "clone":
                    continue  # a coordinator of several models: its sessions are made per model
                spares = self.spares.setdefault(node, [])
                while (len(spares) < SPARES and node.usable and (c := node.client) is not None
                       and not (node.max_sessions and self.held(node) >= node.max_sessions)):
                    try:
                        with trio.fail_after(self.pool.health_timeout):
                            spares.append(await self._make(node, c, room=False))
                    except (client.Error, trio.TooSlowError) as e:
                        log.info("no spare session on node %s: %s", node.id, e)
                        break
                    except Exception:  # a bug here must not take the coordinator down
                        log.exception("making a spare session on node %s", node.id)
                        break
            with trio.move_on_after(1):
                await self.spare_wanted.wait()
