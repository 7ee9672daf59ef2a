"""Sessions: a conversation's settings, owner and latest reply, and the
table that numbers them, enforces the cap and the owner, and finds idle
ones.  The namespace keeps them, on a node and on a coordinator alike."""

from __future__ import annotations

import time

from . import errors
from .qids import MAX_SESSION  # a session's number is in its files' qid paths
from .reply import Reply, ReplyState, format_status
from .settings import Sampling


class Session:
    def __init__(self, number: int, owner: str, sampling: Sampling, ephemeral: bool = False):
        self.number = number
        self.owner = owner
        self.sampling = sampling.copy()
        self.reply: Reply | None = None
        self.open_files = 0
        self.last_active = time.monotonic()
        self.ephemeral = ephemeral  # root data's one-shot session: gone once used
        self.model: str | None = None  # chosen by models/NAME/ or ctl `model`; None: the default
        self.closed = False

    def touch(self) -> None:
        self.last_active = time.monotonic()

    @property
    def generating(self) -> bool:
        return self.reply is not None and not self.reply.ended

    @property
    def idle(self) -> bool:
        """No file of it open, nothing running in it, its reply complete."""
        return not self.open_files and not self.generating

    def status(self) -> str:
        if self.reply is None:
            return format_status(ReplyState.IDLE, [("tokens_in", 0), ("tokens_out", 0)])
        return self.reply.status()


class SessionTable:
    def __init__(self, max_sessions: int, idle_timeout: float):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.sessions: dict[int, Session] = {}
        self.next_number = 1
        self.created = 0
        self.reclaimed = 0

    @property
    def full(self) -> bool:
        return len(self.sessions) >= self.max_sessions

    def reclaimable(self, uname: str) -> Session | None:
        """At the cap, the session to give up for a new one: the least
        recently used idle session of the same user, else of anyone."""
        idle = [s for s in self.sessions.values() if s.idle]
        own = [s for s in idle if s.owner == uname]
        return min(own or idle, key=lambda s: s.last_active, default=None)

    def allocate(self) -> int:
        if self.full:
            raise errors.TOO_MANY_SESSIONS(cap=self.max_sessions)
        number = self.next_number
        self.next_number = self.next_number % MAX_SESSION + 1
        while number in self.sessions:
            number = self.next_number
            self.next_number = self.next_number % MAX_SESSION + 1
        self.created += 1
        return number

    def add(self, session: Session) -> Session:
        self.sessions[session.number] = session
        return session

    def get(self, number: int, uname: str) -> Session:
        session = self.sessions.get(number)
        if session is None or session.closed:
            raise errors.NO_SUCH_SESSION()
        if session.owner != uname:
            raise errors.PERM()
        return session

    def owned_by(self, uname: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.owner == uname and not s.ephemeral]

    def remove(self, session: Session) -> None:
        session.closed = True
        self.sessions.pop(session.number, None)

    def expired(self) -> list[Session]:
        """Sessions nobody holds open and nothing runs in: past the idle
        timeout, or one-shot sessions that have been used."""
        now = time.monotonic()
        out = []
        for s in self.sessions.values():
            if s.open_files or s.generating:
                continue
            if s.ephemeral or now - s.last_active > self.idle_timeout:
                out.append(s)
        return out
