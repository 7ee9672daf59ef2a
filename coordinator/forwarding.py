"""Forwarding: a coordinator's sessions answered by sessions on its nodes.

A session stays on its node (its KV cache is there) unless the node fails.
With failover on, a node that fails before the first byte of a reply is
replaced invisibly; one that dies mid-reply is replaced by another that is
given the conversation so far plus the reply so far, so the reader sees one
continuous reply.

What costs a turn time is sent ahead of it: sessions are made ahead on every
node (spares, node_sessions.py); a session is bound to its node when its
settings or a turn's first write arrive, and those go on to the node at
once, without waiting for the node's answer, so that the read which submits
the turn finds them there.
"""

from __future__ import annotations

import logging

import trio

from styxfs import client, wire
from styxfs.errors import StyxError
from styxfs.llama import errors
from styxfs.llama.chat import Message, format_records
from styxfs.llama.metrics import ReplyFigures
from styxfs.llama.namespace import SessionBackend
from styxfs.llama.reply import Reply, ReplyState, parse_status
from styxfs.llama.sessions import Session
from styxfs.llama.settings import REQUEST_TIMEOUT

from .node_sessions import Binding, NodeFull, NodeSessions
from .pool import NodeDown, NodeHandle, Pool

log = logging.getLogger("coordinator.forwarding")


class ForwardedReply(Reply):
    """A reply relayed from a node: each piece is passed on at once (the
    node batches them already), and the status names the node."""

    def __init__(self):
        super().__init__(stream_interval=0)
        self.node = ""

    def status_fields(self) -> list[tuple[str, object]]:
        return super().status_fields() + ([("node", self.node)] if self.node else [])


class Remote:
    """A coordinator session's life on nodes (what NodeSessions binds)."""

    def __init__(self, session: Session):
        self.session = session
        self.binding: Binding | None = None
        self.messages: list[Message] = []  # the conversation so far: prompts and replies
        self.reply: ForwardedReply | None = None

    @property
    def node(self) -> NodeHandle | None:
        return self.binding.node if self.binding else None


