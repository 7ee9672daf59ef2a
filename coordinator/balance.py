"""Load-balancing strategies: pick one of the healthy nodes.

Each strategy sees every node in configured order (so round-robin's order
is the config's), the healthy ones among them, and the beginning of the
session's prompt (which only prefix-affinity uses).
"""

from __future__ import annotations

import collections
import hashlib
import random
from typing import Protocol, Sequence

from .config import STRATEGIES


class Candidate(Protocol):
    id: str
    weight: float

    @property
    def session_count(self) -> int: ...


class Strategy:
    name = ""

    def pick(self, nodes: Sequence[Candidate], healthy: Sequence[Candidate], prompt: bytes = b"") -> Candidate:
        raise NotImplementedError


class RoundRobin(Strategy):
    name = "round-robin"

    def __init__(self):
        self.next = 0

    def pick(self, nodes, healthy, prompt=b""):
        for step in range(len(nodes)):
            node = nodes[(self.next + step) % len(nodes)]
            if node in healthy:
                self.next = (self.next + step + 1) % len(nodes)
                return node
        raise LookupError("no healthy node")


class LeastConnections(Strategy):
    name = "least-connections"

    def pick(self, nodes, healthy, prompt=b""):
        # A node's "connections" are the coordinator's sessions bound to it.
        # Ties go to the node first in the config.
        return min(healthy, key=lambda n: n.session_count)


class Random(Strategy):
    name = "random"

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, nodes, healthy, prompt=b""):
        return self.rng.choice(list(healthy))


class WeightedRandom(Strategy):
    name = "weighted-random"

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, nodes, healthy, prompt=b""):
        weights = [n.weight for n in healthy]
        if sum(weights) <= 0:
            return self.rng.choice(list(healthy))
        return self.rng.choices(list(healthy), weights=weights)[0]


class PrefixAffinity(Strategy):
    """The node that most likely holds the longest beginning of the prompt in
    its KV cache: the one its longest run of BLOCK-byte blocks was last sent
    to (a hash chain per prompt, MEMORY chains remembered), unless it has
    more than SLACK sessions over the least loaded healthy node; else, and
    for a prompt nobody has seen, least-connections, the ties going to the
    node picked least recently (so that new prefixes spread over idle nodes,
    rather than all landing on the first)."""

    name = "prefix-affinity"
    BLOCK = 128
    MEMORY = 10_000
    SLACK = 2

    def __init__(self):
        self.seen: collections.OrderedDict[bytes, str] = collections.OrderedDict()  # chain hash -> node id
        self.picks = 0
        self.picked: dict[str, int] = {}  # node id -> when it was last picked

    @classmethod
    def chain(cls, prompt: bytes) -> list[bytes]:
        """A hash per whole block of the prompt, each of all the blocks up to it."""
        out, h = [], hashlib.blake2b(digest_size=16)
        for end in range(cls.BLOCK, len(prompt) + 1, cls.BLOCK):
            h.update(prompt[end - cls.BLOCK:end])
            out.append(h.copy().digest())
        return out

    def pick(self, nodes, healthy, prompt=b""):
        chain = self.chain(prompt)
        least = min(n.session_count for n in healthy)
        by_id = {n.id: n for n in healthy}
        choice = None
        for key in reversed(chain):  # the longest run first
            node = by_id.get(self.seen.get(key, ""))
            if node is not None and node.session_count <= least + self.SLACK:
                choice = node
                break
        choice = choice or min(healthy, key=lambda n: (n.session_count, self.picked.get(n.id, -1)))
        self.picks += 1
        self.picked[choice.id] = self.picks
        for key in chain:
            self.seen[key] = choice.id
            self.seen.move_to_end(key)
        while len(self.seen) > self.MEMORY:
            self.seen.popitem(last=False)
        return choice


def make_strategy(name: str, seed: int | None = None) -> Strategy:
    rng = random.Random(seed)
    makers = {"round-robin": RoundRobin, "least-connections": LeastConnections,
              "random": lambda: Random(rng), "weighted-random": lambda: WeightedRandom(rng),
              "prefix-affinity": PrefixAffinity}
    if name not in makers:
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return makers[name]()


def pick(strategy: Strategy, nodes: Sequence[Candidate], healthy: Sequence[Candidate],
         prompt: bytes = b"") -> Candidate:
    if not healthy:
        raise LookupError("no healthy node")
    return strategy.pick(nodes, healthy, prompt)
