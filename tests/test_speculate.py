"""Speculative decoding (styxfs/llama/speculate.py and the engine's drafts):
the drafter's logic alone, then the engine on the fake model, where a reply
with drafts must be the reply without them, token for token; and the tiny
model through a node, where llama.cpp's own logits decide."""

from __future__ import annotations

import pytest
import trio

from styxfs import client
from styxfs.llama.engine import Conversation, Engine
from styxfs.llama.model import ModelSettings
from styxfs.llama.settings import Sampling
from styxfs.llama.speculate import (AUTO_MATCH, COST_STALE, COST_WEIGHT, Drafter, KeptRates, Memories, Memory, StepCosts,
                                    agreeing, copy_on, mode_limit, prior_cost)

from .fakemodel import BOS, EOG, FakeModel, StepGate, tokens_of
from .support import ask, greedy, new_session, status_fields

GREEDY = dict(temperature=0, repeatpenalty=1)
PASSAGE = b"the cat sat on the mat; a dog ran to the log. "


# ---- the drafter alone -------------------------------------------------------------------


class PriorCosts(StepCosts):
    """Step costs that stay the prior's: the fake model's steps take no time
    worth measuring, and these tests are about the drafts, not their price."""

    def record(self, tokens: int, seconds: float) -> None:
        pass


def test_a_draft_is_what_followed_the_longest_ngram_that_ends_here():
    d = Drafter(most=8, adaptive=False)
    history = [1, 2, 3, 4, 5, 6, 9, 9, 3, 4]
    assert d.propose(history, 5, 3) == [6, 9, 9]  # 3 4 5 occurred: 6 9 9 followed
    d = Drafter(most=8, adaptive=False)
    assert d.propose([7, 1, 2, 8, 3, 1, 2, 9], 1, 4) == []  # 9 1 never occurred: no 1-gram guesses
    d = Drafter(most=8, adaptive=False)
    assert d.propose([1, 2, 8, 1, 2, 9], 7, 4) == []
    assert d.propose([1, 2, 8, 1, 2, 9, 7, 1], 2, 4) == [9, 7, 1, 2]  # the latest 1 2, and it runs on


def test_a_turn_indexes_only_the_latest_tokens_of_its_conversation(monkeypatch):
    from styxfs.llama import speculate

    monkeypatch.setattr(speculate, "SPECULATE_WINDOW", 30)
    far = [1, 2, 3, 4, 5] + list(range(100, 140)) + [1, 2, 3, 4]  # 1 2 3 4 5: 44 tokens back
    assert Drafter(most=8, adaptive=False).propose(far, 5, 2) == []  # past the window: not indexed
    near = list(range(100, 140)) + [1, 2, 3, 4, 5] + list(range(200, 210)) + [1, 2, 3, 4]
    assert Drafter(most=8, adaptive=False).propose(near, 5, 2) == [200, 201]
    d = Drafter(most=8, adaptive=False)
    assert d.propose(far, 5, 2) == []
    grown = far + [5] + list(range(300, 320)) + [1, 2, 3, 4]  # the turn's own tokens: indexed as they come
    assert d.propose(grown, 5, 2) == [300, 301]


def test_auto_drafts_only_after_a_long_match():
    short = [1, 2, 3, 7, 7, 1, 2]  # then 3: a 3-gram match, 7 7 followed it
    assert Drafter(most=8, adaptive=False).propose(short, 3, 2) == [7, 7]
    assert Drafter(most=8, adaptive=True).propose(short, 3, 2) == []
    run = list(range(10, 10 + AUTO_MATCH))
    long = run + [7, 7] + run[:-1]  # then the run's last: a match of AUTO_MATCH tokens
    assert Drafter(most=8, adaptive=True).propose(long, run[-1], 2) == [7, 7]


def test_a_draft_follows_the_tokens_as_they_grow():
    d = Drafter(most=8)
    history = list(range(10, 20)) + [10, 11, 12, 13]
    assert d.propose(history, 14, 2) == [15, 16]
    history += [14, 15]  # 14 was sampled, 15 kept from the draft
    assert d.propose(history, 16, 3) == [17, 18, 19]


