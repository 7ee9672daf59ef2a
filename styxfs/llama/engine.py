"""The node's engine: the scheduler between sessions and one model.

Every generating conversation has a sequence of its own in one shared
context; each step is one decode holding one token per generating sequence
plus chunks of prompts being prefilled (continuous batching), so sessions
make progress together and a long prompt cannot stall the others.  A
generating sequence may add a draft of tokens after its own, taken from its
n-grams (`speculate.py`): the step verifies them too.  Which
sequence a turn runs in, and which cells there it keeps, copies from another
or clears, the allocator (`allocator.Allocator`) decides; the worker applies
its decisions to the model.

The model (`model.Model`: llama.cpp, or a fake in tests) lives in one worker
thread that the engine owns.  The trio side calls `submit`, `cancel`,
`load` and `unload`; the worker reports back with `run_sync_soon`, so the
trio loop never waits on the model.
"""

from __future__ import annotations

import codecs
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Callable

import trio

from styxfs.trioutil import Outbox

from . import errors
from .allocator import Allocator, Clear, Conversation, Copy, Op, Trim, common_prefix
from .model import EngineError, Model, ModelInfo, ModelOpener, ModelSettings
from .reply import Reply, ReplyState, reason_for
from .settings import ENGINE_REPORT_INTERVAL, ENGINE_STOP_SECONDS, NODE, Sampling
from .speculate import Drafter, KeptRates, Memories, StepCosts, mode_limit
from .stops import apply_stops
from .turn import Stats, Turn

__all__ = ["Conversation", "Engine", "Stats", "Turn"]

log = logging.getLogger("styxfs.llama.engine")


# ---- the engine ------------------------------------------------------------------


