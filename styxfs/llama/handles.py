"""What an open of a file of /n/llama gives: the handles that answer its
reads, writes and clunk.  The file table (namespace.py) says which file
gives which; a handle finds the tree and, for a session's file, the session
on the entry it was opened from (`entry.tree`, `entry.session`)."""

from __future__ import annotations

import weakref

import trio

from styxfs.tree import Caller, Handle, read_slice

from . import errors
from .chat import Message, format_records, parse_records
from .reply import Reply
from .settings import constrain


async def read_reply(reply: Reply | None, offset: int, count: int) -> bytes:
    """Text of a reply from offset, waiting for it; none at all is empty."""
    if reply is None:
        return b""
    return await reply.read(offset, count)


class Snapshot(Handle):
    """A file whose text is computed at a read at offset 0 (and at the first
    read, unless `content` starts as b"")."""

    content: bytes | None = None

    async def text(self) -> str:
        raise NotImplementedError

    async def read(self, offset: int, count: int) -> bytes:
        if offset == 0 or self.content is None:
            self.content = (await self.text()).encode()
        return read_slice(self.content, offset, count)


# ---- the root's files -------------------------------------------------------------------


class RootText(Snapshot):
    def __init__(self, entry, caller: Caller):
        super().__init__(entry)
        self.tree, self.caller = entry.tree, caller


class RootCtl(RootText):
    async def text(self) -> str:
        return await self.tree.root_backend.ctl_text(self.tree)

    async def write(self, offset: int, data: bytes) -> int:
        await self.tree.ctl_write(self.caller, data)
        return len(data)


class RootModel(RootText):
    async def text(self) -> str:
        return await self.tree.root_backend.model_text()


class RootMetrics(RootText):
    async def text(self) -> str:
        return await self.tree.root_backend.metrics_text(self.tree)


class RootSessions(RootText):
    async def text(self) -> str:
        return self.tree.sessions_text(self.caller)


class InNewSession:
    """clone, data and new/NAME: an open makes a session and opens its file
    `name` (clone: the fid becomes N/ctl, as /net/tcp/clone).  A one-shot
    session (root data's) is private to that open.  Walking to the file has
    no side effects."""

    def __init__(self, name: str, oneshot: bool = False):
        self.name, self.oneshot = name, oneshot

    async def __call__(self, entry, caller: Caller) -> Handle:
        session = await entry.tree.new_session(caller, ephemeral=self.oneshot)
        return await entry.tree.session_file(session, self.name).open_for(caller)


class ConnReplyHandle(Handle):
    """The connection's latest reply as the first read finds it, once the
    prompts written on this connection have been submitted."""

    def __init__(self, entry, caller: Caller):
        super().__init__(entry)
        self.caller = caller
        self.reply: Reply | None = None
        self.resolved = False

    async def read(self, offset: int, count: int) -> bytes:
        if not self.resolved:
            await pending_prompts(self.caller).wait()
            self.reply, self.resolved = self.caller.conn.state.get("reply"), True
        return await read_reply(self.reply, offset, count)


class PendingPrompts:
    """The data files of one connection that hold a prompt not yet submitted.
    A read of the root reply waits for them: 9pfuse and v9fs send the clunk
    that submits `echo prompt > new/data` after close() has returned, so the
    `cat reply` that follows may reach us first."""

    def __init__(self):
        self.handles: set[Handle] = set()
        self.settled = trio.Event()
        self.settled.set()

    def add(self, handle: Handle) -> None:
        self.handles.add(handle)
        if self.settled.is_set():
            self.settled = trio.Event()

    def discard(self, handle: Handle) -> None:
        self.handles.discard(handle)
        if not self.handles:
            self.settled.set()

    async def wait(self) -> None:
        while self.handles:
            await self.settled.wait()


def pending_prompts(caller: Caller) -> PendingPrompts:
    return caller.conn.state.setdefault("pending", PendingPrompts())


# ---- a session's files ------------------------------------------------------------------


