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


def test_prefix_affinity_follows_the_prompts_beginning_within_a_bound():
    nodes = cluster(1, 1, 1)
    s = make_strategy("prefix-affinity")
    system = b"You are a careful assistant. " * 20  # several blocks
    first = pick(s, nodes, nodes, system + b"question one")
    first.sessions |= {1}
    # The same beginning goes to the same node, while it is not more than SLACK over the least loaded.
    for i in range(2, 2 + s.SLACK):
        assert pick(s, nodes, nodes, system + f"question {i}".encode()) is first
        first.sessions |= {i}
    # Past the bound: least-connections, which then holds that beginning too.
    other = pick(s, nodes, nodes, system + b"one more")
    assert other is not first and other.session_count == 0
    # A prompt nobody has seen: least-connections.
    other.sessions |= {100}
    fresh = pick(s, nodes, nodes, b"something else entirely " * 10)
    assert fresh not in (first, other)
    # The node that held it gone: another takes the prompt.
    assert pick(s, nodes, [n for n in nodes if n is not other], system + b"again") in nodes


def test_prefix_affinity_remembers_a_bounded_number_of_prefixes():
    nodes = cluster(1, 1)
    s = make_strategy("prefix-affinity")
    s.MEMORY = 50
    for i in range(200):
        pick(s, nodes, nodes, f"{i:08d}".encode() * 64)
    assert len(s.seen) == 50


def test_prefix_affinity_spreads_new_prefixes_over_idle_nodes():
    # Two documents, each asked about once while nothing runs: they go to different
    # nodes, and later questions about each follow its own.
    nodes = cluster(1, 1)
    s = make_strategy("prefix-affinity")
    doc_a, doc_b = b"Document A. " * 40, b"Document B. " * 40
    a, b = pick(s, nodes, nodes, doc_a + b"warm?"), pick(s, nodes, nodes, doc_b + b"warm?")
    assert a is not b
    assert pick(s, nodes, nodes, doc_a + b"who?") is a and pick(s, nodes, nodes, doc_b + b"who?") is b