def test_a_draft_in_a_loop_runs_on_past_the_latest_tokens():
    assert copy_on([5, 1, 2, 3, 1, 2, 3], 4, 7) == [1, 2, 3, 1, 2, 3, 1]  # 1 2 3 followed 1 2 3: again and again
    assert copy_on([1, 2, 3, 4, 1, 2], 2, 2) == [3, 4]  # what followed is all there
    d = Drafter(most=32)
    loop = [9, 8] + [1, 2, 3] * 4
    assert d.propose(loop[:-1], loop[-1], 10) == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert d.match == 9  # the loop so far, less its first round


def test_a_match_is_measured_back_as_far_as_the_tokens_agree():
    tokens = [7, 1, 2, 3, 4, 5, 6, 0, 2, 3, 4, 5, 6]
    assert agreeing(tokens, 7) == 5  # 2 3 4 5 6, then 1 against 0
    assert agreeing(list(range(100)) * 2, 100) == KeptRates.class_of(1000)  # as far as the longest class at most


def test_drafts_after_longer_matches_are_trusted_further():
    rates = KeptRates()
    assert rates.rate(5) < rates.rate(12) < rates.rate(40)  # the priors
    assert rates.class_of(3) == 2 and rates.class_of(13) == 12 and rates.class_of(1000) == 32
    for _ in range(20):
        rates.record(13, False, 4, 0)  # drafts after 12-15 tokens keep failing on this node
    assert rates.rate(12) < 0.5 < rates.rate(16)
    assert rates.rate(12, mixed=True) == KeptRates().rate(12, mixed=True)  # kept apart
    rates.forget()  # another model
    assert rates.rate(12) == KeptRates().rate(12)
    costs = StepCosts()  # the prior curve
    d = Drafter(most=32)
    for _ in range(40):
        d.verified(8, 8)  # this turn's drafts were all kept
    d.match = 5  # as after a proposal that follows a match of 5 tokens
    short = d.length(costs, 1, 1.0, room=100)
    d.match = 40
    assert 1 <= short < d.length(costs, 1, 1.0, room=100)


def test_a_match_whose_ngram_was_followed_by_different_tokens_is_trusted_less():
    d = Drafter(most=8)
    run = list(range(10, 10 + AUTO_MATCH))
    assert d.propose(run + [1, 2] + run[:-1], run[-1], 2) == [1, 2]
    assert not d.mixed  # the run was followed by 1 each time
    assert d.propose(run + [1, 2] + run + [3, 4] + run[:-1], run[-1], 2) == [3, 4]  # the latest
    assert d.mixed and d.likely() == KeptRates().rate(AUTO_MATCH, mixed=True) < KeptRates().rate(AUTO_MATCH)


def test_draft_length_follows_acceptance_and_the_batch():
    costs = StepCosts()  # nothing measured: the prior curve
    d = Drafter(most=8)
    d.match = 16  # as after a proposal that follows a match of 16 tokens
    assert d.length(costs, 1, 1.0, room=100) >= 1  # a first try at one sequence
    assert d.length(costs, 1, 1.0, room=0) == 0
    for _ in range(5):
        d.verified(8, 8)
    assert d.length(costs, 1, 1.0, room=100) == 8  # every draft kept: the most
    assert d.length(costs, 1, 1.0, room=3) == 3
    one, full = d.length(costs, 1, 1.0, 100), d.length(costs, 64, 64.0, 100)
    assert 0 <= full < one  # a full step makes its tokens cheaply without drafts
    for _ in range(10):
        d.verified(4, 0)
    assert d.length(costs, 1, 1.0, room=100) == 0  # drafts keep failing: none
    for _ in range(200):
        d.no_draft()
    assert d.length(costs, 1, 1.0, room=100) >= 1  # and later it tries again
    assert Drafter(most=5, adaptive=False).length(costs, 64, 64.0, room=100) == 5  # `speculate N`: N


def test_draft_length_follows_what_steps_were_measured_to_cost():
    d = Drafter(most=8)
    d.match = 40  # a loop
    cheap, dear = StepCosts(), StepCosts()
    for _ in range(50):  # measured often
        for n in range(1, 10):
            cheap.record(n, 0.010 + 0.001 * (n - 1))  # a token more adds a tenth of a step
            dear.record(n, 0.010 * n)  # a token more costs a step: drafts never pay
    assert d.length(cheap, 1, 1.0, room=100) == 8
    assert d.length(dear, 1, 1.0, room=100) == 0


