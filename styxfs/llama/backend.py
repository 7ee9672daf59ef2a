"""The node's two backends for the namespace: the engine in this process.

`EngineSessions` answers the sessions' prompts with the engine; `NodeRoot`
says what the root's ctl, model and metrics hold and takes `load` and
`unload`.
"""

from __future__ import annotations

import os

import trio

import styxfs
from styxfs.errors import StyxError
from styxfs.tree import Commands, parse_number

from . import errors
from .chat import Message, compiled
from .engine import Conversation, Engine
from .metrics import ReplyFigures, node_metrics
from .model import EngineError, ModelSettings
from .modeldirs import status_line
from .namespace import LlamaTree, RootBackend, SessionBackend
from .reply import Reply
from .sessions import Session
from .tokens import engine_answer
from .settings import NODE, Sampling, gbnf_of


class Dialogue:
    """What the node keeps of a session: the engine's conversation (tokens,
    KV cache) and its messages, as the conversation file shows them."""

    def __init__(self, owner: str):
        self.conversation = Conversation(group=owner)  # shares cached prefixes with its owner's others
        self.messages: list[Message] = []
        self.reply: Reply | None = None  # the latest turn's, whose text is the next assistant message
        self.dropped = 0  # tokens left out, all turns together
        self.keep = 0  # raw form: the first prompt's tokens, kept when older ones are dropped
        self.continuing = False  # the latest turn goes on with the last assistant message

    def settle(self) -> None:
        """The latest reply, once it has ended, becomes an assistant message
        (or the rest of one it continued)."""
        if self.reply is not None and self.reply.ended:
            text = bytes(self.reply.text).decode(errors="replace")
            if self.continuing:
                self.messages[-1].text += text
            else:
                self.messages.append(Message("assistant", text))
            self.reply, self.continuing = None, False


