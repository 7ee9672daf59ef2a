"""A turn as the engine runs it, and the engine's running figures: what
the scheduler (engine.py) keeps, and the node's metrics read."""

from __future__ import annotations

from dataclasses import dataclass, field

from .allocator import Conversation
from .reply import Reply
from .settings import Sampling
from .speculate import Drafter


@dataclass
class Turn:
    conversation: Conversation
    history: list[int]  # every token the conversation holds before this turn's reply
    sampling: Sampling
    reply: Reply
    said: bytes = b""  # the reply this turn continues: its grammar goes through it first
    # worker-thread state
    pending: list[int] = field(default_factory=list)  # still to prefill
    generated: int = 0
    sampler: object = None
    decoder: object = None
    held: bytes = b""  # text held back: it may be the start of a stop string
    next_token: int | None = None
    drafter: Drafter | None = None  # when the turn may draft (speculate.py)
    draft: list[int] = field(default_factory=list)  # drafted tokens in this step, after next_token


@dataclass
class Stats:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    decode_seconds: float = 0.0
    steps: int = 0
    evictions: int = 0
    tokens_reused: int = 0  # prompt tokens a turn found in the KV cache (its own, or shared)
    schedule_seconds: float = 0.0  # a step's time before llama_decode: sequences, the batch
    sample_seconds: float = 0.0  # and after it: sampling, text, stop strings, reports
    reasons: dict[str, int] = field(default_factory=dict)  # how replies ended: stop, length, context...
    tokens_drafted: int = 0  # speculative decoding: tokens drafted, and of them the ones kept
    tokens_accepted: int = 0
