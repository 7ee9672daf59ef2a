"""A TCP relay that delays every byte by a fixed time each way: a slow link
between two layers of a deployment, on a kernel without netem."""

from __future__ import annotations

import math

import trio

from styxfs import dial


class DelayRelay:
    """Listens on 127.0.0.1 (`address` once started) and relays each
    connection to `upstream`, every piece `delay` seconds late, in order."""

    def __init__(self, upstream: str, delay: float):
        self.upstream = dial.parse(upstream)
        self.delay = delay
        self.address = ""

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"tcp!127.0.0.1!{dial.listening_port(listeners)}"
        task_status.started(self)
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(self.upstream.host, self.upstream.port)
        except OSError:
            await downstream.aclose()
            return
        try:
            async with downstream, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a side went away: the link is down

    async def _pump(self, source, sink, scope: trio.CancelScope) -> None:
        send, receive = trio.open_memory_channel(math.inf)

        async def deliver():
            async for due, data in receive:
                await trio.sleep_until(due)
                await sink.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                async with send:
                    while data := await source.receive_some(65536):
                        send.send_nowait((trio.current_time() + self.delay, data))
        finally:
            scope.cancel()  # one side has gone: so does the other
