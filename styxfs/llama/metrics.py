"""A node's metrics file: Prometheus text, `llamafs_` names."""

from __future__ import annotations

import styxfs
from styxfs import metrics
from styxfs.metrics import Histogram, exposition

from .reply import REASONS, Reply

PREFIX = "llamafs"  # every metric's name begins with it, on a node and on a coordinator

TTFT_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_BOUNDS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500)


class ReplyFigures:
    """Histograms of ended replies: time to first token, and tokens per
    second of generating.  Replies are handed over when submitted and
    counted once they have ended: the pending ones are looked over at each
    submission and each read, so the list stays as long as what runs."""

    def __init__(self):
        self.pending: list[Reply] = []
        self.ttft = Histogram(TTFT_BOUNDS)
        self.rate = Histogram(RATE_BOUNDS)

    def add(self, reply: Reply) -> None:
        self.sweep()
        self.pending.append(reply)

    def sweep(self) -> None:
        running = []
        for reply in self.pending:
            if not reply.ended:
                running.append(reply)
            elif reply.first_token is not None:
                self.ttft.observe(reply.first_token - reply.submitted)
                generating = (reply.finished or reply.first_token) - reply.first_token
                if reply.tokens_out > 1 and generating > 0:
                    self.rate.observe((reply.tokens_out - 1) / generating)
        self.pending = running

    def samples(self, prefix: str = PREFIX) -> list:
        self.sweep()
        return (self.ttft.samples(f"{prefix}_time_to_first_token_seconds",
                                  "time from a prompt's submission to its reply's first token")
                + self.rate.samples(f"{prefix}_reply_tokens_per_second",
                                    "a reply's tokens per second, after its first"))


def server_samples(server) -> list:
    """The build, and the 9P server's own figures (none without a server)."""
    if server is None:
        return []
    build = ("llamafs_build_info", "gauge", "1, labelled with the llamafs version", {"version": styxfs.__version__}, 1)
    return [build] + metrics.server_samples(server, PREFIX)


def node_metrics(engine, figures: ReplyFigures, tree) -> str:
    """The node's metrics file: the engine's figures, the sessions', the server's."""
    stats = engine.stats
    rate = stats.tokens_out / stats.decode_seconds if stats.decode_seconds else 0.0
    samples = [
        ("llamafs_model_loaded", "gauge", "1 if a model is loaded", {}, 1 if engine.loaded else 0),
        ("llamafs_sessions", "gauge", "open sessions", {}, len(tree.table.sessions)),
        ("llamafs_max_sessions", "gauge", "the cap on open sessions", {}, tree.table.max_sessions),
        ("llamafs_sessions_created_total", "counter", "sessions created", {}, tree.table.created),
        ("llamafs_sessions_reclaimed_total", "counter", "idle sessions closed at the cap to make room", {},
         tree.table.reclaimed),
        ("llamafs_requests_total", "counter", "prompts submitted", {}, stats.requests),
        ("llamafs_tokens_in_total", "counter", "prompt tokens evaluated", {}, stats.tokens_in),
        ("llamafs_prompt_tokens_reused_total", "counter", "prompt tokens found in the KV cache, not evaluated",
         {}, stats.tokens_reused),
        ("llamafs_tokens_out_total", "counter", "tokens generated", {}, stats.tokens_out),
        ("llamafs_draft_tokens_total", "counter", "tokens drafted from n-grams (speculative decoding)", {},
         stats.tokens_drafted),
        ("llamafs_draft_tokens_accepted_total", "counter", "drafted tokens kept: the model sampled them", {},
         stats.tokens_accepted),
        ("llamafs_tokens_per_second", "gauge", "generated tokens per second of decoding, since the start", {},
         rate),
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
    ] + [
        ("llamafs_step_seconds_total", "counter",
         "the engine's time by part of a step: schedule (before llama_decode), decode, sample (after)",
         {"phase": phase}, seconds)
        for phase, seconds in (("schedule", stats.schedule_seconds), ("decode", stats.decode_seconds),
                               ("sample", stats.sample_seconds))
    ] + figures.samples() + server_samples(tree.server)
    return exposition(samples)