def test_step_costs_are_ratios_to_a_one_token_step_averaged_and_estimated():
    costs = StepCosts()
    assert costs.seconds(4) == prior_cost(4)  # nothing measured: the prior curve
    for _ in range(300):  # measured often: the averages settle
        costs.record(1, 0.010)
        costs.record(2, 0.018)
        costs.record(8, 0.050)
    assert costs.seconds(1) == pytest.approx(0.010)
    assert costs.seconds(2) == pytest.approx(0.018) and costs.seconds(8) == pytest.approx(0.050)
    assert costs.seconds(5) == pytest.approx(0.018 + (0.050 - 0.018) / 2)  # on the line between 2 and 8
    # Past the largest measured, a token more adds the prior's part of a one-token step, not
    # the curve scaled from there: a first token more may cost most, and a long draft is tried.
    assert costs.seconds(30) == pytest.approx(0.050 + 22 * 0.010 * (prior_cost(2) - 1))
    for _ in range(200):
        costs.record(1, 0.020)  # the machine (or the context) got slower: every size with it
    assert costs.seconds(8) == pytest.approx(0.100)
    costs.record(8, 1.0)  # a step the machine stalled in moves its size's price a bounded part
    assert costs.seconds(8) == pytest.approx(0.100 * (1 + COST_WEIGHT))
    estimate = costs.ratio(3)
    costs.record(3, 0.060)  # a size's first measurement is taken half and half with the estimate
    assert costs.ratio(3) == pytest.approx((estimate + 3.0) / 2)
    for _ in range(COST_STALE):
        costs.record(1, 0.010)  # 2, 3 and 8 not measured since: their price may have changed
    assert costs.sizes == [] and costs.seconds(8) == pytest.approx(0.010 * prior_cost(8))
    costs.forget()  # another model
    assert costs.seconds(8) == prior_cost(8)
    costs.record(1, 0.0)  # a clock that did not move: nothing learned, nothing divided by
    costs.record(2, 0.0)
    costs.record(2, 0.020)
    assert costs.seconds(2) == pytest.approx(0.020) and costs.steps == 1


def test_a_memory_drafts_what_followed_last_time_and_keeps_the_latest():
    m = Memory(limit=100)
    said = list(range(100, 120))
    m.learn(said)
    assert m.follow([7, 7] + said[:6], AUTO_MATCH, 4) == (said[6:10], 6)  # the longest n-gram ending there
    assert m.follow([7, 7, 7, 7, 7, 100], AUTO_MATCH, 4) == ([], 0)  # too short a match for `auto`
    assert m.follow([7, 100, 101], 2, 3) == ([102, 103, 104], 2)  # `speculate N`: from 2-grams on
    m.learn([100, 101, 102, 103, 104, 200, 201])  # said differently since: the latest wins
    assert m.follow([100, 101, 102, 103, 104], AUTO_MATCH, 2) == ([200, 201], 5)
    d = Drafter(most=8)
    assert d.propose([5, 6, 100, 101, 102, 103], 104, 2, m) == [200, 201]  # no match of its own: the memory's
    assert d.match == 5
    m.learn(list(range(300, 320)))
    assert len(m.after) == 100
    assert m.follow(list(range(300, 310)), AUTO_MATCH, 1) == ([310], 8)  # the latest kept
    assert m.follow(said[:6], AUTO_MATCH, 1) == ([], 0)  # the oldest gone


def test_memories_are_per_user_and_the_latest_users_kept():
    ms = Memories(users=2)
    ms.learn("ann", [1, 2, 3])
    ms.learn("bob", [4, 5, 6])
    assert ms.get("ann").follow([1, 2], 2, 1) == ([3], 2) and ms.get("bob").follow([1, 2], 2, 1) == ([], 0)
    ms.learn("ann", [7])  # ann again: bob is now the oldest
    ms.learn("cy", [8])
    assert ms.get("bob") is None and ms.get("ann") is not None