class EngineSessions(SessionBackend):
    """Sessions answered by the engine in this process, in chat form (the
    model's template over the messages) or raw (the text as it is)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialogues: dict[int, Dialogue] = {}
        self.figures = ReplyFigures()  # for metrics
        self.grammars_ok: dict[str, None] = {}  # grammars that parsed lately: a ctl write checks again

    def attach_session(self, session: Session) -> None:
        self.dialogues[session.number] = Dialogue(session.owner)

    def chat(self, sampling: Sampling) -> bool:
        """Whether a session with these settings is a chat."""
        info = self.engine.info
        has_template = bool(info and info.chat_template)
        return sampling.mode == "chat" or (sampling.mode == "auto" and has_template)

    def check_settings(self, sampling: Sampling) -> None:
        info = self.engine.info
        if sampling.mode == "chat" and info is not None and not info.chat_template:
            raise errors.NO_TEMPLATE()
        gbnf = gbnf_of(sampling)
        if gbnf is not None and info is not None and gbnf not in self.grammars_ok:
            try:
                self.engine.check_grammar(gbnf)
            except EngineError as e:
                raise StyxError(str(e)) from None
            self.grammars_ok[gbnf] = None
            while len(self.grammars_ok) > 16:
                del self.grammars_ok[next(iter(self.grammars_ok))]

    async def submit(self, session: Session, text: bytes) -> Reply:
        if self.engine.info is None:
            raise errors.NOT_LOADED()
        d = self.dialogues[session.number]
        d.settle()
        before = (len(d.messages), d.dropped, [m.dropped for m in d.messages])
        try:
            if self.chat(session.sampling):
                history = await self._chat_history(d, session.sampling, text)
            else:
                history = self._raw_history(d, session.sampling, text)
            said = d.messages[-1].text.encode() if d.continuing else b""  # a constraint goes on from it
            reply = self.engine.submit(d.conversation, history, session.sampling, d.dropped, said)
        except (EngineError, StyxError) as e:
            # The turn never happened: the conversation stays as it was.
            count, d.dropped, marks = before
            del d.messages[count:]
            for m, mark in zip(d.messages, marks):
                m.dropped = mark
            d.continuing = False
            raise StyxError(str(e)) from None
        d.reply = reply
        self.figures.add(reply)
        return reply

    def _reserve(self, sampling: Sampling) -> int:
        """Room kept for the reply when the conversation must be cut to fit."""
        return min(sampling.maxtokens, self.engine.info.context // 2)

    def _raw_history(self, d: Dialogue, sampling: Sampling, text: bytes) -> list[int]:
        before = d.conversation.history
        if not text:  # go on from where it stands (a conversation given, ending mid-reply)
            if not before:
                raise errors.NOTHING_TO_CONTINUE()
            d.continuing = bool(d.messages) and d.messages[-1].role == "assistant"
            return list(before)
        new = self.engine.tokenize(text, first=not before)
        d.messages.append(Message("user", text.decode()))
        if not before:
            d.keep = min(len(new), self.engine.info.context // 4)
        history = before + new
        excess = len(history) + self._reserve(sampling) - self.engine.info.context
        if excess > 0 and len(before) > d.keep:
            if sampling.overflow == "refuse":
                raise EngineError(errors.CONVERSATION_TOO_LONG.format(
                    tokens=len(history) + self._reserve(sampling), context=self.engine.info.context))
            cut = min(excess, len(before) - d.keep)  # the oldest, after the kept beginning
            history = history[: d.keep] + history[d.keep + cut:]
            d.dropped += cut
            self._mark_dropped(d, d.dropped)
        return history

    @staticmethod
    def _mark_dropped(d: Dialogue, dropped: int) -> None:
        """Raw form: mark the messages whose text is all gone (roughly: by their
        length in bytes, the tokens not being kept per message)."""
        for m in d.messages[:-1]:
            size = len(m.text.encode())
            if dropped < size:
                break
            m.dropped, dropped = True, dropped - size

    async def _chat_history(self, d: Dialogue, sampling: Sampling, text: bytes) -> list[int]:
        info = self.engine.info
        if not info.chat_template:
            raise errors.NO_TEMPLATE()
        template = compiled(info.chat_template, info.bos_text, info.eos_text)
        if text:
            d.messages.append(Message("user", text.decode()))
        elif not d.messages or d.messages[-1].role != "assistant":
            raise errors.NOTHING_TO_CONTINUE()
        else:
            d.continuing = True
        reserve = self._reserve(sampling)
        first_size = None
        while True:
            visible = [m for m in d.messages if not m.dropped]
            if sampling.system:
                visible.insert(0, Message("system", sampling.system.decode()))
            rendered = await trio.to_thread.run_sync(
                lambda: template.render(visible, continue_final=visible[-1].role == "assistant"))
            tokens = self.engine.tokenize(rendered.encode(), first=False)  # the template writes its own BOS
            first_size = first_size or len(tokens)
            droppable = [m for m in d.messages[:-1] if not m.dropped]
            if len(tokens) + reserve <= info.context or not droppable:
                d.dropped += first_size - len(tokens)
                return tokens
            if sampling.overflow == "refuse":
                raise EngineError(errors.CONVERSATION_TOO_LONG.format(tokens=len(tokens) + reserve,
                                                                      context=info.context))
            droppable[0].dropped = True  # the oldest exchange: a user message and its reply
            if len(droppable) > 1 and droppable[1].role == "assistant":
                droppable[1].dropped = True

    def conversation(self, session: Session) -> list[Message]:
        d = self.dialogues[session.number]
        d.settle()
        return d.messages

    async def give(self, session: Session, messages: list[Message]) -> None:
        old = self.dialogues[session.number]
        self.engine.forget(old.conversation)
        d = self.dialogues[session.number] = Dialogue(session.owner)
        d.messages = messages
        if not self.chat(session.sampling) and messages:
            # Raw form: the model reads the texts one after another.
            d.conversation.history = self.engine.tokenize(
                "".join(m.text for m in messages if not m.dropped).encode(), first=True)
            d.keep = min(len(d.conversation.history), self.engine.info.context // 4)

    def cancel(self, session: Session) -> None:
        if session.reply is not None and not session.reply.ended:
            self.engine.cancel(session.reply)

    async def reset(self, session: Session) -> None:
        old = self.dialogues.get(session.number)
        if old is not None:
            self.engine.forget(old.conversation)
        self.dialogues[session.number] = Dialogue(session.owner)

    async def close(self, session: Session) -> None:
        old = self.dialogues.pop(session.number, None)
        if old is not None:
            self.engine.forget(old.conversation)

    def start_over(self) -> None:
        """A new model, a new vocabulary: every conversation starts again."""
        for number, d in self.dialogues.items():
            self.dialogues[number] = Dialogue(d.conversation.group)


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

    def model_names(self) -> list[str]:
        """Its one model, named as serve's --model named it, else by the file's stem."""
        info = self.engine.info
        return [info.settings.model_name] if info else []

    async def model_status(self, tree: LlamaTree, model: str) -> str:
        info, up = self.engine.info, int(self.state == "loaded")
        return status_line(up, 1, info.context if info else 0, bool(info.chat_template) if info else None,
                           len(tree.table.sessions))

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
            ("version", styxfs.__version__),
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
            ("name", info.settings.model_name), ("path", info.path), ("description", info.description), ("architecture", info.architecture),
            ("parameters", info.parameters), ("size", info.size), ("context", info.context),
            ("traincontext", info.train_context), ("quantisation", info.quantisation),
            ("vocabulary", info.vocabulary),
        ])

    async def tokens(self, name: str, data: bytes) -> bytes:
        return await engine_answer(self.engine, name, data)

    async def metrics_text(self, tree: LlamaTree) -> str:
        return node_metrics(self.engine, self.sessions.figures, tree)
