"""The /n/llama namespace, the same on a node and on a coordinator:

    ctl data reply clone new/{ctl,data,reply,status} model metrics sessions
    N/{ctl,params,data,reply,status,system,conversation}

`LlamaTree` is the namespace: sessions, their files, ownership, the cap and
the idle reaper.  It is given two backends.  A `SessionBackend` answers the
sessions' prompts: on a node the engine in this process
(`backend.EngineSessions`), on a coordinator the forwarding to nodes.  A
`RootBackend` says what the root's ctl, model and metrics files hold and
what extra entries the root has (a coordinator's `nodes/`).

Qid paths are `(session << 8) | file`, session 0 for the root's files.
"""

from __future__ import annotations

import logging
import time

import trio

from styxfs import errors
from styxfs.errors import StyxError
from styxfs.tree import Caller, Commands, Directory, Entry, Handle, TextFile, read_slice

from .chat import Message, format_records, parse_records
from .reply import Reply
from .sessions import Session, SessionTable
from .settings import MAX_PROMPT_BYTES, NODE, SESSION, Sampling

log = logging.getLogger("styxfs.llama.namespace")

# The low 8 bits of a qid path: the root's files (session 0), then a session's.
# Every file and directory has a qid path of its own.
(QROOT, QCTL, QDATA, QREPLY, QCLONE, QNEW, QMODEL, QMETRICS, QNODES,
 QNEWCTL, QNEWDATA, QNEWREPLY, QNEWSTATUS, QSESSIONS) = range(14)
QSESSION, QSCTL, QSPARAMS, QSDATA, QSREPLY, QSSTATUS, QSSYSTEM, QSCONVERSATION = range(0x10, 0x18)
SESSION_FILES = {"ctl": QSCTL, "params": QSPARAMS, "data": QSDATA, "reply": QSREPLY, "status": QSSTATUS,
                 "system": QSSYSTEM, "conversation": QSCONVERSATION}
NEW_FILES = {"ctl": QNEWCTL, "data": QNEWDATA, "reply": QNEWREPLY, "status": QNEWSTATUS}


def qpath(session: int, file: int) -> int:
    return (session << 8) | file


class SessionBackend:
    """What answers the sessions' prompts.  Methods may raise StyxError."""

    def attach_session(self, session: Session) -> None:
        """A new session: make the backend's state for it."""

    async def prepare(self, session: Session, prompt: bytes = b"") -> None:
        """Between turns, the session's settings changed, or (with `prompt`) a
        turn's first write came: a coordinator sends them on to the node now,
        so that the read which submits the turn finds them there."""

    async def submit(self, session: Session, text: bytes) -> Reply:
        raise NotImplementedError

    def cancel(self, session: Session) -> None:
        if session.reply is not None and not session.reply.ended:
            session.reply.cancel_requested = True

    def check_settings(self, sampling: Sampling) -> None:
        """Refuse settings this backend cannot honour (chat without a template)."""

    def session_fields(self, session: Session) -> list[str]:
        """key=value figures of the session beyond its reply's, for the root `sessions`."""
        return []

    def conversation(self, session: Session) -> list[Message]:
        """The conversation so far, the system prompt aside."""
        return []

    async def give(self, session: Session, messages: list[Message]) -> None:
        """Take these messages (no system prompt among them) as the session's
        conversation, in place of its own; its next turn goes on from them."""
        raise errors.NO_CREATE()

    async def reset(self, session: Session) -> None:
        """Forget the conversation."""

    async def close(self, session: Session) -> None:
        await self.reset(session)

    async def run(self) -> None:
        """Background work for as long as the tree serves."""
        await trio.sleep_forever()


class RootBackend:
    """What the root's ctl, model and metrics say, the ctl verbs beyond
    `defaults`, and the root's extra entries."""

    async def ctl_text(self, tree: "LlamaTree") -> str:
        return ""

    def ctl_commands(self, tree: "LlamaTree") -> Commands:
        return Commands()

    async def model_text(self) -> str:
        return ""

    async def metrics_text(self, tree: "LlamaTree") -> str:
        return ""

    async def extra_entries(self, caller: Caller) -> list[Entry]:
        return []


