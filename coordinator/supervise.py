"""Supervision: a node process the deployment started that exits without
being asked to is started again on its port, as systemd's Restart= or a
Kubernetes restart policy would, with exponential backoff.

`Backoff` is the policy alone (no I/O; the clock is passed in), tested on
its own; `Supervisor` applies it to a DeploymentManager's processes.
The manager calls `exited` for a process of its own that ended without
`NodeProcess.stop`, and for an isolate that died; scaling down and shutdown
take a node out of `manager.processes` before stopping it: a node no longer
there was asked to go, and is left gone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import trio

from styxfs.llama.settings import RESTART_CAP, RESTART_FIRST, RESTART_POLICIES, RESTART_RESET

log = logging.getLogger("coordinator.supervise")


def wants_restart(policy: str, returncode: int) -> bool:
    """Whether a process that ended with returncode is started again:
    on-failure restarts an exit status other than 0 or a death by signal."""
    if policy not in RESTART_POLICIES:
        raise ValueError(f"unknown restart policy {policy!r}: use one of {', '.join(RESTART_POLICIES)}")
    return policy == "always" or (policy == "on-failure" and returncode != 0)


@dataclass
class Backoff:
    """The delay before each restart: first, doubled at each crash up to cap;
    back to first once the node has stayed up reset seconds."""

    first: float = RESTART_FIRST
    cap: float = RESTART_CAP
    reset: float = RESTART_RESET
    next: float = 0.0  # the delay the next crash gets (0: first)
    up_since: float | None = None  # when it came up, if it is up
    was_up: float = 0.0  # how long it stayed up, the last time

    def up(self, now: float) -> None:
        if self.up_since is None:
            self.up_since = now

    def down(self, now: float) -> None:
        if self.up_since is not None:
            self.was_up, self.up_since = now - self.up_since, None

    def crashed(self, now: float) -> float:
        """A crash at now (seen as down a moment before, perhaps): the delay
        before starting it again."""
        self.down(now)
        if self.next == 0.0 or self.was_up >= self.reset:
            self.next = self.first
        self.was_up = 0.0
        delay = self.next
        self.next = min(self.cap, self.next * 2)
        return delay

    @property
    def failing(self) -> bool:
        """It keeps crashing: its delay has reached the cap."""
        return self.next >= self.cap


class Supervisor:
    """Restarts the node processes of manager (a DeploymentManager) that
    exit unasked, under policy; clock is for when a node came up."""

    def __init__(self, manager, policy: str, clock: Callable[[], float] = time.monotonic, **backoff: float):
        wants_restart(policy, 1)  # a bad policy is an error now, not at the first crash
        self.manager, self.policy, self.clock = manager, policy, clock
        self.backoff_options = backoff
        self.backoffs: dict[str, Backoff] = {}
        self.seen_up: set[str] = set()  # a node that never came up is the deploy's (or scale's) error
        self.pending: set[str] = set()  # nodes a restart is under way for

    def backoff(self, node_id: str) -> Backoff:
        return self.backoffs.setdefault(node_id, Backoff(**self.backoff_options))

    def node_event(self, event: str, node) -> None:
        if event == "node-up":
            self.seen_up.add(node.id)
            self.backoff(node.id).up(self.clock())
            node.crashed = ""
        elif event == "node-down":
            self.backoff(node.id).down(self.clock())

    def exited(self, node_id: str, returncode: int, why: str) -> None:
        """The node's process (or its isolate) ended, unasked: what ran there
        fails over now, and a restart comes after its delay, if it is to."""
        m = self.manager
        try:
            m.pool.get(node_id).failed(why)  # not at the next health check
        except KeyError:
            return
        if node_id in self.pending or node_id not in self.seen_up or m.nursery is None:
            return  # on its way back already, or never up (the deploy's own error, or scale's)
        if not wants_restart(self.policy, returncode):
            log.warning("node %s %s; network.restart is %s: left down", node_id, why, self.policy)
            return
        self.pending.add(node_id)
        m.nursery.start_soon(self._restart, node_id, why)

    async def _restart(self, node_id: str, why: str) -> None:
        m = self.manager
        try:
            backoff = self.backoff(node_id)
            delay = backoff.crashed(self.clock())
            handle = m.pool.get(node_id)
            if backoff.failing:
                handle.crashed = why
                log.error("node %s keeps crashing; next try in %g s: %s", node_id, delay, why)
                m.emit("node-failed", node_id, why)
            else:
                log.warning("node %s %s; restarting in %g s", node_id, why, delay)
            await trio.sleep(delay)
            node = next((n for n in m.config.nodes if n.id == node_id), None)
            if node is None or node_id not in m.processes or handle not in m.pool.nodes:
                return  # scaled down or shut down meanwhile
            handle.process = await m.launch(node)
            handle.restarts += 1
            log.info("node %s restarted (restart %d), pid %d", node_id, handle.restarts, handle.process.pid)
            m.emit("node-restarted", node_id, handle.restarts)
        finally:
            self.pending.discard(node_id)
