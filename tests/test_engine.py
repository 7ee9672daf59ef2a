"""The engine's scheduler on a fake model (tests/fakemodel.py): batching,
the batch budget, eviction, stop strings, cancel, the context.  No
llama.cpp: these run in milliseconds."""

from __future__ import annotations

import pytest
import trio

from styxfs.llama.engine import Conversation, Engine
from styxfs.llama.model import ModelSettings
from styxfs.llama.settings import Sampling
from styxfs.trioutil import Outbox

from .fakemodel import FakeModel, continuation, tokens_of

GREEDY = dict(temperature=0, repeatpenalty=1, speculate="off")  # the steps as scheduled: no drafts


@pytest.fixture
async def engine():
    """engine(slots=, batch=, ctx=, **FakeModel options) -> a started engine with its model loaded."""
    engines = []

    async def make(slots=4, batch=512, ctx=2048, prefix_cache=4096, share_prefixes=False, **options):
        opener = FakeModel.opener(**options)
        e = Engine(opener, slots=slots, prefix_cache=prefix_cache, share_prefixes=share_prefixes)
        e.start()
        engines.append(e)
        await e.load(ModelSettings(path="fake.gguf", ctx=ctx, batch=batch))
        e.model = opener.made[-1]
        return e

    yield make
    for e in engines:
        await trio.to_thread.run_sync(e.stop)


def submit(engine: Engine, conversation: Conversation, text: bytes, **settings):
    """A raw turn: the conversation so far and the text's tokens."""
    history = conversation.history + tokens_of(text, first=not conversation.history)
    return engine.submit(conversation, history, Sampling(**{**GREEDY, **settings}))


async def ended(reply):
    with trio.fail_after(5):
        await reply.wait()
    return reply


async def turn(engine: Engine, conversation: Conversation, text: bytes, **settings) -> bytes:
    reply = await ended(submit(engine, conversation, text, **settings))
    assert reply.state == "done", (reply.state, reply.error)
    return bytes(reply.text)


async def test_a_reply_is_the_models_continuation(engine):
    e = await engine()
    assert await turn(e, Conversation(), b"Once upon", maxtokens=12) == continuation(tokens_of(b"Once upon"), 12)
    assert e.model.samplers == 0  # every sampler freed


async def test_sessions_together_are_batched_and_equal_their_solo_replies(engine):
    e = await engine(slots=4)
    prompts = [b"one", b"two two", b"three three three", b"four"]
    async with trio.open_nursery() as n:
        got = {}

        async def run(p):
            got[p] = await turn(e, Conversation(), p, maxtokens=20)

        for p in prompts:
            n.start_soon(run, p)
    assert got == {p: continuation(tokens_of(p), 20) for p in prompts}
    # Once all four generate, a step holds one token of each.
    assert max(len(step) for step in e.model.steps if all(logits for *_, logits in step)) == 4


async def test_a_long_prompt_is_prefilled_in_chunks_within_the_batch_budget(engine):
    e = await engine(slots=2, batch=16, ctx=1 << 20)  # the first generates on until cancelled
    generating = Conversation()
    first = submit(e, generating, b"go", maxtokens=100_000)
    with trio.fail_after(5):
        while first.tokens_out < 3:
            await trio.sleep(0.001)
    long_prompt = b"x" * 100
    second = await turn(e, Conversation(), long_prompt, maxtokens=4)
    assert second == continuation(tokens_of(long_prompt), 4)
    e.cancel(first)
    with trio.fail_after(5):
        await first.wait()
    prefill_steps = [s for s in e.model.steps if any(seq == 1 and not logits for seq, _, _, logits in s)]
    assert len(prefill_steps) >= 100 // 16  # in chunks
    for step in prefill_steps:  # each within the budget, and the generation goes on in every one
        assert len(step) <= 16 and sum(1 for seq, *_ in step if seq == 0) == 1
    assert bytes(first.text) == continuation(tokens_of(b"go"), first.tokens_out)


async def test_an_idle_conversation_is_evicted_and_reevaluated_exactly(engine):
    e = await engine(slots=2)
    a, b, c = Conversation(), Conversation(), Conversation()
    reply_a = await turn(e, a, b"alpha", maxtokens=5)
    await turn(e, b, b"beta", maxtokens=5)
    await turn(e, c, b"gamma", maxtokens=5)  # takes a's sequence: a is the least recently used
    assert e.stats.evictions == 1 and a.seq is None
    again = await turn(e, a, b" more", maxtokens=5)
    history = tokens_of(b"alpha") + tokens_of(reply_a, False) + tokens_of(b" more", False)
    assert again == continuation(history, 5)


