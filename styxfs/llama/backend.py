"""The node's two backends for the namespace: the engine in this process.

`EngineSessions` answers the sessions' prompts with the engine; `NodeRoot`
says what the root's ctl, model and metrics hold and takes `load` and
`unload`.
"""

from __future__ import annotations

import collections
import os

from styxfs import errors
from styxfs.errors import StyxError
from styxfs.tree import Commands, parse_number

from .engine import Conversation, Engine
from .metrics import node_metrics
from .model import EngineError, ModelSettings
from .namespace import LlamaTree, RootBackend, SessionBackend
from .reply import Reply
from .sessions import Session
from .settings import NODE


class EngineSessions(SessionBackend):
    def __init__(self, engine: Engine):
        self.engine = engine
        self.conversations: dict[int, Conversation] = {}
        self.recent: collections.deque[Reply] = collections.deque(maxlen=256)  # for metrics

    def attach_session(self, session: Session) -> None:
        self.conversations[session.number] = Conversation()

    async def submit(self, session: Session, text: bytes) -> Reply:
        conversation = self.conversations[session.number]
        try:
            reply = self.engine.submit(conversation, text, session.sampling)
        except EngineError as e:
            raise StyxError(str(e)) from None
        self.recent.append(reply)
        return reply

    def cancel(self, session: Session) -> None:
        if session.reply is not None and not session.reply.ended:
            self.engine.cancel(session.reply)

    async def reset(self, session: Session) -> None:
        old = self.conversations.get(session.number)
        if old is not None:
            self.engine.forget(old)
        self.conversations[session.number] = Conversation()

    async def close(self, session: Session) -> None:
        old = self.conversations.pop(session.number, None)
        if old is not None:
            self.engine.forget(old)

    def start_over(self) -> None:
        """A new model, a new vocabulary: every conversation starts again."""
        for number in list(self.conversations):
            self.conversations[number] = Conversation()


LOAD_OPTIONS = ("ctx", "gpulayers", "threads", "batch")
LOAD_USAGE = "PATH" + "".join(f" [{key} N]" for key in LOAD_OPTIONS)


class NodeRoot(RootBackend):
    def __init__(self, engine: Engine, sessions: EngineSessions, models_dir: str | None, load_progress=None):
        self.engine = engine
        self.sessions = sessions
        self.settings: ModelSettings | None = None
        self.models_dir = os.path.realpath(models_dir) if models_dir else None
        self.state = "unloaded"
        self.load_error = ""
        self.load_progress = load_progress

    async def load(self, settings: ModelSettings) -> None:
        previous = self.state
        self.state = "loading"
        try:
            await self.engine.load(settings, self.load_progress)
        except EngineError as e:
            self.state = previous
            self.load_error = str(e)
            raise StyxError(str(e)) from None
        self.settings = settings
        self.state, self.load_error = "loaded", ""
        self.sessions.start_over()

    def resolve_model(self, path: str) -> str:
        """A load path, refused unless it resolves inside the models directory."""
        if self.models_dir is None:
            raise errors.LOAD_REFUSED(why="no models directory (serve --models-dir)")
        full = os.path.realpath(os.path.join(self.models_dir, path))
        if os.path.commonpath([full, self.models_dir]) != self.models_dir:
            raise errors.LOAD_REFUSED(why=f"{path} is outside the models directory")
        return full

    def ctl_commands(self, tree: LlamaTree) -> Commands:
        commands = Commands()

        @commands.verb("load", LOAD_USAGE, 1, 1 + 2 * len(LOAD_OPTIONS))
        async def load(caller, args):
            path, options = args[0], args[1:]
            if len(options) % 2:
                raise errors.BAD_CTL(why=f"usage: load {LOAD_USAGE}")
            base = self.settings or ModelSettings(path="")
            values = {key: getattr(base, key) for key in LOAD_OPTIONS}
            for key, value in zip(options[::2], options[1::2]):
                if key not in values:
                    raise errors.BAD_CTL(why=f"load: unknown option {key!r}")
                limit = NODE[key]
                values[key] = parse_number("load " + key, value, int, limit.low, limit.high)
            await self.load(ModelSettings(path=self.resolve_model(path), **values))

        @commands.verb("unload")
        async def unload(caller, args):
            await self.engine.unload()
            self.state = "unloaded"

        return commands

    async def ctl_text(self, tree: LlamaTree) -> str:
        s = self.settings
        info = self.engine.info
        lines = [
            ("role", "node"),
            ("model", info.path if info else "none"),
            ("state", self.state),
            ("ctx", info.context if info else (s.ctx if s else 0)),
            ("gpulayers", s.gpulayers if s else 0),
            ("threads", s.resolved_threads() if s else 0),
            ("batch", s.batch if s else 0),
            ("slots", self.engine.slots),
            ("sessions", len(tree.table.sessions)),
            ("maxsessions", tree.table.max_sessions),
            ("sessiontimeout", tree.table.idle_timeout),
        ]
        if self.load_error:
            lines.append(("error", self.load_error))
        text = "".join(f"{k} {v}\n" for k, v in lines)
        return text + "".join(f"defaults {line}\n" for line in tree.defaults.lines().splitlines())

    async def model_text(self) -> str:
        info = self.engine.info
        if info is None:
            return "state unloaded\n" + (f"error {self.load_error}\n" if self.load_error else "")
        return "".join(f"{k} {v}\n" for k, v in [
            ("path", info.path), ("description", info.description), ("architecture", info.architecture),
            ("parameters", info.parameters), ("size", info.size), ("context", info.context),
            ("traincontext", info.train_context), ("quantisation", info.quantisation),
            ("vocabulary", info.vocabulary),
        ])

    async def metrics_text(self, tree: LlamaTree) -> str:
        return node_metrics(self.engine, self.sessions.recent, tree)