def test_the_replay_scores_each_policys_drafts_against_the_reply():
    from bench.replay_speculate import Llamafs, NgramMap, NgramMod, replay

    linear = lambda k: 1 + 0.5 * (k - 1)  # noqa: E731  a step's cost by its tokens
    loop = {"prompt": [1, 2, 3], "reply": [9, 8] + list(range(20, 40)) * 6}  # a reply caught in a loop

    class Oracle:  # drafts what the reply says next, 3 tokens at a time
        def begin(self, prompt):
            self.said = len(prompt)
        def draft(self, history, last):
            at = len(history) - self.said + 1
            return loop["reply"][at:at + 3]
        def verified(self, drafted, kept):
            assert kept == drafted
        def done(self, tokens):
            assert tokens == loop["prompt"] + loop["reply"]

    got = replay(Oracle(), [loop], linear)
    # 4 tokens a step; the last step's draft is cut to the one token left to maxtokens
    assert got["kept"] == got["drafted"] == 30 * 3 + 1 and got["steps"] == 31
    assert got["time"] == 1 + 30 * linear(4) + linear(2)
    mine = replay(Llamafs({1: 1, 65: 33}), [loop], linear)
    assert mine["kept"] > 80 and mine["tokens"] / mine["time"] > 1.5  # the loop drafted far ahead
    k4v = replay(NgramMap("ngram-map-k4v"), [loop], linear)
    assert 0 < k4v["kept"] == k4v["drafted"]  # a 12-token key with 48 after it: all kept
    mod = replay(NgramMod(), [loop], linear)
    assert mod["kept"] == mod["drafted"] >= 48  # 24-grams chained 48 times at least: a loop's do
    fresh = {"prompt": [1, 2, 3], "reply": list(range(100, 222))}  # nothing said twice
    assert all(replay(p, [fresh], linear)["drafted"] == 0
               for p in (Llamafs({1: 1, 65: 33}), NgramMap("ngram-map-k4v"), NgramMap("ngram-simple"), NgramMod()))


def test_modes():
    assert mode_limit("off", True, False) == (0, False)
    assert mode_limit("auto", True, False)[0] > 0 and mode_limit("auto", True, False)[1]
    assert mode_limit("auto", False, False)[0] == 0  # sampled: the same reply whatever else the node does
    assert mode_limit("auto", True, True)[0] == 0  # under a grammar
    assert mode_limit("5", False, True) == (5, False)


# ---- the engine on the fake model ----------------------------------------------------------


@pytest.fixture
async def engine():
    engines = []

    async def make(slots=4, ctx=2048, batch=512, **options):
        opener = FakeModel.opener(**options)
        e = Engine(opener, slots=slots, costs=PriorCosts())
        e.start()
        engines.append(e)
        await e.load(ModelSettings(path="fake.gguf", ctx=ctx, batch=batch))
        e.model = opener.made[-1]
        return e

    yield make
    for e in engines:
        await trio.to_thread.run_sync(e.stop)


async def run_turn(e: Engine, conversation: Conversation, text: bytes, **settings):
    history = conversation.history + tokens_of(text, first=not conversation.history)
    reply = e.submit(conversation, history, Sampling(**{**GREEDY, **settings}))
    with trio.fail_after(5):
        await reply.wait()
    return reply


def drafts_in_steps(model: FakeModel, seq: int) -> list[tuple[int, list[int]]]:
    """(position, drafted tokens) of every generation step of seq: the
    entries after the first of a step's run of logits-wanting entries."""
    found = []
    for step in model.steps:
        mine = [(pos, token) for s, token, pos, logits in step if s == seq and logits]
        if len(mine) > 1:
            found.append((mine[1][0], [token for _, token in mine[1:]]))
    return found


