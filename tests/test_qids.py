"""Every file of the tree, found by walking it, has a qid path of its own:
on a node and on a coordinator, with sessions and models/ present.  A new
file that reuses another's low bits fails here without a list to update."""

from __future__ import annotations

from styxfs import client
from styxfs.wire import DMDIR

from .support import config_for, deploy, session


async def every_qid(c: client.Client, path: str = "", skip: tuple[str, ...] = ()) -> dict[str, int]:
    """{path: qid path} of path and everything below it (each name stat'ed
    too, so a directory's entry and the file agree)."""
    here = await c.stat(path)
    found = {path or "/": here.qid.path}
    if here.mode & DMDIR:
        for d in await c.listdir(path):
            child = f"{path}/{d.name}" if path else d.name
            if child in skip:
                continue
            found.update(await every_qid(c, child, skip))
            assert found[child] == d.qid.path, child
    return found


def assert_unique(qids: dict[str, int]) -> None:
    by_path: dict[int, list[str]] = {}
    for name, q in qids.items():
        by_path.setdefault(q, []).append(name)
    assert not [names for names in by_path.values() if len(names) > 1]


async def test_every_file_of_a_node_has_a_qid_path_of_its_own(start_fake_node):
    address, _ = await start_fake_node()
    async with client.connect(address) as c:
        numbers = [await session(c) for _ in range(2)]
        qids = await every_qid(c)
    assert {"ctl", "new/data", "tokenize", *(f"{n}/data" for n in numbers)} <= qids.keys()
    assert any(name.startswith("models/") for name in qids)
    assert_unique(qids)
    assert max(qids.values()) < 1 << 31  # the upper half is a coordinator's, for nodes/


async def test_every_file_of_a_coordinator_has_a_qid_path_of_its_own(nursery, start_fake_node):
    address, _ = await start_fake_node(threads=1)
    mgr = await deploy(nursery, config_for([("node-0", None, address)]))
    async with client.connect(mgr.address) as c:
        n = await session(c)
        # nodes/ID/ holds the node's whole tree; its sessions' files come and go.
        qids = await every_qid(c, skip=("nodes/node-0/1",))
    assert {"nodes/node-0/health", "nodes/node-0/new/ctl", f"{n}/ctl"} <= qids.keys()
    assert any(name.startswith("models/") for name in qids)
    assert_unique(qids)
    assert all(q < 1 << 32 for q in qids.values())