class LlamaTree:
    def __init__(self, backend: SessionBackend, root: RootBackend, *,
                 max_sessions: int = NODE["maxsessions"].default,
                 session_timeout: float = NODE["sessiontimeout"].default,
                 max_prompt_bytes: int = MAX_PROMPT_BYTES, defaults: Sampling | None = None,
                 owner: str = "*"):
        self.session_backend = backend
        self.root_backend = root
        self.owner = owner  # who may write the root ctl and see nodes/; "*": anyone
        self.table = SessionTable(max_sessions, session_timeout)
        self.defaults = defaults or Sampling()
        self.max_prompt_bytes = max_prompt_bytes
        self.root = RootDir(self)
        self.server = None  # the 9P server serving this tree, for its figures in metrics

    async def attach(self, caller: Caller) -> Entry:
        return self.root

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The idle reaper and the backend's own work."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.session_backend.run)
            task_status.started()
            while True:
                await trio.sleep(min(1.0, self.table.idle_timeout / 4))
                for session in self.table.expired():
                    await self.close_session(session)

    # -- sessions ---------------------------------------------------------------

    async def new_session(self, caller: Caller, ephemeral: bool = False) -> Session:
        """A new session; at the cap, an idle one is reclaimed to make room
        (sessions.SessionTable.reclaimable says which), and only when every
        session is busy is the open refused."""
        while self.table.full and (victim := self.table.reclaimable(caller.uname)) is not None:
            await self.close_session(victim)
            self.table.reclaimed += 1
        number = self.table.allocate()
        session = self.table.add(Session(number, caller.uname, self.defaults, ephemeral))
        self.session_backend.attach_session(session)
        return session

    async def close_session(self, session: Session) -> None:
        if session.closed:
            return
        self.table.remove(session)
        self.session_backend.cancel(session)
        await self.session_backend.close(session)

    async def submit(self, session: Session, prompt: bytes, caller: Caller) -> Reply:
        if len(prompt) > self.max_prompt_bytes:
            raise errors.PROMPT_TOO_LONG(what=f"{len(prompt)} bytes > cap {self.max_prompt_bytes}")
        try:
            prompt.decode("utf-8")
        except UnicodeDecodeError as e:
            raise errors.PROMPT_NOT_UTF8(at=e.start) from None
        if session.generating:
            self.session_backend.cancel(session)  # a new turn replaces a running one
            with trio.move_on_after(5):
                await session.reply.wait()
        reply = await self.session_backend.submit(session, prompt)
        session.reply = reply
        session.touch()
        caller.conn.state["reply"] = reply  # the root reply file: latest on this connection
        return reply

    def session_ctl(self, session: Session) -> Commands:
        commands = Commands()
        for setting in SESSION.values():
            clears = setting.kind is tuple or setting.raw  # a bare verb clears it
            commands.verb(setting.name, setting.usage, 0 if clears else 1, -1 if setting.kind is tuple else 1,
                          raw=setting.raw)(
                lambda caller, args, verb=setting.name: self.set_setting(session, verb, args))

        @commands.verb("reset")
        async def reset(caller, args):
            self.session_backend.cancel(session)
            await self.session_backend.reset(session)

        @commands.verb("cancel")
        def cancel(caller, args):
            self.session_backend.cancel(session)

        @commands.verb("close")
        async def close(caller, args):
            await self.close_session(session)

        return commands

    def set_setting(self, session: Session, verb: str, args: list[str]) -> None:
        session.sampling = self._checked(session.sampling, verb, args)

    def _checked(self, sampling: Sampling, verb: str, args: list[str]) -> Sampling:
        """The settings with one more verb applied, if the backend takes them;
        a refusal leaves them as they were."""
        changed = sampling.copy()
        changed.set(verb, args)
        self.session_backend.check_settings(changed)
        return changed

    def is_owner(self, caller: Caller) -> bool:
        return self.owner == "*" or caller.uname == self.owner

    def check_owner(self, caller: Caller) -> None:
        if not self.is_owner(caller):
            raise errors.PERM()

    def sessions_text(self, caller: Caller) -> str:
        """The root `sessions`: a line a session, `N owner` and its status
        (the state, then key=value figures, idle=SECONDS since it was last
        used, 0 while it is in use), never its text.  The owner sees every
        session, others their own."""
        shown = [s for s in self.table.sessions.values() if self.is_owner(caller) or s.owner == caller.uname]
        now = time.monotonic()
        lines = []
        for s in sorted(shown, key=lambda s: s.number):
            idle = now - s.last_active if s.idle else 0.0  # busy: not idle at all
            fields = [s.status().strip(), *self.session_backend.session_fields(s), f"idle={idle:.1f}"]
            lines.append(f"{s.number} {s.owner} {' '.join(fields)}\n")
        return "".join(lines)

    def defaults_verb(self, caller: Caller, args: list[str]) -> None:
        self.defaults = self._checked(self.defaults, args[0], args[1:])


