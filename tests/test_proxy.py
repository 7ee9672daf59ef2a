"""The qid paths the coordinator gives the files of nodes/ it proxies."""

from __future__ import annotations

from coordinator.proxy import QidMap


def test_proxied_qid_paths_are_stable_unique_and_in_the_upper_half():
    qids = QidMap(size=100)
    first = qids.local("a", 5)
    assert qids.local("a", 5) == first and qids.local("b", 5) != first
    paths = {qids.local("a", n) for n in range(50)}
    assert len(paths) == 50 and all(1 << 31 <= p < 1 << 32 for p in paths)


def test_the_map_is_bounded_and_never_leaves_the_upper_half():
    qids = QidMap(size=10)
    qids.next = (1 << 32) - 3  # just before the top: it wraps to 2**31, not to 0
    kept = qids.local("node", 1)
    for n in range(2, 1000):
        qids.local("node", n)
        qids.local("node", 1)  # in use: kept, and never handed to another file
    assert len(qids.paths) == 10
    assert qids.local("node", 1) == kept
    assert all(1 << 31 <= p < 1 << 32 for p in qids.paths.values())
    assert len(set(qids.paths.values())) == 10
