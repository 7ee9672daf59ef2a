"""The load-balancing strategies on fake nodes: no processes, no network."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import pytest

from coordinator.balance import make_strategy, pick
from coordinator.config import STRATEGIES


@dataclass(eq=False)
class FakeNode:
    id: str
    weight: float = 1.0
    sessions: set = field(default_factory=set)

    @property
    def session_count(self) -> int:
        return len(self.sessions)


def cluster(*weights: float) -> list[FakeNode]:
    return [FakeNode(f"n{i}", w) for i, w in enumerate(weights)]


def test_round_robin_goes_in_config_order_and_skips_unhealthy_nodes():
    nodes = cluster(1, 1, 1)
    s = make_strategy("round-robin")
    assert [pick(s, nodes, nodes).id for _ in range(6)] == ["n0", "n1", "n2", "n0", "n1", "n2"]
    healthy = [nodes[0], nodes[2]]
    assert [pick(s, nodes, healthy).id for _ in range(4)] == ["n0", "n2", "n0", "n2"]
    # A node that comes back takes its turn again.
    assert [pick(s, nodes, nodes).id for _ in range(3)] == ["n0", "n1", "n2"]


def test_least_connections_picks_the_fewest_sessions_ties_to_the_first():
    nodes = cluster(1, 1, 1)
    s = make_strategy("least-connections")
    assert pick(s, nodes, nodes).id == "n0"
    nodes[0].sessions |= {1, 2}
    nodes[1].sessions |= {3}
    assert pick(s, nodes, nodes).id == "n2"
    nodes[2].sessions |= {4, 5, 6}
    assert pick(s, nodes, nodes).id == "n1"
    assert pick(s, nodes, [nodes[0], nodes[2]]).id == "n0"


def test_random_uses_only_healthy_nodes_and_repeats_with_a_seed():
    nodes = cluster(1, 1, 1, 1)
    healthy = nodes[1:3]
    s1, s2 = make_strategy("random", seed=7), make_strategy("random", seed=7)
    run1 = [pick(s1, nodes, healthy).id for _ in range(50)]
    run2 = [pick(s2, nodes, healthy).id for _ in range(50)]
    assert run1 == run2 and set(run1) == {"n1", "n2"}


def test_weighted_random_follows_the_weights():
    nodes = cluster(1, 3, 6)
    s = make_strategy("weighted-random", seed=1)
    counts = collections.Counter(pick(s, nodes, nodes).id for _ in range(10000))
    for node in nodes:
        assert abs(counts[node.id] / 10000 - node.weight / 10) < 0.03, counts
    zero = cluster(0, 0)  # all weights zero: uniform, not an error
    assert {pick(s, zero, zero).id for _ in range(100)} == {"n0", "n1"}


@pytest.mark.parametrize("name", STRATEGIES)
def test_no_healthy_node_is_an_error(name):
    with pytest.raises(LookupError, match="no healthy node"):
        pick(make_strategy(name, seed=1), cluster(1, 1), [])


def test_an_unknown_strategy_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown strategy 'fastest': use one of round-robin"):
        make_strategy("fastest")