class Engine:
    def __init__(self, open_model: ModelOpener, slots: int = NODE["slots"].default,
                 prefix_cache: int = NODE["prefixcache"].default, share_prefixes: bool = False,
                 costs: StepCosts | None = None):
        self.open_model = open_model
        self.slots = slots
        self.sequences = Allocator(slots, prefix_cache, share_prefixes)  # worker thread only
        self.info: ModelInfo | None = None
        self.stats = Stats()
        self.costs = costs or StepCosts()  # what a step of so many tokens takes: how far drafts pay
        self.memories = Memories()  # what each user's turns said, to draft from (worker thread only)
        self.kept = KeptRates()  # how often drafts were kept, by the match they followed (worker thread only)
        self.queued: list[Turn] = []  # worker thread only
        self.active: list[Turn] = []
        self.unfinished: set[Reply] = set()  # trio side: for the queue's figures
        self.commands: queue.Queue = queue.Queue()
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self._llama: Model | None = None  # the worker's model while one is loaded
        self._vocab_lock = threading.Lock()  # tokenising against load/unload
        # Reports for the trio side, sent before and after llama_decode when due: a reply's
        # tokens wait up to ENGINE_REPORT_INTERVAL for later ones, anything else goes at once.
        self.outbox = Outbox(ENGINE_REPORT_INTERVAL)

    # -- trio side ---------------------------------------------------------------

    def start(self) -> None:
        self.outbox.token = trio.lowlevel.current_trio_token()
        self.thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.commands.put(("stop", None, None))
            self.wakeup.set()
            self.thread.join(timeout=ENGINE_STOP_SECONDS)
            self.thread = None

    @property
    def loaded(self) -> bool:
        return self.info is not None

    async def _call(self, name: str, *args):
        done = trio.Event()
        result: list = []

        def finish(outcome):
            result.append(outcome)
            done.set()

        self.commands.put((name, args, finish))
        self.wakeup.set()
        with trio.CancelScope(shield=True):  # the worker finishes what it started
            await done.wait()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    async def load(self, settings: ModelSettings, progress: Callable[[float], None] | None = None) -> ModelInfo:
        """Load a model (replacing the loaded one only if this one loads)."""
        info = await self._call("load", settings, progress)
        self.info = info
        return info

    async def unload(self) -> None:
        await self._call("unload")
        self.info = None

    def tokenize(self, text: bytes, first: bool) -> list[int]:
        with self.vocabulary() as model:
            return model.tokenize(text, add_special=first)

    @contextmanager
    def vocabulary(self) -> Iterator[Model]:
        """The model, for its vocabulary alone (tokenize, piece, detokenize),
        held against load and unload; any thread."""
        with self._vocab_lock:
            if self._llama is None:
                raise EngineError(errors.NOT_LOADED.format())
            yield self._llama

    def check_grammar(self, gbnf: str) -> None:
        """EngineError unless the grammar parses against the loaded vocabulary."""
        with self._vocab_lock:
            if self._llama is None:
                raise EngineError(errors.NOT_LOADED.format())
            self._llama.check_grammar(gbnf)

    def submit(self, conversation: Conversation, history: list[int], sampling: Sampling,
               dropped: int = 0, said: bytes = b"") -> Reply:
        """Queue a turn: the conversation is to hold history (what it held and
        the new prompt, or a re-rendered chat) and go on from there.  Only
        what its KV cache lacks is evaluated.  The reply is returned at once
        (state queued).  Call between turns of the conversation: history was
        made from conversation.history, which the worker owns during a turn."""
        if self.info is None:
            raise EngineError(errors.NOT_LOADED.format())
        if len(history) + 1 > self.info.context:
            raise EngineError(errors.PROMPT_TOO_LONG.format(what=f"{len(history)} tokens > context {self.info.context}"))
        reply = Reply(len(history) - common_prefix(conversation.history, history))
        reply.tokens_dropped = dropped
        turn = Turn(conversation, history, sampling.copy(), reply, said)
        self.stats.requests += 1
        self.unfinished.add(reply)
        # Through the command queue, so that it is ordered after a reset.
        self.commands.put(("enqueue", (turn,), None))
        self.wakeup.set()
        return reply

    def cancel(self, reply: Reply) -> None:
        """Stop a turn: the worker sees the flag before its next token."""
        reply.cancel_requested = True
        self.wakeup.set()

    def forget(self, conversation: Conversation) -> None:
        """A session is reset or closed: free its sequence."""
        self.commands.put(("forget", (conversation,), None))
        self.wakeup.set()

    def queue_length(self) -> int:
        """Turns waiting for a sequence (as the trio side has been told)."""
        self.unfinished = {r for r in self.unfinished if not r.ended}
        return sum(1 for r in self.unfinished if r.state == ReplyState.QUEUED)

    def generating(self) -> int:
        self.unfinished = {r for r in self.unfinished if not r.ended}
        return sum(1 for r in self.unfinished if r.state in (ReplyState.PREFILL, ReplyState.GENERATING))

    # -- worker thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self.outbox.send()

    def _serve(self) -> None:
        while True:
            if not self.active and not self.queued:
                self.outbox.send()
                self.wakeup.wait()
            self.wakeup.clear()
            while True:
                try:
                    name, args, finish = self.commands.get_nowait()
                except queue.Empty:
                    break
                if name == "stop":
                    self._unload()
                    return
                try:
                    outcome = (True, getattr(self, "_" + name)(*(args or ())))
                except Exception as e:  # noqa: BLE001 - reported to the caller
                    outcome = (False, e)
                if finish is not None:
                    self.outbox.add(finish, outcome)
            try:
                self._step()
            except Exception:
                log.exception("engine step failed")
                self._fail_all(errors.ENGINE_FAILED.format())
            self.outbox.send_due()

    def _load(self, settings: ModelSettings, progress) -> ModelInfo:
        new = self.open_model(settings, self.slots, progress and (lambda f: self._progress(progress, f)))
        self._unload()
        with self._vocab_lock:
            self._llama = new
        self.costs.forget()  # another model's steps take other times
        self.memories.forget()  # and its tokens are other tokens
        self.kept.forget()
        return new.info

    def _progress(self, progress, fraction: float) -> None:
        self.outbox.add(progress, fraction)
        self.outbox.send()

    def _unload(self) -> None:
        self._fail_all(errors.UNLOADED.format())
        with self._vocab_lock:
            llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()

    def _enqueue(self, turn: Turn) -> None:
        self.queued.append(turn)

    def _forget(self, conversation: Conversation) -> None:
        mine = [t for t in self.queued + self.active if t.conversation is conversation]
        self.queued = [t for t in self.queued if t.conversation is not conversation]
        self.active = [t for t in self.active if t.conversation is not conversation]
        for turn in mine:
            self._finish(turn, ReplyState.CANCELLED)
        self._apply(self.sequences.leave(conversation))
        conversation.history = []

    def _apply(self, ops: Iterable[Op]) -> None:
        """Do to the model's sequences what the allocator decided."""
        llama = self._llama
        if llama is None:
            return
        for op in ops:
            match op:
                case Clear(seq):
                    llama.clear_seq(seq)
                case Trim(seq, keep):
                    llama.trim_seq(seq, keep)
                case Copy(src, dst, count):
                    llama.copy_seq(src, dst, count)

    def _fail_all(self, why: str) -> None:
        turns, self.queued, self.active = self.queued + self.active, [], []
        for turn in turns:
            if turn.draft:  # a step that failed before its sampling: its drafts were never shown
                del turn.conversation.history[-len(turn.draft):]
                turn.draft = []
            self._finish(turn, ReplyState.ERROR, why)
        # Sequences are gone: every conversation must be re-evaluated.
        self._apply(self.sequences.release_all())

    def _finish(self, turn: Turn, state: str, error: str | None = None, reason: str | None = None) -> None:
        why = reason_for(state, reason) or "stop"
        self.stats.reasons[why] = self.stats.reasons.get(why, 0) + 1
        if turn.held and state in (ReplyState.DONE, ReplyState.CANCELLED):
            self.outbox.add(turn.reply.append, turn.held, 0)
            turn.held = b""
        self.sequences.finished(turn.conversation)
        if turn.sampler is not None:
            self._llama.free_sampler(turn.sampler)
            turn.sampler = None
        self.outbox.add(turn.reply.set_state, state, error, reason)

    def _assign_sequences(self) -> None:
        """Give queued turns a sequence, as the allocator decides."""
        llama = self._llama
        queued = list(self.queued)
        waiting = {t.conversation for t in queued}  # not evicted for one another
        for turn in queued:
            conv = turn.conversation
            if turn.reply.cancel_requested:
                self.queued.remove(turn)
                conv.history = list(turn.history)
                self._finish(turn, ReplyState.CANCELLED)
                continue
            placed = self.sequences.place(conv, list(turn.history), waiting)
            if placed is None:
                continue  # its last turn runs, its prefix is coming, or no sequence is free
            self.queued.remove(turn)
            self.active.append(turn)
            self._apply(placed.ops)
            self.stats.evictions += placed.evicted
            self.stats.tokens_reused += placed.reused
            turn.pending = conv.history[placed.reused:]
            try:
                turn.sampler = llama.make_sampler(turn.sampling, conv.history, turn.said)
            except EngineError as e:  # its grammar: refused, or not one to go on from what was said
                self._retire(turn, ReplyState.ERROR, error=str(e))
                continue
            turn.decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
            s = turn.sampling
            most, adaptive = mode_limit(s.speculate, s.temperature <= 0, bool(s.grammar or s.schema))
            turn.drafter = Drafter(most, adaptive, self.kept) if most else None
            self.outbox.add(_set_prefill, turn.reply, len(turn.pending), placed.reused)

    def _step(self) -> None:
        llama = self._llama
        if llama is None:
            return
        scheduling = time.perf_counter()
        self._assign_sequences()
        for turn in [t for t in self.active if t.reply.cancel_requested]:
            if turn.next_token is not None:  # its text went to the reply: in the conversation, not the cache
                turn.conversation.history.append(turn.next_token)
            self._retire(turn, ReplyState.CANCELLED)
        if not self.active:
            return
        # One token per generating sequence first (and its draft, in what room prompts leave), then
        # prompt chunks.
        entries: list[tuple[Turn, int, int, bool]] = []  # turn, token, position, wants logits
        rows: list[tuple[Turn, int]] = []  # a turn, and the entry of its first logits
        generating = [t for t in self.active if t.next_token is not None]
        budget = llama.batch_size
        # Drafts take only the room that prompts waiting leave: a draft is a guess, a prompt is not.
        for_prompts = min(sum(len(t.pending) for t in self.active), budget - len(generating))
        step_tokens = len(generating) + for_prompts
        expected = float(len(generating))  # reply tokens the step is expected to make
        for i, turn in enumerate(generating):
            conv = turn.conversation
            draft = self._draft(turn, step_tokens, expected, budget - (len(generating) - i) - for_prompts)
            if draft:
                step_tokens += len(draft)
                expected += turn.drafter.expected(len(draft)) - 1
            tokens = [turn.next_token] + draft
            turn.draft, turn.next_token = draft, None
            rows.append((turn, len(entries)))
            start = len(conv.cached)
            entries += [(turn, token, start + i, True) for i, token in enumerate(tokens)]
            conv.cached += tokens
            conv.history += tokens
            budget -= len(tokens)
        for turn in self.active:
            if turn.pending and budget > 0:
                chunk, turn.pending = turn.pending[:budget], turn.pending[budget:]
                start = len(turn.conversation.cached)
                for i, token in enumerate(chunk):
                    entries.append((turn, token, start + i, not turn.pending and i == len(chunk) - 1))
                if not turn.pending:
                    rows.append((turn, len(entries) - 1))
                turn.conversation.cached += chunk
                budget -= len(chunk)
                self.stats.tokens_in += len(chunk)
        batch = [(turn.conversation.seq, token, pos, logits) for turn, token, pos, logits in entries]
        self.outbox.send_due()  # turns that began prefill say so now, not after the step
        started = time.perf_counter()
        llama.decode(batch)
        decoded = time.perf_counter()
        for turn, row in rows:
            self._sample(turn, row)
        sampled = time.perf_counter()
        if all(wants for *_, wants in batch):
            # Only steps of reply tokens alone measure what a drafted token costs: a prompt's
            # tokens have no logits to compute nor sample, and would make large steps look cheap.
            self.costs.record(len(batch), sampled - started)
        stats = self.stats
        stats.schedule_seconds += started - scheduling
        stats.decode_seconds += decoded - started
        stats.sample_seconds += sampled - decoded
        stats.steps += 1

    def _draft(self, turn: Turn, step_tokens: int, expected: float, budget: int) -> list[int]:
        """The tokens a generating turn drafts in a step of step_tokens so far
        (expected to make `expected` reply tokens), if any pay: never past
        its maxtokens or its context, nor past the step's budget."""
        drafter = turn.drafter
        if drafter is None:
            return []
        conv = turn.conversation
        room = min(budget, turn.sampling.maxtokens - turn.generated - 1,
                   self._llama.seq_context - 3 - len(conv.cached))
        return drafter.draft(conv.history, turn.next_token, room, self.memories.get(conv.group),
                             self.costs, step_tokens, expected)

    def _sample(self, turn: Turn, row: int) -> None:
        """Sample the turn's next token from the logits at row; with a
        draft, go on through the drafted positions while each sampled
        token is the drafted one, then unwind the rest of the draft."""
        llama = self._llama
        conv = turn.conversation
        draft, turn.draft = turn.draft, []
        if turn.generated == 0:
            self.outbox.add(turn.reply.set_state, ReplyState.GENERATING)
        for j in range(len(draft) + 1):
            unverified = len(draft) - j  # drafted tokens after this row's
            try:
                token = llama.sample(turn.sampler, row + j)
            except EngineError as e:  # a grammar that cannot go on: this turn ends, the others go on
                self._unwind(turn, draft, j, unverified)
                self._retire(turn, ReplyState.ERROR, error=str(e))
                return
            kept = j < len(draft) and token == draft[j]
            if llama.is_eog(token):
                self._unwind(turn, draft, j + kept, unverified)
                self._retire(turn, ReplyState.DONE, "stop")
                return
            reason = self._emit(turn, token, len(conv.cached) - unverified)
            if reason is not None or not kept:
                self._unwind(turn, draft, j + kept, unverified)
            if reason is not None:
                conv.history.append(token)  # in the conversation, not yet in the cache
                self._retire(turn, ReplyState.DONE, reason)
                return
            if not kept:
                turn.next_token = token
                return

    def _emit(self, turn: Turn, token: int, cached: int) -> str | None:
        """A sampled token's text to the reply (cached: tokens the sequence
        holds before it); why the turn ends with it, or None."""
        llama = self._llama
        turn.generated += 1
        self.stats.tokens_out += 1
        text = turn.decoder.decode(llama.piece(token)).encode("utf-8")
        stopped = False
        if turn.sampling.stop:
            text, turn.held, stopped = apply_stops(turn.sampling.stop, turn.held + text)
        self.outbox.add_routine(turn.reply.append, text, 1)
        if stopped:
            return "stop"
        if turn.generated >= turn.sampling.maxtokens:
            return "length"
        if cached + 1 >= llama.seq_context:
            return "context"
        return None

    def _unwind(self, turn: Turn, draft: list[int], kept: int, unverified: int) -> None:
        """The draft's outcome: its first `kept` tokens were sampled; the
        sequence forgets the last `unverified` tokens it holds."""
        if draft:
            turn.drafter.verified(len(draft), kept)
            self.stats.tokens_drafted += len(draft)
            self.stats.tokens_accepted += kept
            self.outbox.add_routine(_count_drafts, turn.reply, len(draft), kept)
        if unverified:
            conv = turn.conversation
            del conv.cached[-unverified:]
            del conv.history[-unverified:]
            self._llama.trim_seq(conv.seq, len(conv.cached))

    def _retire(self, turn: Turn, state: str, reason: str | None = None, error: str | None = None) -> None:
        if turn in self.active:
            self.active.remove(turn)
        if turn.drafter is not None and state == ReplyState.DONE:
            self.memories.learn(turn.conversation.group, turn.conversation.history)
        self._finish(turn, state, error, reason=reason)


def _set_prefill(reply: Reply, tokens: int, cached: int = 0) -> None:
    reply.tokens_in, reply.tokens_cached = tokens, cached
    reply.set_state(ReplyState.PREFILL)


def _count_drafts(reply: Reply, drafted: int, accepted: int) -> None:
    reply.tokens_drafted += drafted
    reply.tokens_accepted += accepted
