"""Prometheus text exposition of a node's figures (`llamafs_` names)."""

from __future__ import annotations

import statistics


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
    return [
        ("llamafs_connections", "gauge", "9P connections open", {}, len(server.connections)),
        ("llamafs_fids", "gauge", "fids held on all connections", {}, server.fid_count()),
        ("llamafs_outstanding_requests", "gauge", "9P requests being answered", {}, server.outstanding_count()),
        ("llamafs_tasks", "gauge", "trio tasks alive", {}, count_tasks()),
    ]


def node_metrics(backend, tree) -> str:
    engine = backend.engine
    stats = engine.stats
    ttfts = [r.first_token - r.submitted for r in backend.recent if r.first_token]
    rate = stats.tokens_out / stats.decode_seconds if stats.decode_seconds else 0.0
    samples = [
        ("llamafs_model_loaded", "gauge", "1 if a model is loaded", {}, 1 if engine.loaded else 0),
        ("llamafs_sessions", "gauge", "open sessions", {}, len(tree.table.sessions)),
        ("llamafs_sessions_created_total", "counter", "sessions created", {}, tree.table.created),
        ("llamafs_requests_total", "counter", "prompts submitted", {}, stats.requests),
        ("llamafs_tokens_in_total", "counter", "prompt tokens evaluated", {}, stats.tokens_in),
        ("llamafs_tokens_out_total", "counter", "tokens generated", {}, stats.tokens_out),
        ("llamafs_tokens_per_second", "gauge", "generated tokens per second of decoding", {}, rate),
        ("llamafs_generating", "gauge", "turns being prefilled or generated", {}, engine.generating()),
        ("llamafs_queue_length", "gauge", "turns waiting for a sequence", {}, engine.queue_length()),
        ("llamafs_slots", "gauge", "sequences decoded together at most", {}, engine.slots),
        ("llamafs_evictions_total", "counter", "idle sessions whose KV cache was evicted", {}, stats.evictions),
        ("llamafs_decode_steps_total", "counter", "llama_decode calls", {}, stats.steps),
        ("llamafs_decode_seconds_total", "counter", "time spent in llama_decode", {}, stats.decode_seconds),
    ] + server_samples(tree.server)
    for q in (0.5, 0.9, 0.99):
        value = _quantile(ttfts, q)
        samples.append(("llamafs_time_to_first_token_seconds", "summary",
                        "time from submission to the first token, recent requests", {"quantile": str(q)}, value))
    return exposition(samples)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, int(q * 100) - 1)]