# ---- the root -----------------------------------------------------------------------


class RootDir(Directory):
    def __init__(self, tree: LlamaTree):
        super().__init__("/", qpath(0, QROOT), perm=0o555)
        self.tree = tree
        backend = tree.root_backend
        self.ctl = TextFile("ctl", qpath(0, QCTL), read=lambda c: backend.ctl_text(tree),
                            write=self._ctl_write, perm=0o666)
        self.model = TextFile("model", qpath(0, QMODEL), read=lambda c: backend.model_text())
        self.metrics = TextFile("metrics", qpath(0, QMETRICS), read=lambda c: backend.metrics_text(tree))
        sessions = TextFile("sessions", qpath(0, QSESSIONS), read=tree.sessions_text)
        self.static = [self.ctl, RootData(tree), RootReply(), CloneFile(tree), NewDir(tree), self.model, self.metrics,
                       sessions]

    async def _ctl_write(self, caller: Caller, data: bytes) -> None:
        self.tree.check_owner(caller)
        commands = self.tree.root_backend.ctl_commands(self.tree)
        commands.verb("defaults", "KEY VALUE", 1, -1)(self.tree.defaults_verb)
        await commands.run(caller, data)

    async def children(self, caller: Caller) -> list[Entry]:
        sessions = [SessionDir(self.tree, s) for s in self.tree.table.owned_by(caller.uname)]
        return self.static + await self.tree.root_backend.extra_entries(caller) + sessions

    async def walk(self, name: str, caller: Caller) -> Entry:
        if name.isdigit():  # Unicode digits too: "²" and "٣" are no session's name
            if not (name.isascii() and name == str(int(name))):
                raise errors.NO_SUCH_SESSION()  # nor is "0001" session 1's
            return SessionDir(self.tree, self.tree.table.get(int(name), caller.uname))
        return await super().walk(name, caller)


class SessionDir(Directory):
    def __init__(self, tree: LlamaTree, session: Session):
        super().__init__(str(session.number), qpath(session.number, QSESSION), perm=0o700, uid=session.owner)
        self.tree, self.session = tree, session

    async def children(self, caller: Caller) -> list[Entry]:
        return [session_file(self.tree, self.session, name) for name in SESSION_FILES]

    async def remove(self, caller: Caller) -> None:
        self.tree.table.get(self.session.number, caller.uname)
        await self.tree.close_session(self.session)


def session_file(tree: LlamaTree, session: Session, name: str) -> Entry:
    cls = {"ctl": SessionCtl, "params": SessionParams, "data": SessionData, "reply": SessionReply,
           "status": SessionStatus, "system": SessionSystem, "conversation": SessionConversation}[name]
    return cls(tree, session)


class SessionEntry(Entry):
    """A file of session N: checks the owner at open, counts open files."""

    name_ = ""
    file = 0
    perm_ = 0o400

    def __init__(self, tree: LlamaTree, session: Session):
        super().__init__(self.name_, qpath(session.number, self.file), self.perm_, session.owner)
        self.tree, self.session = tree, session

    async def open(self, mode: int, caller: Caller) -> Handle:
        session = self.tree.table.get(self.session.number, caller.uname)
        session.open_files += 1
        session.touch()
        return self.make_handle(mode, caller)

    def make_handle(self, mode: int, caller: Caller) -> Handle:
        raise NotImplementedError


class SessionHandle(Handle):
    """Counts the session's open files down again at clunk."""

    def __init__(self, entry: SessionEntry, caller: Caller):
        super().__init__(entry)
        self.session, self.caller = entry.session, caller

    async def clunk(self, aborted: bool) -> None:
        self.session.open_files -= 1
        self.session.touch()
        unused = aborted and self.session.reply is None  # its client vanished before a prompt
        if (self.session.ephemeral or unused) and not self.session.open_files and not self.session.generating:
            await self.entry.tree.close_session(self.session)  # else the reaper will