class SessionHandle(Handle):
    """An open file of session N (its open counted by the entry): counts the
    session's open files down again at clunk."""

    def __init__(self, entry, caller: Caller):
        super().__init__(entry)
        self.tree, self.session, self.caller = entry.tree, entry.session, caller

    async def clunk(self, aborted: bool) -> None:
        self.session.open_files -= 1
        self.session.touch()
        unused = aborted and self.session.reply is None  # its client vanished before a prompt
        if (self.session.ephemeral or unused) and not self.session.open_files and not self.session.generating:
            await self.tree.close_session(self.session)  # else the reaper will


class SessionText(SessionHandle, Snapshot):
    content = b""  # computed at a read at offset 0 only


class CtlHandle(SessionText):
    async def text(self) -> str:
        return f"{self.session.number}\n"

    async def write(self, offset: int, data: bytes) -> int:
        before = self.session.sampling.lines()
        await self.tree.session_ctl(self.session).run(self.caller, data)
        if self.session.sampling.lines() != before:
            await self.tree.session_backend.prepare(self.session)
        return len(data)


class ParamsHandle(SessionText):
    async def text(self) -> str:
        return self.session.sampling.lines()


class StatusHandle(SessionText):
    async def text(self) -> str:
        return self.session.status()

    async def read(self, offset: int, count: int) -> bytes:
        reply = self.session.reply
        if offset == 0 and reply is not None and reply.text_complete:
            await reply.wait()  # the text has all been read: tell how the turn ended
        return await super().read(offset, count)


class WholeWrite(SessionText):
    """Reads give a snapshot; writes (any number, as Inferno's 8 KB pieces)
    are gathered and given to take() whole at clunk."""

    def __init__(self, entry, caller: Caller):
        super().__init__(entry, caller)
        self.written = bytearray()

    async def take(self, data: bytes) -> None:
        raise NotImplementedError

    async def write(self, offset: int, data: bytes) -> int:
        if len(self.written) + len(data) > self.tree.max_prompt_bytes:
            raise errors.PROMPT_TOO_LONG(what=f"over {self.tree.max_prompt_bytes} bytes")
        self.written += data
        return len(data)

    async def clunk(self, aborted: bool) -> None:
        try:
            if self.written and not aborted and not self.session.closed:
                await self.take(bytes(self.written))
        finally:
            await super().clunk(aborted)


class SystemHandle(WholeWrite):
    """The system prompt, any number of lines (ctl's `system` takes one)."""

    async def text(self) -> str:
        return self.session.sampling.system.decode()

    async def take(self, data: bytes) -> None:
        try:
            data.decode()
        except UnicodeDecodeError as e:
            raise errors.PROMPT_NOT_UTF8(at=e.start) from None
        self.session.sampling.system = data
        await self.tree.session_backend.prepare(self.session)


class ConstraintHandle(WholeWrite):
    """N/grammar and N/schema: the text, written whole, takes effect at
    clunk, checked (an invalid one is the clunk's error, and the session
    keeps what it had).  Unlike N/system, nothing written after a truncation
    (OTRUNC, or a wstat of length 0) clears it."""

    verb = "grammar"
    opened: "weakref.WeakSet[ConstraintHandle]" = weakref.WeakSet()  # both files' open handles

    def __init__(self, entry, caller: Caller, truncating: bool = False):
        super().__init__(entry, caller)
        self.truncating = truncating
        ConstraintHandle.opened.add(self)

    async def text(self) -> str:
        return getattr(self.session.sampling, self.verb).decode(errors="replace")

    async def clunk(self, aborted: bool) -> None:
        ConstraintHandle.opened.discard(self)
        if self.truncating and not self.written and not aborted and not self.session.closed:
            try:
                await self.take(b"")
            finally:
                await SessionHandle.clunk(self, aborted)
            return
        await super().clunk(aborted)

    async def take(self, data: bytes) -> None:
        await set_constraint(self.tree, self.session, self.verb, data)

    @classmethod
    async def truncate(cls, tree, session) -> None:
        """A wstat of length 0.  With the file open (a Linux mount's `>`: open,
        then this, then the writes), what the open's clunk finds decides, so
        that a grammar refused there leaves the one before."""
        pending = [h for h in cls.opened if h.session is session and h.verb == cls.verb]
        for handle in pending:
            handle.truncating = True
        if not pending:
            await set_constraint(tree, session, cls.verb, b"")


