"""A node's metrics file: Prometheus text, `llamafs_` names."""

from __future__ import annotations

import statistics

from styxfs.metrics import exposition, server_samples

from .reply import REASONS


def node_metrics(engine, recent, tree) -> str:
    """The node's metrics file: the engine's figures, the sessions', the server's."""
    stats = engine.stats
    ttfts = [r.first_token - r.submitted for r in recent if r.first_token]
    rate = stats.tokens_out / stats.decode_seconds if stats.decode_seconds else 0.0
    samples = [
        ("llamafs_model_loaded", "gauge", "1 if a model is loaded", {}, 1 if engine.loaded else 0),
        ("llamafs_sessions", "gauge", "open sessions", {}, len(tree.table.sessions)),
        ("llamafs_sessions_created_total", "counter", "sessions created", {}, tree.table.created),
        ("llamafs_sessions_reclaimed_total", "counter", "idle sessions closed at the cap to make room", {},
         tree.table.reclaimed),
        ("llamafs_requests_total", "counter", "prompts submitted", {}, stats.requests),
        ("llamafs_tokens_in_total", "counter", "prompt tokens evaluated", {}, stats.tokens_in),
        ("llamafs_prompt_tokens_reused_total", "counter", "prompt tokens found in the KV cache, not evaluated",
         {}, stats.tokens_reused),
        ("llamafs_tokens_out_total", "counter", "tokens generated", {}, stats.tokens_out),
        ("llamafs_tokens_per_second", "gauge", "generated tokens per second of decoding", {}, rate),
        ("llamafs_generating", "gauge", "turns being prefilled or generated", {}, engine.generating()),
        ("llamafs_queue_length", "gauge", "turns waiting for a sequence", {}, engine.queue_length()),
        ("llamafs_slots", "gauge", "sequences decoded together at most", {}, engine.slots),
        ("llamafs_evictions_total", "counter", "idle sessions whose KV cache was evicted", {}, stats.evictions),
    ] + [
        ("llamafs_replies_total", "counter", "replies ended, by why: stop, length, context, cancelled, error",
         {"reason": reason}, stats.reasons.get(reason, 0)) for reason in REASONS
    ] + [
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