async def test_a_reply_that_copies_its_prompt_is_drafted_and_the_counts_are_right(engine):
    e = await engine(period=len(PASSAGE) + 1)  # it says the passage again
    conv = Conversation()
    reply = await run_turn(e, conv, PASSAGE, maxtokens=len(PASSAGE))
    off = await run_turn(await engine(period=len(PASSAGE) + 1), Conversation(), PASSAGE, maxtokens=len(PASSAGE),
                         speculate="off")
    assert bytes(reply.text) == bytes(off.text) and reply.tokens_out == off.tokens_out == len(PASSAGE)
    # Counted from the steps themselves: a drafted token was kept if the reply has it there.
    said = conv.history  # the prompt and the reply
    drafted = accepted = 0
    for position, tokens in drafts_in_steps(e.model, conv.seq):
        drafted += len(tokens)
        for i, token in enumerate(tokens):
            if position + i >= len(said) or said[position + i] != token:
                break
            accepted += 1
    assert reply.tokens_drafted == drafted and reply.tokens_accepted == accepted
    assert accepted > len(PASSAGE) / 2  # most of the copy came from drafts
    steps_on = sum(1 for step in e.model.steps if any(s == conv.seq for s, *_ in step))
    assert steps_on < len(PASSAGE) / 2  # in far fewer steps than tokens
    assert e.stats.tokens_drafted == drafted and e.stats.tokens_accepted == accepted


async def test_drafts_take_only_the_room_that_prompts_waiting_leave(engine):
    e = await engine(slots=2, batch=16, period=3)  # the model says again what it held 3 tokens back
    looping, waiting = Conversation(), Conversation()
    drafting = e.submit(looping, tokens_of(b"abcabc"), Sampling(**{**GREEDY, "maxtokens": 40, "speculate": "8"}))
    prompt = tokens_of(bytes(range(97, 123)) * 2 + b"xyz")  # 56 tokens
    prefilling = e.submit(waiting, prompt, Sampling(**{**GREEDY, "maxtokens": 4, "speculate": "off"}))
    with trio.fail_after(5):
        await drafting.wait()
        await prefilling.wait()
    assert drafting.tokens_drafted > 0 and prefilling.state == "done"
    left, prompt_steps = len(prompt), 0
    for step in e.model.steps:
        chunk = sum(1 for seq, *_ in step if seq == waiting.seq) if left else 0
        if chunk:
            others = [logits for seq, _, _, logits in step if seq == looping.seq]
            drafted = sum(others) - 1  # generating: its token and its draft, each with logits
            assert chunk == min(left, 16 - len(others)), (chunk, left, others)  # the prompt has the rest
            assert drafted <= 0 or chunk == left, (chunk, left, drafted)  # a draft only once it is all in
            left -= chunk
            prompt_steps += 1
    assert left == 0 and prompt_steps == 5  # 9 beside the other's prompt, 15, 15, 15, 2


async def test_a_drafted_end_of_generation_that_comes_counts_as_kept(engine):
    e = await engine(period=6)  # the model says again what it held 6 tokens back
    a, b, c, d, x = tokens_of(b"abcdx", first=False)
    history = [BOS] + [a, b, c, d, x, EOG] * 2 + [a, b, c, d]  # it says x, then ends as it did before
    reply = e.submit(Conversation(), history, Sampling(**{**GREEDY, "maxtokens": 10, "speculate": "4"}))
    with trio.fail_after(5):
        await reply.wait()
    assert bytes(reply.text) == b"x" and reply.reason == "stop"
    assert (reply.tokens_drafted, reply.tokens_accepted) == (4, 1)  # EOG, a, b, c drafted after x; EOG came


class Recorded(PriorCosts):
    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def record(self, tokens: int, seconds: float) -> None:
        self.sizes.append(tokens)


async def test_only_steps_of_reply_tokens_alone_are_measured():
    # A prompt's tokens need no logits: a step with them would make large steps look cheap.
    costs = Recorded()
    e = Engine(FakeModel.opener(), slots=4, costs=costs)
    e.start()
    try:
        await e.load(ModelSettings(path="fake.gguf", ctx=2048, batch=512))
        await run_turn(e, Conversation(), PASSAGE, maxtokens=10, speculate="off")
    finally:
        await trio.to_thread.run_sync(e.stop)
    # The prompt's step makes the first token; each of the other nine, a step of one token.
    assert costs.sizes == [1] * 9


@pytest.mark.parametrize("settings", [dict(maxtokens=23), dict(maxtokens=200, stop=("dog",)),
                                      dict(maxtokens=200, stop=("t t", "log."))],
                         ids=["maxtokens", "stop", "stop-across-drafts"])