class SchemaHandle(ConstraintHandle):
    verb = "schema"


async def set_constraint(tree, session, verb: str, data: bytes) -> None:
    """The session's grammar or schema (empty: that one cleared), once the
    backend has checked it (a coordinator: on the node)."""
    changed = session.sampling.copy()
    if data:
        constrain(changed, verb, data)
    else:
        setattr(changed, verb, b"")
    tree.session_backend.check_settings(changed)
    await tree.session_backend.check_files(session, changed)
    session.sampling = changed
    await tree.session_backend.prepare(session)


class ConversationHandle(WholeWrite):
    """The conversation so far, one record a message; writing one gives it
    to the session in place of its own."""

    async def text(self) -> str:
        session = self.session
        system = [Message("system", session.sampling.system.decode())] if session.sampling.system else []
        return format_records(system + self.tree.session_backend.conversation(session)).decode()

    async def take(self, data: bytes) -> None:
        messages = parse_records(data)
        if self.session.generating:
            raise errors.PROMPT_SUBMITTED()
        if messages and messages[0].role == "system":
            self.session.sampling.system = messages.pop(0).text.encode()
        await self.tree.session_backend.give(self.session, messages)


class ReplyHandle(SessionHandle):
    """The reply current at open, from its first byte, streaming."""

    def __init__(self, entry, caller: Caller):
        super().__init__(entry, caller)
        self.reply = self.session.reply

    async def read(self, offset: int, count: int) -> bytes:
        return await read_reply(self.reply, offset, count)


class DataHandle(SessionHandle):
    """Write a turn (any number of writes); it is submitted at the first read
    or at clunk; reads stream its reply.  A read flushed while it waits on
    the generation it submitted cancels that generation."""

    def __init__(self, entry, caller: Caller):
        super().__init__(entry, caller)
        self.prompt = bytearray()
        self.reply: Reply | None = None
        self.position = 0  # data is a stream: read offsets count the prompt too

    async def write(self, offset: int, data: bytes) -> int:
        if self.reply is not None:
            raise errors.PROMPT_SUBMITTED()
        if len(self.prompt) + len(data) > self.tree.max_prompt_bytes:
            raise errors.PROMPT_TOO_LONG(what=f"over {self.tree.max_prompt_bytes} bytes")
        self.prompt += data
        self.session.touch()
        if len(self.prompt) == len(data):
            pending_prompts(self.caller).add(self)
            await self.tree.session_backend.prepare(self.session, data)
        return len(data)

    async def _submit(self) -> None:
        prompt, self.prompt = bytes(self.prompt), bytearray()
        try:
            self.reply = await self.tree.submit(self.session, prompt, self.caller)
        finally:
            pending_prompts(self.caller).discard(self)

    async def read(self, offset: int, count: int) -> bytes:
        if self.reply is None:
            await self._submit()  # with no prompt: go on with the last assistant message, if any
        try:
            data = await read_reply(self.reply, self.position, count)
        except trio.Cancelled:
            if self.session.reply is self.reply:  # flushed while waiting on its own generation
                self.tree.session_backend.cancel(self.session)
            raise
        self.position += len(data)
        return data

    async def clunk(self, aborted: bool) -> None:
        try:
            if aborted:
                # The client is gone: nobody will read what it asked for.
                if self.reply is not None and self.session.reply is self.reply:
                    self.tree.session_backend.cancel(self.session)
            elif self.reply is None and self.prompt and not self.session.closed:
                await self._submit()
        finally:
            pending_prompts(self.caller).discard(self)
            await super().clunk(aborted)
