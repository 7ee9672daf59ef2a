"""Prometheus text exposition, and a 9P server's own figures (`llamafs_` names)."""

from __future__ import annotations


def exposition(samples: list[tuple[str, str, str, dict[str, str], float]]) -> str:
    """(name, type, help, labels, value) rows as Prometheus text, one
    HELP/TYPE header per name."""
    out, seen = [], set()
    for name, kind, help_text, labels, value in samples:
        if name not in seen:
            seen.add(name)
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def _escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def count_tasks() -> int:
    """Tasks alive in this trio run (for leak checks)."""
    import trio

    def walk(task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def server_samples(server) -> list:
    """The 9P server's own figures: what a leak would show in."""
    if server is None:
        return []
    from . import __version__

    return [
        ("llamafs_build_info", "gauge", "1, labelled with the llamafs version", {"version": __version__}, 1),
        ("llamafs_connections", "gauge", "9P connections open", {}, len(server.connections)),
        ("llamafs_fids", "gauge", "fids held on all connections", {}, server.fid_count()),
        ("llamafs_outstanding_requests", "gauge", "9P requests being answered", {}, server.outstanding_count()),
        ("llamafs_tasks", "gauge", "trio tasks alive", {}, count_tasks()),
    ]