async def test_stop_strings_are_held_back_across_pieces_and_cut_the_reply(engine):
    e = await engine()
    whole = continuation(tokens_of(b"abc"), 40)
    stop = whole[10:13].decode()  # three tokens, one byte each: met across pieces
    reply = submit(e, Conversation(), b"abc", maxtokens=40, stop=(stop,))
    seen = []
    with trio.fail_after(5):
        while not reply.ended:
            seen.append(bytes(reply.text))
            await trio.sleep(0)
    cut = whole[: whole.index(stop.encode())]
    assert bytes(reply.text) == cut and reply.state == "done"
    assert all(stop.encode()[:1] not in s[len(cut):] for s in seen)  # never shown, not even in part
    # A stop string that never completes holds nothing back at the end.
    assert await turn(e, Conversation(), b"abc", maxtokens=40, stop=("zzzzzz",)) == whole


async def test_cancel_ends_a_turn_and_frees_its_sequence(engine):
    # A context too long to fill in the test's time: the long turns end only by cancel,
    # however slowly this thread is scheduled.
    e = await engine(slots=1, ctx=1_000_000)
    long = submit(e, Conversation(), b"long", maxtokens=100_000)
    queued = submit(e, Conversation(), b"next", maxtokens=3)
    with trio.fail_after(5):
        while long.tokens_out < 2:
            await trio.sleep(0.001)
    assert queued.state == "queued"
    e.cancel(long)
    with trio.fail_after(5):
        await long.wait()
        await queued.wait()
    assert long.state == "cancelled" and queued.state == "done"
    assert bytes(queued.text) == continuation(tokens_of(b"next"), 3)
    # Cancelled while still queued: it never runs.
    first = submit(e, Conversation(), b"a", maxtokens=100_000)
    waiting = submit(e, Conversation(), b"b", maxtokens=5)
    e.cancel(waiting)
    e.cancel(first)
    with trio.fail_after(5):
        await waiting.wait()
    assert waiting.state == "cancelled" and waiting.tokens_out == 0
    assert e.model.samplers == 0


async def test_end_of_generation_and_a_full_context_end_the_reply(engine):
    e = await engine(eog_after=8)
    reply = await turn(e, Conversation(), b"abc", maxtokens=100)  # 4 prompt tokens, then 4 more
    assert reply == continuation(tokens_of(b"abc"), 4)
    e2 = await engine(ctx=32)
    reply = await turn(e2, Conversation(), b"abc", maxtokens=1000)
    assert len(reply) < 32 - 4 + 1


async def test_a_prompt_longer_than_the_context_is_refused_at_submit(engine):
    from styxfs.llama.model import EngineError

    e = await engine(ctx=32)
    with pytest.raises(EngineError, match="prompt too long: 41 tokens > context 32"):
        submit(e, Conversation(), b"x" * 40)


# ---- shared prefixes ------------------------------------------------------------------------

PREFIX = b"You are a careful assistant. Answer in one line. " * 2  # 100 tokens


def evaluated(model: FakeModel, seq: int, since: int) -> int:
    """Prompt tokens evaluated for a sequence in the steps after `since`."""
    return sum(1 for step in model.steps[since:] for s, _, _, logits in step if s == seq and not logits)


async def test_a_prefix_of_the_same_users_other_session_is_shared_not_evaluated(engine):
    e = await engine(slots=4)
    a, b = Conversation("alice"), Conversation("alice")
    await turn(e, a, PREFIX + b"first question", maxtokens=4)
    before = len(e.model.steps)
    reply = await ended(submit(e, b, PREFIX + b"second question", maxtokens=4))
    # Only the tail is evaluated; the text is what the whole prompt gives.
    assert bytes(reply.text) == continuation(tokens_of(PREFIX + b"second question"), 4)
    assert reply.tokens_cached == len(tokens_of(PREFIX))
    assert evaluated(e.model, b.seq, before) == len(b"second question") - 1  # the last rides with the logits
    assert e.stats.tokens_reused >= len(tokens_of(PREFIX))


async def test_prefixes_are_not_shared_between_users_unless_told(engine):
    e = await engine(slots=4)
    await turn(e, Conversation("alice"), PREFIX + b"x", maxtokens=2)
    bob = Conversation("bob")
    reply = await ended(submit(e, bob, PREFIX + b"y", maxtokens=2))
    assert reply.tokens_cached == 0
    shared = await engine(slots=4, share_prefixes=True)
    await turn(shared, Conversation("alice"), PREFIX + b"x", maxtokens=2)
    reply = await ended(submit(shared, Conversation("bob"), PREFIX + b"y", maxtokens=2))
    assert reply.tokens_cached == len(tokens_of(PREFIX))


async def test_a_closed_sessions_prefix_is_kept_within_the_bound_and_goes_first(engine):
    e = await engine(slots=2, prefix_cache=150)
    gone = Conversation("alice")
    await turn(e, gone, PREFIX + b"old", maxtokens=2)
    e.forget(gone)
    later = Conversation("alice")
    reply = await ended(submit(e, later, PREFIX + b"new", maxtokens=2))
    assert reply.tokens_cached == len(tokens_of(PREFIX))
    assert bytes(reply.text) == continuation(tokens_of(PREFIX + b"new"), 2)
    # Two sequences: a third conversation takes the kept prefix's, not the live idle one's.
    third = Conversation("carol")
    await turn(e, third, b"something else entirely", maxtokens=2)
    assert later.seq is not None and e.stats.evictions == 0
    # Over the bound, nothing is kept.
    small = await engine(slots=2, prefix_cache=10)
    gone = Conversation("alice")
    await turn(small, gone, PREFIX, maxtokens=2)
    small.forget(gone)
    reply = await ended(submit(small, Conversation("alice"), PREFIX + b"new", maxtokens=2))
    assert reply.tokens_cached == 0