class ForwardingSessions(SessionBackend):
    """The coordinator's sessions, each bound to a session on a node."""

    def __init__(self, pool: Pool, *, failover: bool = True, request_timeout: float = REQUEST_TIMEOUT):
        self.pool = pool
        self.node_sessions = NodeSessions(pool)
        self.failover = failover
        self.request_timeout = request_timeout
        self.remotes: dict[int, Remote] = {}
        self.nursery: trio.Nursery | None = None
        self.requests = 0
        self.failovers = 0
        self.figures = ReplyFigures()  # time to first token and tokens/s, as our clients see them

    @property
    def released(self) -> int:
        """Node sessions let go behind idle sessions of ours, for room on the node."""
        return self.node_sessions.released

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self.node_sessions.run()

    # -- sessions --------------------------------------------------------------

    def attach_session(self, session: Session) -> None:
        self.remotes[session.number] = Remote(session)

    def model_of(self, session: Session) -> str | None:
        """The session's model: the one it chose, else the default."""
        return session.model or self.pool.default_model

    async def choose_model(self, session: Session, model: str) -> None:
        """ctl `model`, before the first turn: a node session made ahead goes."""
        remote = self.remotes[session.number]
        if remote.messages or (remote.reply is not None):
            raise errors.MODEL_CHOSEN()
        session.model = model
        await self.node_sessions.unbind(remote, close=True)

    async def submit(self, session: Session, text: bytes) -> Reply:
        model = self.model_of(session)
        if not self.pool.healthy(model):
            raise errors.MODEL_DOWN(model=model) if len(self.pool.model_names()) > 1 else errors.NO_HEALTHY_NODE()
        remote = self.remotes[session.number]
        reply = ForwardedReply()
        remote.reply = reply
        self.requests += 1
        self.figures.add(reply)
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

    def conversation(self, session: Session) -> list[Message]:
        return self.remotes[session.number].messages

    def session_fields(self, session: Session) -> list[str]:
        remote = self.remotes.get(session.number)
        node = remote.node if remote else None
        return [f"node={node.id}"] if node else []

    async def give(self, session: Session, messages: list[Message]) -> None:
        """The node session behind goes: the next turn gives the conversation
        to whichever node takes it."""
        remote = self.remotes[session.number]
        await self.node_sessions.unbind(remote, close=True)
        remote.messages = messages

    async def reset(self, session: Session) -> None:
        remote = self.remotes.get(session.number)
        if remote is not None:
            remote.messages = []
            if remote.binding is not None:
                await self._remote_ctl(remote.binding, b"reset")

    async def close(self, session: Session) -> None:
        remote = self.remotes.pop(session.number, None)
        if remote is not None:
            await self.node_sessions.unbind(remote, close=True)

    async def _remote_ctl(self, binding: Binding, command: bytes) -> None:
        try:
            with trio.move_on_after(self.pool.health_timeout):
                await binding.ctl.fid.write(command, 0)
        except client.Error as e:
            log.info("%s on node %s: %s", command.decode(), binding.node.id, e)

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
                    if remote.messages:
                        return  # a new node must first be given the conversation: the turn does that
                    if not prompt and self.pool.strategy.name == "prefix-affinity":
                        return  # the node is chosen by the prompt: at its first write
                    model = self.model_of(session)
                    node = self.pool.choose(prompt=affinity_key(session, prompt), model=model)
                    with node.request() as c:
                        await self.node_sessions.bind(remote, c, node, model)
                b = remote.binding
                if b.data is None or b.ahead is None or len(prompt) > b.data.iounit:
                    prompt = b""  # the turn sends it
                with b.node.request():
                    await b.send_ahead(session.sampling.ctl_text(), prompt)
            except (NodeDown, NodeFull, client.Error) as e:
                log.info("session %d: nothing sent ahead: %s", session.number, e)  # the turn sees to it
            except Exception:  # a bug here must not fail the client's write
                log.exception("session %d: sending ahead", session.number)

    async def check_files(self, session: Session, sampling) -> None:
        """A grammar or schema is checked by the node (the session is bound to
        one now if it is not yet): the node's refusal is ours."""
        remote = self.remotes.get(session.number)
        if remote is None or remote.messages and remote.binding is None:
            return  # the turn that gives a node the conversation sends them
        try:
            if remote.binding is None:
                model = self.model_of(session)
                node = self.pool.choose(prompt=affinity_key(session, b""), model=model)
                with node.request() as c:
                    await self.node_sessions.bind(remote, c, node, model)
            b = remote.binding
            with b.node.request() as c:
                await self._write_files(c, b, sampling)
        except client.ServerError as e:
            raise StyxError(e.ename) from None
        except (NodeDown, NodeFull, client.Error) as e:
            log.info("session %d: no node checked its grammar: %s", session.number, e)  # its turn will

    @staticmethod
    async def _write_files(c: client.Client, b: Binding, sampling) -> None:
        """The session's text settings (system prompt, grammar, schema) that
        the node's session lacks, each to its file; what failed is unknown."""
        known = dict(b.files)
        try:
            for name, value in sampling.file_writes(known):
                await c.write_file(f"{b.number}/{name}", value)
        except BaseException:
            b.files = dict.fromkeys(known, None)  # written again, empty ones too, next time
            raise
        b.files = known

    @staticmethod
    def _first_words(remote: Remote, text: bytes) -> bytes:
        """The conversation's first message, else this turn's text."""
        return remote.messages[0].text.encode() if remote.messages else text

    async def forward(self, session: Session, remote: Remote, text: bytes, reply: ForwardedReply) -> None:
        """Run one turn on a node, failing over as the config says."""
        tried: set[NodeHandle] = set()
        full: NodeFull | None = None
        model = self.model_of(session)
        with trio.move_on_after(self.request_timeout) as timer:
            while not reply.ended:
                healthy = self.pool.healthy(model)
                try:
                    node = (remote.node if remote.node in healthy
                            else self.pool.choose(tried, affinity_key(session, self._first_words(remote, text)), model))
                except NodeDown as e:
                    reply.set_state(ReplyState.ERROR, str(full or e))  # every node full says so
                    break
                if remote.node is not None and remote.node is not node and remote.node not in tried:
                    self.failovers += 1  # its node went down before the turn began there: it moves
                try:
                    await self._turn_on(node, session, remote, text, reply)
                except NodeFull as e:  # at its cap, all busy: another node may have room
                    full = e
                    tried.add(node)
                except (NodeDown, client.ConnectionLost, OSError) as e:
                    log.warning("session %d: node %s failed: %s", session.number, node.id, e)
                    node.failed(str(e))
                    tried.add(node)
                    await self.node_sessions.unbind(remote, close=False)
                    if reply.text_complete:  # it failed after the end: only the figures are lost
                        reply.set_state(ReplyState.CANCELLED if reply.cancel_requested else ReplyState.DONE)
                        break
                    if not self.failover:
                        reply.set_state(ReplyState.ERROR, errors.NODE_FAILED.format(node=node.id, why="failed"))
                        break
                    self.failovers += 1
                except client.ServerError as e:
                    reply.set_state(ReplyState.ERROR, e.ename)
                    break
        if timer.cancelled_caught:
            reply.set_state(ReplyState.ERROR, str(errors.TIMED_OUT))
            self.cancel(session)
        if not reply.ended:
            reply.set_state(ReplyState.ERROR, str(errors.NO_NODE_ANSWERED))
        said = bytes(reply.text).decode(errors="replace")
        if reply.state == ReplyState.ERROR and not said:
            pass  # no node took the turn: the conversation is as it was (as on a node)
        elif text:
            remote.messages += [Message("user", text.decode()), Message("assistant", said)]
        elif remote.messages and remote.messages[-1].role == "assistant":
            remote.messages[-1].text += said  # it went on with the last message
        self.node_sessions.want_spares()  # now, not while the turn (which may have taken one) was starting

    async def _turn_on(self, node: NodeHandle, session: Session, remote: Remote, text: bytes,
                       reply: ForwardedReply) -> None:
        with node.request() as c:
            reply.node = node.id
            prompt = await self._bound_to(node, c, remote, text, reply)
            data = await self._send_turn(c, session, remote, prompt)
            if data is None:
                reply.set_state(ReplyState.CANCELLED)
                return
            await self._stream(data, reply)
            b = remote.binding
            if b is None:  # the session was closed while its turn streamed
                self.nursery.start_soon(data.clunk_quietly)
                reply.set_state(ReplyState.CANCELLED)
                return
            # The status now; the data file's clunk (and the next one's open) after.
            status_read = await b.status.fid.start_read(256, 0)
            self.nursery.start_soon(self._next_data, b, c, data)
            status = (await status_read.result()).data.decode()
        self._finish(reply, status)

    async def _bound_to(self, node: NodeHandle, c: client.Client, remote: Remote, text: bytes,
                        reply: ForwardedReply) -> bytes:
        """Bind remote to a session on node; what that session must be sent:
        the turn, or on a node new to it the conversation so far (and the
        reply so far, when we take over in the middle of one)."""
        b = remote.binding
        if b is not None and (b.ahead is None or not text.startswith(b.ahead)):
            # That session on the node holds a prompt for a turn that never came.
            await self.node_sessions.unbind(remote, close=True)
        if remote.node is node:
            return text
        await self.node_sessions.unbind(remote, close=True)
        b = await self.node_sessions.bind(remote, c, node, self.model_of(remote.session))
        messages = [Message(m.role, m.text) for m in remote.messages]
        if reply.text:  # taken over mid-reply: the node goes on with the assistant's message
            said = bytes(reply.text).decode(errors="replace")
            if text:
                messages += [Message("user", text.decode()), Message("assistant", said)]
            else:  # it was itself going on with the last message
                messages[-1].text += said
            text = b""
        if messages:
            # The settings first: they say how the node reads a conversation (chat or raw).
            await b.send_ahead(remote.session.sampling.ctl_text())
            await b.settle()
            await c.write_file(f"{b.number}/conversation", format_records(messages))
        return text

    async def _send_turn(self, c: client.Client, session: Session, remote: Remote,
                         prompt: bytes) -> client.Fid | None:
        """The settings and what was not sent ahead of the prompt, written to
        the binding's data file, which is returned (None: cancelled)."""
        b = remote.binding
        await self._write_files(c, b, session.sampling)
        if b.data is None:
            b.data = (await c.open(f"{b.number}/data", wire.ORDWR)).fid
        # The node takes a turn's settings when the turn is submitted, at the
        # first read: so what is left of settings and prompt goes at once.
        rest = prompt[len(b.ahead):]
        small = rest if len(rest) <= b.data.iounit else b""
        await b.send_ahead(session.sampling.ctl_text(), small)
        await b.settle()
        if remote.reply.cancel_requested:
            # Closed first: a data file clunked unread would submit the prompt.
            await self.node_sessions.unbind(remote, close=True)
            return None
        data, b.data, b.ahead = b.data, None, b""
        if rest and not small:
            try:
                await client.File(data).write(rest)
            except BaseException:
                await data.clunk_quietly()
                raise
        return data

    async def _stream(self, data: client.Fid, reply: ForwardedReply) -> None:
        """The node's reply, passed on piece by piece as it comes."""
        try:
            if reply.state == ReplyState.QUEUED:
                reply.set_state(ReplyState.GENERATING)
            async for piece in client.File(data).stream():
                reply.append(piece, 0)
        except BaseException:
            await data.clunk_quietly()
            raise
        reply.complete_text()

    @staticmethod
    def _finish(reply: ForwardedReply, status: str) -> None:
        """The reply ends as the node's status says the turn did."""
        state, fields = parse_status(status)
        reply.tokens_in = int(fields.get("tokens_in", 0))
        reply.tokens_out += int(fields.get("tokens_out", 0))
        reply.tokens_dropped = int(fields.get("tokens_dropped", 0))
        reply.tokens_cached = int(fields.get("tokens_cached", 0))
        reply.tokens_drafted += int(fields.get("tokens_drafted", 0))  # on every node the turn was on
        reply.tokens_accepted += int(fields.get("tokens_accepted", 0))
        if state == ReplyState.ERROR:
            reply.set_state(ReplyState.ERROR, fields.get("error", str(errors.GENERATION_FAILED)))
        else:
            ended = state == ReplyState.CANCELLED or reply.cancel_requested
            reply.set_state(ReplyState.CANCELLED if ended else ReplyState.DONE,
                            reason=fields.get("reason"))

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


def affinity_key(session: Session, first: bytes) -> bytes:
    """What a session's prompts begin with, as the node will see them: its
    system prompt, then its first words (for prefix-affinity)."""
    return session.sampling.system + b"\n" + first
