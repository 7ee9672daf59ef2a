"""One turn's reply as it grows: what `N/reply`, `N/data` and the root
`reply` read, and what `N/status` describes.  Made by the engine on a node
and by the forwarding on a coordinator; lives on the trio thread."""

from __future__ import annotations

import enum
import time
from typing import Iterable

import trio

from styxfs.errors import StyxError
from styxfs.tree import quote, tokenize

from . import errors
from .settings import STREAM_INTERVAL


class ReplyState(enum.StrEnum):
    """The first word of `N/status`: where a session's latest turn is."""

    IDLE = "idle"  # no turn yet
    QUEUED = "queued"
    PREFILL = "prefill"  # the prompt being evaluated
    GENERATING = "generating"
    DONE = "done"
    CANCELLED = "cancelled"
    ERROR = "error"


ENDED = (ReplyState.DONE, ReplyState.CANCELLED, ReplyState.ERROR)
REASONS = ("stop", "length", "context", "cancelled", "error")


def reason_for(state: ReplyState, reason: str | None) -> str | None:
    """Why a turn ended: a cancel or an error is its own reason."""
    return str(state) if state in (ReplyState.CANCELLED, ReplyState.ERROR) else reason


def format_status(state: ReplyState, fields: Iterable[tuple[str, object]]) -> str:
    """A status line (`N/status`, a line of the root `sessions`): the state,
    then key=value fields, a value with blanks or quotes quoted."""
    return " ".join([state, *(f"{key}={quote(str(value))}" for key, value in fields)]) + "\n"


def parse_status(line: str) -> tuple[ReplyState | str, dict[str, str]]:
    """A status line read back: its state (a word this version does not
    know is given as it is) and its key=value fields.  A line cut short
    inside a quoted value keeps what it has of it."""
    line = line.strip()
    try:
        words = tokenize(line)
    except StyxError:  # an unterminated quote
        words = tokenize(line + "'")
    if not words:
        return ReplyState.ERROR, {}
    try:
        state = ReplyState(words[0])
    except ValueError:
        state = words[0]
    return state, dict(word.split("=", 1) for word in words[1:] if "=" in word)


class Reply:
    """Any number of readers, each from the start; a read waits until there
    is more text or the turn has ended.  States: queued, prefill,
    generating, then one of done, cancelled, error; once ended, the reason,
    in the words the ecosystem uses: stop (end of generation or a stop
    string), length (maxtokens), context (the context is full), cancelled,
    error."""

    def __init__(self, prompt_tokens: int = 0, stream_interval: float = STREAM_INTERVAL):
        self.text = bytearray()
        self.stream_interval = stream_interval
        self.state = ReplyState.QUEUED
        self.error: str | None = None
        self.tokens_in = prompt_tokens  # prompt tokens this turn evaluates
        self.tokens_out = 0
        self.tokens_dropped = 0  # of the conversation, to make this turn fit the context
        self.tokens_cached = 0  # of the prompt, found in the KV cache: not evaluated again
        self.tokens_drafted = 0  # speculative decoding: tokens drafted, and of them the ones kept
        self.tokens_accepted = 0
        self.reason: str | None = None
        self.submitted = time.monotonic()
        self.first_token: float | None = None
        self.finished: float | None = None
        self._woken = 0.0
        self.cancel_requested = False
        self.text_complete = False  # all of the text is in; how it ended is still to come
        self._changed = trio.Event()

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def append(self, data: bytes, tokens: int) -> None:
        now = time.monotonic()
        if data:
            self.text += data
        if self.first_token is None and (tokens or data):  # a relayed reply counts pieces, not tokens
            self.first_token = now
        self.tokens_out += tokens
        # Readers wake for the first text, then at most every stream_interval:
        # fewer round trips per token leave the CPU to llama.cpp's threads.
        if now - self._woken >= self.stream_interval or len(self.text) == len(data):
            self._woken = now
            self._wake()

    def set_state(self, state: ReplyState | str, error: str | None = None, reason: str | None = None) -> None:
        if self.ended:
            return
        self.state = state = ReplyState(state)
        if error is not None:
            self.error = error
        reason = reason_for(state, reason)
        if reason is not None:
            self.reason = reason
        if self.ended:
            self.finished = time.monotonic()
        self._wake()

    def complete_text(self) -> None:
        """Readers of the text need wait no longer (a coordinator still asks
        its node how the turn ended, and the status waits for that)."""
        self.text_complete = True
        self._wake()

    async def read(self, offset: int, count: int) -> bytes:
        """Text from offset as soon as there is some; b"" at the end.  A turn
        that failed before this offset raises its error."""
        while len(self.text) <= offset and not (self.ended or self.text_complete):
            await self._changed.wait()
        if self.state == ReplyState.ERROR and len(self.text) <= offset:
            raise StyxError(self.error or str(errors.GENERATION_FAILED))
        return bytes(self.text[offset : offset + count])

    async def wait(self) -> None:
        while not self.ended:
            await self._changed.wait()

    def status_fields(self) -> list[tuple[str, object]]:
        """The figures of the status line that every reply has."""
        now = self.finished or time.monotonic()
        elapsed = now - self.submitted
        generating = now - self.first_token if self.first_token else 0.0
        rate = self.tokens_out / generating if generating > 0 else 0.0
        ttft = (self.first_token - self.submitted) if self.first_token else 0.0
        return [("tokens_in", self.tokens_in), ("tokens_out", self.tokens_out),
                ("elapsed", f"{elapsed:.3f}"), ("tokens_per_sec", f"{rate:.1f}"), ("ttft", f"{ttft:.3f}")]

    def status(self) -> str:
        """N/status: the state, then key=value figures."""
        fields = self.status_fields()
        if self.ended and self.reason:
            fields.insert(0, ("reason", self.reason))
        if self.tokens_cached:
            fields.append(("tokens_cached", self.tokens_cached))
        if self.tokens_dropped:
            fields.append(("tokens_dropped", self.tokens_dropped))
        if self.tokens_drafted:
            fields += [("tokens_drafted", self.tokens_drafted), ("tokens_accepted", self.tokens_accepted)]
        if self.error:
            fields.append(("error", self.error))
        return format_status(self.state, fields)
