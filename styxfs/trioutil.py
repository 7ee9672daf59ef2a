"""trio helpers that the 9P client and the coordinator share."""

from __future__ import annotations

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
