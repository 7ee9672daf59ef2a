"""The /n/llama namespace, the same on a node and on a coordinator:

    ctl data reply clone new/{ctl,data,reply,status} model metrics sessions
    tokenize tokenizespecial detokenize
    N/{ctl,params,data,reply,status,system,conversation,grammar,schema}

`LlamaTree` is the namespace: sessions, their files, ownership, the cap and
the idle reaper.  It is given two backends.  A `SessionBackend` answers the
sessions' prompts: on a node the engine in this process
(`backend.EngineSessions`), on a coordinator the forwarding to nodes.  A
`RootBackend` says what the root's ctl, model and metrics files hold and
what extra entries the root has (a coordinator's `nodes/`).

Its files are one table (as 9front webfs's dirtab): each row a file's name,
the low 8 bits of its qid path (qids.py has the layout), its mode, and the
handle an open of it gives (handles.py).  Walk, stat, directory reads and
open are answered from the table.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Callable

import trio

from styxfs.tree import TRUNCATE, Caller, Commands, Entry, Handle
from styxfs.wire import DMDIR, OTRUNC, Dir

from . import errors
from .chat import Message
from .modeldirs import ModelsDir, choose_model
from .handles import (ConnReplyHandle, ConstraintHandle, ConversationHandle, CtlHandle, DataHandle, InNewSession,
                      ParamsHandle, ReplyHandle, RootCtl, RootMetrics, RootModel, RootSessions, SchemaHandle,
                      StatusHandle, SystemHandle)
from .qids import qpath
from .reply import Reply
from .sessions import Session, SessionTable
from .tokens import TokenChannel
from .settings import JSON_OBJECT, MAX_PROMPT_BYTES, NODE, SESSION, Sampling

log = logging.getLogger("styxfs.llama.namespace")

UID = "llamafs"  # the owner of the root's files; a session's are its user's


@dataclass(frozen=True)
class File:
    """A row of the file table."""

    name: str
    q: int  # the low 8 bits of its qid path
    perm: int
    open: Callable | None = None  # a file's: (entry, caller) -> Handle, or an awaitable of one
    children: tuple[File, ...] = ()  # a directory's
    new: int = 0  # a session's file that new/ has too: its q as new/NAME


def everyone(perm: int) -> int:
    """The owner's permissions, given to all (new/NAME opens NAME of a session of one's own)."""
    return perm | perm >> 3 | perm >> 6


SESSION_FILES = (
    File("ctl", 0x11, 0o600, CtlHandle, new=0x09),
    File("params", 0x12, 0o400, ParamsHandle),
    File("data", 0x13, 0o600, DataHandle, new=0x0A),
    File("reply", 0x14, 0o400, ReplyHandle, new=0x0B),
    File("status", 0x15, 0o400, StatusHandle, new=0x0C),
    File("system", 0x16, 0o600, SystemHandle),
    File("conversation", 0x17, 0o600, ConversationHandle),
    File("grammar", 0x18, 0o600, ConstraintHandle),
    File("schema", 0x19, 0o600, SchemaHandle),
)
SESSION_DIR = File("N", 0x10, DMDIR | 0o700, children=SESSION_FILES)  # named by its number, owned by its user
NEW_FILES = tuple(File(f.name, f.new, everyone(f.perm), InNewSession(f.name)) for f in SESSION_FILES if f.new)
ROOT = File("/", 0x00, DMDIR | 0o555, children=(  # then a coordinator's nodes/, then the caller's sessions
    File("ctl", 0x01, 0o666, RootCtl),
    File("data", 0x02, 0o666, InNewSession("data", oneshot=True)),  # a private one-shot channel per open
    File("reply", 0x03, 0o444, ConnReplyHandle),
    File("clone", 0x04, 0o666, InNewSession("ctl")),
    File("new", 0x05, DMDIR | 0o555, children=NEW_FILES),
    File("model", 0x06, 0o444, RootModel),
    File("metrics", 0x07, 0o444, RootMetrics),
    File("sessions", 0x0D, 0o444, RootSessions),
    # private one-shot channels per open, as data: write text (or ids), read the answer (tokens.py)
    File("tokenize", 0x20, 0o666, TokenChannel),
    File("tokenizespecial", 0x21, 0o666, TokenChannel),
    File("detokenize", 0x22, 0o666, TokenChannel),
))
NODES = File("nodes", 0x08, DMDIR | 0o555)  # a coordinator's: coordinator/proxy.py makes it


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

    async def check_files(self, session: Session, sampling: Sampling) -> None:
        """A session's file settings (a grammar) are to change to these: a
        coordinator has its node check them, whose refusal is its own."""

    def session_fields(self, session: Session) -> list[str]:
        """key=value figures of the session beyond its reply's, for the root `sessions`."""
        return []

    def conversation(self, session: Session) -> list[Message]:
        """The conversation so far, the system prompt aside."""
        return []

    async def choose_model(self, session: Session, model: str) -> None:
        """The session's model (one of the root backend's), before its first turn."""
        session.model = model

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

    async def tokens(self, name: str, data: bytes) -> bytes:
        """What the root file `name` (tokens.FILES) answers to the text written."""
        raise errors.NOT_LOADED()

    async def extra_entries(self, caller: Caller) -> list[Entry]:
        return []

    def model_names(self) -> list[str]:
        """The models of models/, the default first."""
        return []

    async def model_status(self, tree: "LlamaTree", model: str) -> str:
        """models/NAME/status: modeldirs.status_line's."""
        return ""


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
        self.model_numbers: dict[str, int] = {}  # models/NAME's number in its qid paths, stable while the tree lives
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

        @commands.verb("json")
        def as_json(caller, args):  # replies are JSON objects (OpenAI's response_format json_object)
            self.set_setting(session, "schema", [JSON_OBJECT.decode()])

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

        @commands.verb("model", "NAME", 1)
        async def model(caller, args):
            await choose_model(self, session, args[0])

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

    async def ctl_write(self, caller: Caller, data: bytes) -> None:
        """The root ctl: `defaults` and the root backend's verbs, the owner's only."""
        self.check_owner(caller)
        commands = self.root_backend.ctl_commands(self)
        commands.verb("defaults", "KEY VALUE", 1, -1)(self.defaults_verb)
        await commands.run(caller, data)

    def session_file(self, session: Session, name: str) -> TableFile:
        return TableFile(self, next(row for row in SESSION_FILES if row.name == name), session)


