"""trio helpers that the 9P client and the coordinator share."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def unwrapped():
    """Let a single exception out of a nursery unwrapped (the caller's own, say)."""
    try:
        yield
    except BaseExceptionGroup as group:
        # One failure, or several plain errors at once (two calls on one lost
        # connection, say): the first tells what happened.  A failure tells
        # more than the Cancelled beside it (a cancelled scope cancels again).
        errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)] or group.exceptions
        if len(errors) == 1 or all(isinstance(e, Exception) and not isinstance(e, BaseExceptionGroup)
                                   for e in errors):
            raise errors[0] from None
        raise


class Outbox:
    """Calls that a worker thread has the trio side make, gathered and sent
    together (`send`): one wake-up of the trio thread for many reports, not
    one each (each wake-up takes a core from the worker's own threads).
    Routine reports (`add_routine`: a reply's next tokens) wait up to
    `interval` seconds for others (`send_due`); any other goes at the next
    `send_due`, with whatever waits."""

    def __init__(self, interval: float = 0.0) -> None:
        self.token: trio.lowlevel.TrioToken | None = None  # the trio run to call into: set by its side
        self.interval = interval
        self.pending: list = []
        self.urgent = False
        self.since = 0.0  # when the oldest pending report was added

    def add(self, fn, *args) -> None:
        self.add_routine(fn, *args)
        self.urgent = True

    def add_routine(self, fn, *args) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append((fn, args))

    def send_due(self) -> None:
        if self.pending and (self.urgent or time.monotonic() - self.since >= self.interval):
            self.send()

    def send(self) -> None:
        if self.pending:
            batch, self.pending, self.urgent = self.pending, [], False
            try:
                self.token.run_sync_soon(_call_all, batch)
            except trio.RunFinishedError:
                pass


def _call_all(calls: list) -> None:
    for fn, args in calls:
        fn(*args)
