"""The coordinator's tree: the node's namespace (styxfs.llama.namespace)
over forwarding sessions (forwarding.py) and the coordinator's root files
(control.py, with nodes/ from proxy.py).  A coordinator thus serves the
same tree as a node, and can itself be a node of another coordinator."""

from __future__ import annotations

from styxfs.llama.namespace import LlamaTree
from styxfs.llama.settings import REQUEST_TIMEOUT

from .control import CoordinatorRoot
from .forwarding import ForwardingSessions
from .pool import Pool
from .proxy import Proxy


def make_union(pool: Pool, *, name: str = "llamafs", failover: bool = True, request_timeout: float = REQUEST_TIMEOUT,
               scaler=None, **tree_options) -> tuple[ForwardingSessions, CoordinatorRoot, LlamaTree]:
    """tree_options: LlamaTree's (max_sessions, session_timeout, owner)."""
    sessions = ForwardingSessions(pool, failover=failover, request_timeout=request_timeout)
    proxy = Proxy(pool, request_timeout)
    root = CoordinatorRoot(pool, sessions, proxy, name=name, scaler=scaler)
    tree = LlamaTree(sessions, root, **tree_options)
    proxy.check_owner = tree.check_owner
    return sessions, root, tree
