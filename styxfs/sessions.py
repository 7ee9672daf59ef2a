"""Sessions: a conversation with its settings, owner and latest reply.

Shared by the node's tree (llama.py) and the coordinator's: both hand out
session numbers, enforce the cap and the owner, and reap idle sessions.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Generic, TypeVar

from . import errors
from .engine import SAMPLING_RANGES, Reply, Sampling
from .errors import StyxError
from .tree import parse_number

S = TypeVar("S", bound="Session")


class Session:
    def __init__(self, number: int, owner: str, sampling: Sampling, ephemeral: bool = False):
        self.number = number
        self.owner = owner
        self.sampling = replace(sampling)
        self.reply: Reply | None = None
        self.open_files = 0
        self.last_active = time.monotonic()
        self.ephemeral = ephemeral  # root data's one-shot session: gone once used
        self.closed = False

    def touch(self) -> None:
        self.last_active = time.monotonic()

    @property
    def generating(self) -> bool:
        return self.reply is not None and not self.reply.ended

    def status(self) -> str:
        return self.reply.status() if self.reply else "idle tokens_in=0 tokens_out=0\n"


class SessionTable(Generic[S]):
    def __init__(self, max_sessions: int, idle_timeout: float):
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.sessions: dict[int, S] = {}
        self.next_number = 1
        self.created = 0

    def allocate(self) -> int:
        if len(self.sessions) >= self.max_sessions:
            raise StyxError(f"too many sessions: the cap is {self.max_sessions}")
        # Numbers stay below 2**24 so that qid paths (number << 8 | file) fit in 32 bits.
        number = self.next_number
        self.next_number = self.next_number % ((1 << 24) - 1) + 1
        while number in self.sessions:
            number = self.next_number
            self.next_number = self.next_number % ((1 << 24) - 1) + 1
        self.created += 1
        return number

    def add(self, session: S) -> S:
        self.sessions[session.number] = session
        return session

    def get(self, number: int, uname: str) -> S:
        session = self.sessions.get(number)
        if session is None or session.closed:
            raise StyxError("no such session")
        if session.owner != uname:
            raise StyxError(errors.PERM)
        return session

    def owned_by(self, uname: str) -> list[S]:
        return [s for s in self.sessions.values() if s.owner == uname and not s.ephemeral]

    def remove(self, session: S) -> None:
        session.closed = True
        self.sessions.pop(session.number, None)

    def expired(self) -> list[S]:
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


def apply_setting(sampling: Sampling, verb: str, args: list[str]) -> None:
    """One sampling verb of N/ctl or `defaults`, checked."""
    if verb == "stop":
        if not args:
            sampling.stop = ()
        else:
            sampling.stop = sampling.stop + (" ".join(args),)
        return
    if verb not in SAMPLING_RANGES:
        raise StyxError(f"bad ctl request: {verb}: no such setting")
    if len(args) != 1:
        raise StyxError(f"bad ctl request: usage: {verb} VALUE")
    kind, low, high = SAMPLING_RANGES[verb]
    setattr(sampling, verb, parse_number(verb, args[0], kind, low, high))


SESSION_VERBS = tuple(SAMPLING_RANGES) + ("stop",)
