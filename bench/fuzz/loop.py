"""One trio loop for a whole run, in a thread of its own (public trio API only)."""

from __future__ import annotations

import concurrent.futures
import threading

import trio
import trio.testing


class TrioThread:
    """A trio loop with a MockClock that autojumps, which runs coroutine
    functions handed to it from other threads."""

    def __init__(self):
        self._ready = threading.Event()
        self._clock = trio.testing.MockClock(autojump_threshold=0)
        self.thread = threading.Thread(target=lambda: trio.run(self._main, clock=self._clock), name="fuzz-trio", daemon=True)
        self.thread.start()
        self._ready.wait()

    async def _main(self):
        async with trio.open_nursery() as nursery:
            self.nursery, self.token = nursery, trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def close(self) -> None:
        if self.thread.is_alive():
            self.token.run_sync_soon(self.nursery.cancel_scope.cancel)
            self.thread.join(5)

    def call(self, afn, *args, timeout: float):
        """afn(*args) on the loop; its result, or TimeoutError after `timeout` real seconds."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        async def job():
            try:
                future.set_result(await afn(*args))
            except Exception as e:
                future.set_exception(e)
            except BaseException as e:
                future.set_exception(e)
                raise

        self.token.run_sync_soon(self.nursery.start_soon, job)
        return future.result(timeout)