async def test_with_one_sequence_a_closed_sessions_prompt_is_taken_over_not_evaluated_again(engine):
    e = await engine(slots=1)
    gone = Conversation("alice")
    await turn(e, gone, PREFIX + b"same question", maxtokens=3)
    e.forget(gone)
    again = Conversation("alice")
    reply = await ended(submit(e, again, PREFIX + b"same question", maxtokens=3))
    assert reply.tokens_cached == len(tokens_of(PREFIX + b"same question")) - 1  # all but the last
    assert bytes(reply.text) == continuation(tokens_of(PREFIX + b"same question"), 3)
    other = Conversation("bob")  # another user's: cleared, not taken over
    reply = await ended(submit(e, other, PREFIX + b"same question", maxtokens=3))
    assert reply.tokens_cached == 0


async def test_turns_arriving_together_with_a_new_shared_prefix_evaluate_it_once(engine):
    e = await engine(slots=4, batch=32)
    convs = [Conversation("alice") for _ in range(4)]
    questions = [b"alpha?", b"beta?", b"gamma?", b"delta?"]  # no two begin alike
    replies = [submit(e, c, PREFIX + q, maxtokens=3) for c, q in zip(convs, questions)]  # all queued at once
    for reply in replies:
        await ended(reply)
    for reply, q in zip(replies, questions):
        assert bytes(reply.text) == continuation(tokens_of(PREFIX + q), 3)
    # The prefix is evaluated by one of them; the others copy it and evaluate their questions only.
    evaluated_in_all = sum(1 for step in e.model.steps for _, _, _, logits in step if not logits)
    assert evaluated_in_all == len(tokens_of(PREFIX)) + sum(len(q) - 1 for q in questions)
    assert sorted(r.tokens_cached for r in replies) == [0] + [len(tokens_of(PREFIX))] * 3
    # Another user's turn does not wait for, nor share, alice's prefix.
    e2 = await engine(slots=4, batch=32)
    a, b = submit(e2, Conversation("alice"), PREFIX + b"x", maxtokens=2), submit(e2, Conversation("bob"), PREFIX + b"y", maxtokens=2)
    await ended(a)
    await ended(b)
    assert a.tokens_cached == b.tokens_cached == 0


class Counting:
    """A trio token that counts the engine's wake-ups of the trio thread."""

    def __init__(self, token):
        self.token, self.calls = token, 0

    def run_sync_soon(self, fn, *args):
        self.calls += 1
        self.token.run_sync_soon(fn, *args)


def count_wakeups(e: Engine) -> Counting:
    e.outbox.token = counting = Counting(e.outbox.token)
    return counting


async def test_the_trio_side_is_woken_once_or_twice_a_step_not_once_a_token(engine):
    e = await engine(slots=4)
    counting = count_wakeups(e)
    steps = len(e.model.steps)
    prompts = [b"one", b"two", b"three", b"four"]
    replies = [submit(e, Conversation(), p, maxtokens=20) for p in prompts]
    for reply, p in zip(replies, prompts):
        assert bytes((await ended(reply)).text) == continuation(tokens_of(p), 20)  # every token arrived
    steps = len(e.model.steps) - steps
    assert sum(r.tokens_out for r in replies) == 80
    assert counting.calls <= 2 * steps + 2 < 80  # (+2: the waits between submissions)


async def test_a_replys_tokens_go_to_the_trio_side_together_and_all_arrive(engine):
    e = await engine(slots=1)
    counting = count_wakeups(e)
    e.outbox.interval = 3600  # no routine report goes for its own sake: only with a state
    steps = len(e.model.steps)
    reply = submit(e, Conversation(), b"one", maxtokens=40)
    assert bytes((await ended(reply)).text) == continuation(tokens_of(b"one"), 40)  # every token, in order
    assert len(e.model.steps) - steps >= 40
    assert counting.calls <= 4  # prefill, the first token's GENERATING, DONE (+1: the submission's wait)


def test_routine_reports_wait_and_any_other_takes_them_along_in_order():
    sent = []

    class Token:
        def run_sync_soon(self, fn, batch):
            sent.append([args for _, args in batch])

    box = Outbox(interval=3600)
    box.token = Token()
    box.add_routine(print, "a")
    box.send_due()
    assert sent == []  # a routine report waits for others
    box.add_routine(print, "b")
    box.add(print, "state")
    box.send_due()
    assert sent == [[("a",), ("b",), ("state",)]]
    box.add_routine(print, "c")
    box.interval = 0  # waited long enough
    box.send_due()
    assert sent[-1] == [("c",)]