# ---- the entries, made from the table ---------------------------------------------------------


def table_entry(tree: LlamaTree, row: File, session: Session | None = None) -> Entry:
    return (TableDir if row.perm & DMDIR else TableFile)(tree, row, session)


class TableEntry(Entry):
    """A file or directory of the table: of the root (session None) or of a session."""

    def __init__(self, tree: LlamaTree, row: File, session: Session | None = None):
        number, uid = (session.number, session.owner) if session else (0, UID)
        super().__init__(row.name, qpath(number, row.q), row.perm, uid)
        self.tree, self.row, self.session = tree, row, session


class TableFile(TableEntry):
    async def open(self, mode: int, caller: Caller) -> Handle:
        handle = await self.open_for(caller)
        if mode & OTRUNC and hasattr(handle, "truncating"):
            handle.truncating = True  # a file whose truncation means something (N/grammar)
        return handle

    async def wstat(self, new: Dir, caller: Caller) -> None:
        await super().wstat(new, caller)
        truncate = getattr(self.row.open, "truncate", None)
        if new == TRUNCATE and truncate is not None and self.session is not None:
            await truncate(self.tree, self.tree.table.get(self.session.number, caller.uname))

    async def open_for(self, caller: Caller) -> Handle:
        """A session's file checks the owner and counts its open files."""
        if self.session is not None:
            session = self.tree.table.get(self.session.number, caller.uname)
            session.open_files += 1
            session.touch()
        handle = self.row.open(self, caller)
        return await handle if inspect.isawaitable(handle) else handle


class TableDir(TableEntry):
    async def children(self, caller: Caller) -> list[Entry]:
        return [table_entry(self.tree, row, self.session) for row in self.row.children]


class RootDir(TableDir):
    def __init__(self, tree: LlamaTree):
        super().__init__(tree, ROOT)

    async def children(self, caller: Caller) -> list[Entry]:
        sessions = [SessionDir(self.tree, s) for s in self.tree.table.owned_by(caller.uname)]
        return (await super().children(caller) + [ModelsDir(self.tree, NEW_FILES)]
                + await self.tree.root_backend.extra_entries(caller) + sessions)

    async def walk(self, name: str, caller: Caller) -> Entry:
        if name.isdigit():  # Unicode digits too: "²" and "٣" are no session's name
            if not (name.isascii() and name == str(int(name))):
                raise errors.NO_SUCH_SESSION()  # nor is "0001" session 1's
            return SessionDir(self.tree, self.tree.table.get(int(name), caller.uname))
        return await super().walk(name, caller)


class SessionDir(TableDir):
    def __init__(self, tree: LlamaTree, session: Session):
        super().__init__(tree, SESSION_DIR, session)
        self.name = str(session.number)

    async def remove(self, caller: Caller) -> None:
        self.tree.table.get(self.session.number, caller.uname)
        await self.tree.close_session(self.session)
