"""Load-balancing strategies: pick one of the healthy nodes.

Each strategy sees every node in configured order (so round-robin's order
is the config's) and the healthy ones among them.
"""

from __future__ import annotations

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

    def pick(self, nodes: Sequence[Candidate], healthy: Sequence[Candidate]) -> Candidate:
        raise NotImplementedError


class RoundRobin(Strategy):
    name = "round-robin"

    def __init__(self):
        self.next = 0

    def pick(self, nodes, healthy):
        for step in range(len(nodes)):
            node = nodes[(self.next + step) % len(nodes)]
            if node in healthy:
                self.next = (self.next + step + 1) % len(nodes)
                return node
        raise LookupError("no healthy node")


class LeastConnections(Strategy):
    name = "least-connections"

    def pick(self, nodes, healthy):
        # A node's "connections" are the coordinator's sessions bound to it.
        # Ties go to the node first in the config.
        return min(healthy, key=lambda n: n.session_count)


class Random(Strategy):
    name = "random"

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, nodes, healthy):
        return self.rng.choice(list(healthy))


class WeightedRandom(Strategy):
    name = "weighted-random"

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, nodes, healthy):
        weights = [n.weight for n in healthy]
        if sum(weights) <= 0:
            return self.rng.choice(list(healthy))
        return self.rng.choices(list(healthy), weights=weights)[0]


def make_strategy(name: str, seed: int | None = None) -> Strategy:
    rng = random.Random(seed)
    makers = {"round-robin": RoundRobin, "least-connections": LeastConnections,
              "random": lambda: Random(rng), "weighted-random": lambda: WeightedRandom(rng)}
    if name not in makers:
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return makers[name]()


def pick(strategy: Strategy, nodes: Sequence[Candidate], healthy: Sequence[Candidate]) -> Candidate:
    if not healthy:
        raise LookupError("no healthy node")
    return strategy.pick(nodes, healthy)