async def test_drafts_stop_where_the_reply_does(engine, settings):
    on, off = await engine(period=len(PASSAGE) + 1), await engine(period=len(PASSAGE) + 1)
    conv_on, conv_off = Conversation(), Conversation()
    a = await run_turn(on, conv_on, PASSAGE * 2, **settings)
    b = await run_turn(off, conv_off, PASSAGE * 2, speculate="off", **settings)
    assert (bytes(a.text), a.tokens_out, a.reason) == (bytes(b.text), b.tokens_out, b.reason)
    assert a.tokens_accepted > 0
    assert conv_on.history == conv_off.history and conv_on.cached == conv_off.cached
    assert on.model.cache[conv_on.seq] == conv_on.cached  # nothing drafted is left in the KV cache
    # No draft ran past maxtokens.
    last = max(pos + len(tokens) for pos, tokens in drafts_in_steps(on.model, conv_on.seq))
    assert last <= len(tokens_of(PASSAGE * 2)) + settings["maxtokens"]
    # The next turn goes on from the same place.
    assert bytes((await run_turn(on, conv_on, b" more", maxtokens=30)).text) == \
        bytes((await run_turn(off, conv_off, b" more", maxtokens=30, speculate="off")).text)


async def test_a_reply_cut_by_the_context_is_the_same_with_drafts(engine):
    on, off = await engine(ctx=120, period=len(PASSAGE) + 1), await engine(ctx=120, period=len(PASSAGE) + 1)
    a = await run_turn(on, Conversation(), PASSAGE, maxtokens=500)
    b = await run_turn(off, Conversation(), PASSAGE, maxtokens=500, speculate="off")
    assert (bytes(a.text), a.reason) == (bytes(b.text), b.reason) and a.reason == "context"
    assert a.tokens_drafted > 0


async def test_replies_that_do_not_repeat_are_unchanged_and_batched_sessions_too(engine):
    on, off = await engine(), await engine()
    prompts = [b"one", b"two two", PASSAGE, b"four"]
    got = {}
    async with trio.open_nursery() as n:
        for p in prompts:
            async def run(p=p):
                got[p] = bytes((await run_turn(on, Conversation(), p, maxtokens=60)).text)
            n.start_soon(run)
    for p in prompts:
        assert got[p] == bytes((await run_turn(off, Conversation(), p, maxtokens=60, speculate="off")).text)


async def test_sampled_turns_draft_only_when_asked_and_stay_the_same(engine):
    e = await engine(period=len(PASSAGE) + 1)
    sampled = dict(temperature=0.7, seed=5, maxtokens=40)
    assert (await run_turn(e, Conversation(), PASSAGE, **sampled)).tokens_drafted == 0  # auto: greedy only
    drafted = await run_turn(e, Conversation(), PASSAGE, speculate="6", **sampled)
    assert drafted.tokens_drafted > 0
    assert bytes(drafted.text) == bytes((await run_turn(e, Conversation(), PASSAGE, **sampled)).text)


async def test_a_turn_drafts_from_its_users_earlier_turns_only(engine):
    e = await engine()
    prompt = b"a question that the fake model answers the same way each time"
    first = await run_turn(e, Conversation(group="ann"), prompt, maxtokens=40)
    assert first.tokens_drafted == 0  # its reply does not repeat itself: nothing of its own to draft from
    again = await run_turn(e, Conversation(group="ann"), prompt, maxtokens=40)
    other = await run_turn(e, Conversation(group="bob"), prompt, maxtokens=40)
    assert bytes(again.text) == bytes(other.text) == bytes(first.text)
    assert again.tokens_accepted > 20  # ann's earlier reply, drafted and kept
    assert other.tokens_drafted == 0  # bob never learns by timing what ann was told


