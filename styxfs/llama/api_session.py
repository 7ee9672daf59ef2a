"""One API request as a session of the tree, made, written, read and closed
as a 9P client would: clone (the fid becomes N/ctl), N/conversation for
the earlier turns, N/system, the settings to N/ctl, the turn to N/data and
its reply read back on the same fid, N/status for the figures, then
`close`.  So an HTTP turn is balanced, failed over, counted and shown as
any other, on a node and on a coordinator alike.

`files` is any client with `open(path, mode)` giving a file with read,
write and close, as styxfs.client.Client's: LocalClient beside the server,
without the wire."""

from __future__ import annotations

from typing import Any, AsyncIterator

import trio

from styxfs import client, wire
from styxfs.tree import quote

from .chat import Message, format_records
from .reply import parse_status

READ_SIZE = 65536
SETTLE_SECONDS = 5.0  # how long a cancelled turn is given to end before its session is closed


def ctl_lines(settings: dict[str, Any]) -> str:
    """Session settings (SESSION's names) as N/ctl commands; a list is cleared first."""
    out = []
    for name, value in settings.items():
        if isinstance(value, tuple):
            out += [name] + [f"{name} {quote(v)}" for v in value]
        else:
            out.append(f"{name} {value}")
    return "\n".join(out) + "\n"


class TreeTurn:
    """A session for one turn.  `async with TreeTurn(files) as turn:`; the
    session is closed on the way out, whatever happened (a turn still
    running is cancelled by that)."""

    def __init__(self, files, clone: str = "clone"):
        self.files, self.clone = files, clone  # clone: the root's (the default model's), or models/NAME/clone
        self.ctl = None
        self.number = ""
        self.data = None
        self.submitted = False  # the turn's first read was made
        self.finished = False  # its reply was read to the end

    async def __aenter__(self) -> "TreeTurn":
        self.ctl = await self.files.open(self.clone, wire.ORDWR)
        self.number = (await self.ctl.read()).decode().strip()
        return self

    async def __aexit__(self, *exc) -> None:
        # Shielded: a client gone mid-turn must still leave no session behind.
        with trio.CancelScope(shield=True):
            if self.submitted and not self.finished:
                await quietly(self.settle())
            # Closed before the data file's clunk, which would submit a turn never read.
            await quietly(self.ctl.write(b"close"))
            if self.data is not None:
                await quietly(self.data.close())
            await quietly(self.ctl.close())

    async def settle(self) -> None:
        """A turn left running is cancelled, and read to its end, before its
        session is closed: as a polite client would, and a coordinator is
        then done with the turn before the session goes."""
        with trio.move_on_after(SETTLE_SECONDS):
            await self.ctl.write(b"cancel")
            while await self.data.read(READ_SIZE):
                pass

    async def write_file(self, name: str, data: bytes) -> None:
        f = await self.files.open(f"{self.number}/{name}", wire.OWRITE | wire.OTRUNC)
        try:
            await f.write(data)
        finally:
            await f.close()

    async def start(self, settings: dict[str, Any], prompt: bytes, history: list[Message] = (),
                    system: str | None = None, constraint: tuple[str, bytes] | None = None) -> None:
        """Give the session its earlier turns, system prompt and constraint
        (its grammar or schema file), then its settings, then write the turn.  In that order, so that a
        coordinator binds the session to a node once, when the turn comes."""
        if history:
            await self.write_file("conversation", format_records(list(history)))
        if system:
            await self.write_file("system", system.encode())
        else:
            settings = {**settings, "system": ()}  # a bare `system` clears the node's default one
        if constraint:
            await self.write_file(*constraint)  # an invalid one is refused at its clunk
        else:
            settings = {**settings, "grammar": ()}  # and a bare `grammar` its default constraint
        await self.ctl.write(ctl_lines(settings).encode())
        self.data = await self.files.open(f"{self.number}/data", wire.ORDWR)
        if prompt:
            await self.data.write(prompt)

    async def pieces(self) -> AsyncIterator[bytes]:
        """The reply as it comes (the first read submits the turn)."""
        self.submitted = True
        while piece := await self.data.read(READ_SIZE):
            yield piece
        self.finished = True

    async def status(self) -> dict[str, str]:
        """How the turn ended and its figures (read once the reply is all in)."""
        f = await self.files.open(f"{self.number}/status", wire.OREAD)
        try:
            state, fields = parse_status((await f.read(READ_SIZE)).decode(errors="replace"))
        finally:
            await f.close()
        return {"state": str(state), **fields}


async def quietly(step) -> None:
    """A step of closing: a session already gone (reclaimed, or its node with it) is no error."""
    try:
        await step
    except client.ServerError:
        pass