class SnapshotHandle(SessionHandle):
    """A file whose text is computed at the first read at offset 0."""

    def __init__(self, entry, caller, text):
        super().__init__(entry, caller)
        self.text, self.content = text, b""

    async def read(self, offset: int, count: int) -> bytes:
        if offset == 0:
            self.content = self.text().encode()
        return read_slice(self.content, offset, count)


class SessionCtl(SessionEntry):
    name_, file, perm_ = "ctl", QSCTL, 0o600

    def make_handle(self, mode, caller):
        return CtlHandle(self, caller)


class CtlHandle(SnapshotHandle):
    def __init__(self, entry, caller):
        super().__init__(entry, caller, lambda: f"{entry.session.number}\n")

    async def write(self, offset: int, data: bytes) -> int:
        before = self.session.sampling.lines()
        await self.entry.tree.session_ctl(self.session).run(self.caller, data)
        if self.session.sampling.lines() != before:
            await self.entry.tree.session_backend.prepare(self.session)
        return len(data)


class WholeWriteHandle(SnapshotHandle):
    """Reads give a snapshot; writes (any number, as Inferno's 8 KB pieces)
    are gathered and taken whole at clunk."""

    def __init__(self, entry, caller, text, take):
        super().__init__(entry, caller, text)
        self.take, self.written = take, bytearray()

    async def write(self, offset: int, data: bytes) -> int:
        if len(self.written) + len(data) > self.entry.tree.max_prompt_bytes:
            raise errors.PROMPT_TOO_LONG(what=f"over {self.entry.tree.max_prompt_bytes} bytes")
        self.written += data
        return len(data)

    async def clunk(self, aborted: bool) -> None:
        try:
            if self.written and not aborted and not self.session.closed:
                await self.take(bytes(self.written))
        finally:
            await super().clunk(aborted)


class SessionSystem(SessionEntry):
    """The system prompt, any number of lines (ctl's `system` takes one)."""

    name_, file, perm_ = "system", QSSYSTEM, 0o600

    def make_handle(self, mode, caller):
        session, tree = self.session, self.tree

        async def take(data: bytes) -> None:
            try:
                data.decode()
            except UnicodeDecodeError as e:
                raise errors.PROMPT_NOT_UTF8(at=e.start) from None
            session.sampling.system = data
            await tree.session_backend.prepare(session)

        return WholeWriteHandle(self, caller, lambda: session.sampling.system.decode(), take)


class SessionConversation(SessionEntry):
    """The conversation so far, one record a message; writing one gives it
    to the session in place of its own."""

    name_, file, perm_ = "conversation", QSCONVERSATION, 0o600

    def make_handle(self, mode, caller):
        session, backend = self.session, self.tree.session_backend

        def text() -> str:
            system = [Message("system", session.sampling.system.decode())] if session.sampling.system else []
            return format_records(system + backend.conversation(session)).decode()

        async def take(data: bytes) -> None:
            messages = parse_records(data)
            if session.generating:
                raise errors.PROMPT_SUBMITTED()
            if messages and messages[0].role == "system":
                session.sampling.system = messages.pop(0).text.encode()
            await backend.give(session, messages)

        return WholeWriteHandle(self, caller, text, take)


class SessionParams(SessionEntry):
    name_, file, perm_ = "params", QSPARAMS, 0o400

    def make_handle(self, mode, caller):
        return SnapshotHandle(self, caller, self.session.sampling.lines)


class SessionStatus(SessionEntry):
    name_, file, perm_ = "status", QSSTATUS, 0o400

    def make_handle(self, mode, caller):
        return StatusHandle(self, caller, self.session.status)


class StatusHandle(SnapshotHandle):
    async def read(self, offset: int, count: int) -> bytes:
        reply = self.session.reply
        if offset == 0 and reply is not None and reply.text_complete:
            await reply.wait()  # the text has all been read: tell how the turn ended
        return await super().read(offset, count)


class SessionReply(SessionEntry):
    name_, file, perm_ = "reply", QSREPLY, 0o400

    def make_handle(self, mode, caller):
        return ReplyHandle(self, caller, self.session.reply)


async def read_reply(reply: Reply | None, offset: int, count: int) -> bytes:
    """Text of a reply from offset, waiting for it; none at all is empty."""
    if reply is None:
        return b""
    return await reply.read(offset, count)


class ReplyHandle(SessionHandle):
    """The reply current at open, from its first byte, streaming."""

    def __init__(self, entry, caller, reply: Reply | None):
        super().__init__(entry, caller)
        self.reply = reply

    async def read(self, offset: int, count: int) -> bytes:
        return await read_reply(self.reply, offset, count)