async def test_a_cancel_mid_draft_leaves_the_session_usable():
    gate = StepGate()
    opener = FakeModel.opener(gate=gate, period=len(PASSAGE) + 1)
    e = Engine(opener, slots=2, costs=PriorCosts())
    e.start()
    try:
        gate.open()
        await e.load(ModelSettings(path="fake.gguf", ctx=2048, batch=512))
        model = opener.made[-1]
        gate.close()
        conv = Conversation()
        reply = e.submit(conv, tokens_of(PASSAGE), Sampling(**GREEDY, maxtokens=500))
        while not drafts_in_steps(model, conv.seq):
            gate.allow(1)
            await gate.held()
        e.cancel(reply)  # a step with a draft has run; the next sees the cancel
        gate.open()
        with trio.fail_after(5):
            await reply.wait()
        assert reply.state == "cancelled"
        assert model.cache[conv.seq] == conv.cached  # the draft's unkept tokens are gone from the cache
        # The conversation holds what the reply showed, its last token too (not in the cache).
        prompt = tokens_of(PASSAGE)
        assert conv.history[:len(prompt)] == prompt
        assert b"".join(model.piece(t) for t in conv.history[len(prompt):]) == bytes(reply.text) != b""
        history = conv.history + tokens_of(b" again", first=False)
        after = e.submit(conv, history, Sampling(**GREEDY, maxtokens=20))
        with trio.fail_after(5):
            await after.wait()
        want = e.submit(Conversation(), history, Sampling(**GREEDY, maxtokens=20, speculate="off"))
        with trio.fail_after(5):
            await want.wait()
        assert bytes(after.text) == bytes(want.text) and after.state == "done"
    finally:
        await trio.to_thread.run_sync(e.stop)


# ---- the tiny model, through a node ---------------------------------------------------------------


async def test_greedy_replies_with_drafts_equal_those_without_on_llama_cpp(start_node):
    address, node = await start_node()
    prompt = "one two three four five six seven eight nine ten one two three four five six seven"
    replies = {}
    async with client.connect(address) as c:
        for mode in ("off", "4", "auto"):
            await greedy(c, maxtokens=48, speculate=mode)
            ctl, number = await new_session(c)
            replies[mode] = await ask(c, f"{number}/data", prompt)
            replies[mode, "status"] = status_fields(await c.read_file(f"{number}/status"))
            await ctl.close()
        metrics = (await c.read_file("metrics")).decode()
    assert replies["4"] == replies["off"] and replies["auto"] == replies["off"] and len(replies["off"]) > 20
    assert int(replies["4", "status"]["tokens_drafted"]) > 0  # `speculate 4` drafts whatever the rate
    assert "tokens_drafted" not in replies["off", "status"]
    assert "llamafs_draft_tokens_total" in metrics and "llamafs_draft_tokens_accepted_total" in metrics


async def test_a_seeded_sampled_reply_with_drafts_equals_it_without(start_node):
    address, node = await start_node()
    prompt = "red green blue red green blue red green blue red green"
    async with client.connect(address) as c:
        got = []
        for mode in ("off", "6"):
            await greedy(c, temperature=0.9, seed=11, maxtokens=40, speculate=mode)
            got.append(await ask(c, "new/data", prompt))
    assert got[0] == got[1] and got[0]


def test_each_rows_greedy_pick_is_llama_cpps_as_the_logits_buffer_grows(tiny_model):
    """The model keeps an array over each logits row by its address: through
    steps of 1, 12, 1, 24 and 1 rows of logits (llama.cpp's output buffer
    grows, and its rows move), every row's pick is llama.cpp's greedy one."""
    import ctypes

    import llama_cpp as lc

    from styxfs.llama.llamacpp import GREEDY, LlamaModel

    model = LlamaModel(ModelSettings(path=tiny_model, ctx=256, threads=1), 1)
    greedy_sampler = lc.llama_sampler_init_greedy()
    try:
        tokens = model.tokenize(b"one two three four five six seven eight nine ten eleven twelve " * 4, True)
        position, addresses = 0, set()
        for size in (1, 12, 1, 24, 1):
            model.decode([(0, token, position + i, True) for i, token in enumerate(tokens[position:position + size])])
            position += size
            for row in range(size):
                assert model.sample(GREEDY, row) == lc.llama_sampler_sample(greedy_sampler, model.ctx, row)
            addresses.add(ctypes.cast(lc.llama_get_logits_ith(model.ctx, 0), ctypes.c_void_p).value)
        assert len(addresses) > 1  # the buffer did move: a view kept by row would have read the old one
    finally:
        lc.llama_sampler_free(greedy_sampler)
        model.close()