class SessionData(SessionEntry):
    name_, file, perm_ = "data", QSDATA, 0o600

    def make_handle(self, mode, caller):
        return DataHandle(self, caller)


class DataHandle(SessionHandle):
    """Write a turn (any number of writes); it is submitted at the first read
    or at clunk; reads stream its reply.  A read flushed while it waits on
    the generation it submitted cancels that generation."""

    def __init__(self, entry, caller):
        super().__init__(entry, caller)
        self.prompt = bytearray()
        self.reply: Reply | None = None
        self.position = 0  # data is a stream: read offsets count the prompt too

    async def write(self, offset: int, data: bytes) -> int:
        if self.reply is not None:
            raise errors.PROMPT_SUBMITTED()
        if len(self.prompt) + len(data) > self.entry.tree.max_prompt_bytes:
            raise errors.PROMPT_TOO_LONG(what=f"over {self.entry.tree.max_prompt_bytes} bytes")
        self.prompt += data
        self.session.touch()
        if len(self.prompt) == len(data):
            pending_prompts(self.caller).add(self)
            await self.entry.tree.session_backend.prepare(self.session, data)
        return len(data)

    async def _submit(self) -> None:
        prompt, self.prompt = bytes(self.prompt), bytearray()
        try:
            self.reply = await self.entry.tree.submit(self.session, prompt, self.caller)
        finally:
            pending_prompts(self.caller).discard(self)

    async def read(self, offset: int, count: int) -> bytes:
        if self.reply is None:
            await self._submit()  # with no prompt: go on with the last assistant message, if any
        try:
            data = await read_reply(self.reply, self.position, count)
        except trio.Cancelled:
            if self.session.reply is self.reply:  # flushed while waiting on its own generation
                self.entry.tree.session_backend.cancel(self.session)
            raise
        self.position += len(data)
        return data

    async def clunk(self, aborted: bool) -> None:
        try:
            if aborted:
                # The client is gone: nobody will read what it asked for.
                if self.reply is not None and self.session.reply is self.reply:
                    self.entry.tree.session_backend.cancel(self.session)
            elif self.reply is None and self.prompt and not self.session.closed:
                await self._submit()
        finally:
            pending_prompts(self.caller).discard(self)
            await super().clunk(aborted)


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


# ---- root files -----------------------------------------------------------------------


class RootData(Entry):
    """A private one-shot channel per open, on a session of its own."""

    def __init__(self, tree: LlamaTree):
        super().__init__("data", qpath(0, QDATA), 0o666)
        self.tree = tree

    async def open(self, mode: int, caller: Caller) -> Handle:
        session = await self.tree.new_session(caller, ephemeral=True)
        entry = SessionData(self.tree, session)
        return await entry.open(mode, caller)


class RootReply(Entry):
    def __init__(self):
        super().__init__("reply", qpath(0, QREPLY), 0o444)

    async def open(self, mode: int, caller: Caller) -> Handle:
        return ConnReplyHandle(self, caller)


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


class CloneFile(Entry):
    """Opening allocates session N; the fid becomes N/ctl (as /net/tcp/clone)."""

    def __init__(self, tree: LlamaTree):
        super().__init__("clone", qpath(0, QCLONE), 0o666)
        self.tree = tree

    async def open(self, mode: int, caller: Caller) -> Handle:
        session = await self.tree.new_session(caller)
        return await SessionCtl(self.tree, session).open(mode, caller)


class NewFile(Entry):
    """new/ctl, new/data, new/reply, new/status: opening one allocates a
    session and opens that file of it.  Walking here has no side effects."""

    def __init__(self, tree: LlamaTree, name: str):
        perm = 0o666 if name in ("ctl", "data") else 0o444
        super().__init__(name, qpath(0, NEW_FILES[name]), perm)
        self.tree = tree

    async def open(self, mode: int, caller: Caller) -> Handle:
        session = await self.tree.new_session(caller)
        entry = session_file(self.tree, session, self.name)
        try:
            entry.check_open(mode)
        except StyxError:
            await self.tree.close_session(session)
            raise
        return await entry.open(mode, caller)


class NewDir(Directory):
    def __init__(self, tree: LlamaTree):
        super().__init__("new", qpath(0, QNEW), [NewFile(tree, name) for name in NEW_FILES])
