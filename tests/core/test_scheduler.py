"""Scheduler decisions, driven by a fake runner that keeps the runner's side of the contract.

The fake runner is not a mock of the model: it is the contract itself (what a runner must track
from SchedulerOutput) plus sampled token ids the test chooses. It checks, every step, that the
scheduler's output is consistent with that contract.
"""

import itertools

import pytest

from llmserve.config import SchedulerConfig
from llmserve.request import EngineCoreRequest, Request, RequestStatus
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import LogprobsLists, ModelRunnerOutput
from llmserve.scheduler.policy import BUILTIN_POLICIES, FCFSPolicy, PriorityPolicy
from llmserve.scheduler.scheduler import QueueFullError, Scheduler

EOS = 2
_clock = itertools.count(1)


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, budget=64, max_model_len=256,
                   chunked=True, policy="fcfs", prefix_caching=True, max_waiting=None):
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                             max_model_len=max_model_len, enable_chunked_prefill=chunked,
                             policy=policy, max_waiting_requests=max_waiting)
    kv = KVCacheManager(num_blocks, block_size, prefix_caching)
    return Scheduler(config, kv, BUILTIN_POLICIES[policy](config))


def make_request(sched, rid, prompt, priority=0, arrival=None, **sp):
    sp.setdefault("max_tokens", 4)
    if isinstance(prompt, int):  # distinct per request id, so no accidental prefix hits
        salt = sum(map(ord, rid)) * 64
        prompt = [10_000 + salt + i for i in range(prompt)]
    req = EngineCoreRequest(rid, list(prompt), SamplingParams(**sp), eos_token_ids=frozenset({EOS}),
                            priority=priority,
                            arrival_time=float(next(_clock)) if arrival is None else arrival)
    return Request(req, sched.max_model_len)


def add(sched, rid, prompt, **kw):
    req = make_request(sched, rid, prompt, **kw)
    sched.add_request(req)
    return req


def default_token(rid, pos):
    """Sampled token for position ``pos`` (never EOS)."""
    return 1000 + pos


class FakeRunner:
    """Tracks what a model runner must track and samples tokens chosen by ``token_fn``."""

    def __init__(self, sched, token_fn=default_token, multi=None):
        self.sched = sched
        self.bs = sched.kv_cache_manager.block_size
        self.token_fn = token_fn
        #: rid -> extra tokens to return at once in the next sampling step (spec-decode like)
        self.multi = multi or {}
        self.tables, self.tokens, self.computed, self.params, self.num_prompt = {}, {}, {}, {}, {}
        self.outputs: dict[str, list] = {}
        self.steps = []

    def step(self):
        so = self.sched.schedule()
        ro = self.execute(so)
        outs = self.sched.update_from_output(so, ro)
        self.steps.append(so)
        for o in outs:
            self.outputs.setdefault(o.request_id, []).append(o)
        self.check_scheduler_state()
        return so, outs

    def execute(self, so):
        sched = self.sched
        assert so.total_num_scheduled_tokens == sum(so.num_scheduled_tokens.values())
        assert so.total_num_scheduled_tokens <= sched.max_num_batched_tokens
        assert len(so.num_scheduled_tokens) <= sched.max_num_seqs
        assert all(n > 0 for n in so.num_scheduled_tokens.values())
        for rid in so.finished_req_ids | so.preempted_req_ids:
            for d in (self.tables, self.tokens, self.computed, self.params):
                d.pop(rid, None)
        for nr in so.scheduled_new_reqs:
            assert nr.req_id not in self.tables
            self.tables[nr.req_id] = list(nr.block_ids)
            self.tokens[nr.req_id] = list(nr.token_ids)
            self.computed[nr.req_id] = nr.num_computed_tokens
            self.params[nr.req_id] = nr.sampling_params
            self.num_prompt[nr.req_id] = nr.num_prompt_tokens
        cached = so.scheduled_cached_reqs
        for rid, new_blocks, nc in zip(cached.req_ids, cached.new_block_ids,
                                       cached.num_computed_tokens):
            assert self.computed[rid] == nc, (rid, self.computed[rid], nc)
            self.tables[rid].extend(new_blocks)
        scheduled = {nr.req_id for nr in so.scheduled_new_reqs} | set(cached.req_ids)
        assert scheduled == set(so.num_scheduled_tokens)

        written = set()
        req_ids, sampled, logprobs, prompt_lps = [], [], [], {}
        for rid, n in so.num_scheduled_tokens.items():
            start, end = self.computed[rid], self.computed[rid] + n
            toks = self.tokens[rid]
            assert end <= len(toks)
            table = self.tables[rid]
            assert len(table) * self.bs >= end, f"{rid}: block table too short"
            # Runner-side view must match the scheduler's and the KV manager's.
            assert table == sched.kv_cache_manager.get_block_ids(rid)
            assert sched.requests[rid].num_computed_tokens == end
            for p in range(start, end):
                slot = (table[p // self.bs], p % self.bs)
                assert slot not in written, f"two requests write slot {slot}"
                written.add(slot)
            params = self.params[rid]
            num_prompt = self.num_prompt[rid]
            if params.prompt_logprobs is not None and start < num_prompt - 1:
                rows = range(start, min(end, num_prompt - 1))
                prompt_lps[rid] = LogprobsLists([[toks[p + 1]] for p in rows],
                                                [[-float(p)] for p in rows], [1 for _ in rows])
            self.computed[rid] = end
            new = []
            if end == len(toks):
                for _ in range(1 + self.multi.pop(rid, 0)):
                    new.append(self.token_fn(rid, len(toks)))
                    toks.append(new[-1])
            req_ids.append(rid)
            sampled.append(new)
            logprobs.append(None if params.logprobs is None or not new else LogprobsLists(
                [[t] for t in new], [[-0.5] for _ in new], [1 for _ in new]))
        return ModelRunnerOutput(req_ids, sampled, logprobs, prompt_lps)

    def check_scheduler_state(self):
        sched = self.sched
        running = {r.request_id for r in sched.running}
        waiting = {r.request_id for r in sched.policy}
        assert not running & waiting
        assert running | waiting == set(sched.requests)
        assert all(r.status == RequestStatus.RUNNING for r in sched.running)
        assert all(r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
                   for r in sched.policy)
        assert len(running) <= sched.max_num_seqs

    def run(self, max_steps=200):
        for _ in range(max_steps):
            if not self.sched.has_unfinished_requests():
                return
            self.step()
        raise AssertionError("scheduler did not finish")

    def tokens_of(self, rid):
        return [t for o in self.outputs.get(rid, []) for t in o.new_token_ids]

    def finish_reason(self, rid):
        return self.outputs[rid][-1].finish_reason


def expected_tokens(num_prompt, n):
    return [default_token(None, p) for p in range(num_prompt, num_prompt + n)]


# -- basics ---------------------------------------------------------------------------------

def test_single_request_completes_and_frees():
    sched = make_scheduler(num_blocks=16)
    add(sched, "a", 10, max_tokens=5)
    runner = FakeRunner(sched)
    so, outs = runner.step()
    assert so.num_scheduled_tokens == {"a": 10}
    (nr,) = so.scheduled_new_reqs
    assert nr.num_computed_tokens == 0 and nr.block_ids == [0, 1, 2] and len(nr.token_ids) == 10
    assert [o.new_token_ids for o in outs] == [[1010]]
    so, _ = runner.step()
    assert so.scheduled_new_reqs == []
    assert so.scheduled_cached_reqs.req_ids == ["a"]
    assert so.scheduled_cached_reqs.num_computed_tokens == [10]
    assert so.scheduled_cached_reqs.new_block_ids == [[]]
    runner.run()
    assert runner.tokens_of("a") == expected_tokens(10, 5)
    assert runner.finish_reason("a") == "length"
    assert sched.kv_cache_manager.num_free_blocks == 16
    assert sched.schedule().finished_req_ids == {"a"}
    assert not sched.has_unfinished_requests()


def test_chunked_prefill_splits_long_prompt():
    sched = make_scheduler(budget=16)
    req = add(sched, "a", 40, max_tokens=2)
    runner = FakeRunner(sched)
    so1, outs1 = runner.step()
    assert so1.num_scheduled_tokens == {"a": 16} and req.num_computed_tokens == 16
    assert so1.scheduled_new_reqs[0].num_computed_tokens == 0
    assert outs1 == []  # no token sampled mid-prompt
    so2, outs2 = runner.step()
    assert so2.num_scheduled_tokens == {"a": 16} and req.num_computed_tokens == 32
    assert so2.scheduled_cached_reqs.num_computed_tokens == [16]
    assert outs2 == []
    so3, outs3 = runner.step()
    assert so3.num_scheduled_tokens == {"a": 8} and req.num_computed_tokens == 40
    assert [o.new_token_ids for o in outs3] == [[1040]]
    runner.run()
    assert runner.tokens_of("a") == expected_tokens(40, 2)


def test_token_budget_shared_and_running_first():
    sched = make_scheduler(budget=16)
    add(sched, "a", 10)
    add(sched, "b", 10)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert so.num_scheduled_tokens == {"a": 10, "b": 6}
    add(sched, "c", 10)
    so, _ = runner.step()
    # running first, in order (a decodes, b finishes its prompt), then c gets the rest
    assert list(so.num_scheduled_tokens.items()) == [("a", 1), ("b", 4), ("c", 10)]
    assert so.scheduled_cached_reqs.req_ids == ["a", "b"]
    assert [nr.req_id for nr in so.scheduled_new_reqs] == ["c"]
    assert so.total_num_scheduled_tokens == 15
    runner.run()
    for rid in "abc":
        assert runner.tokens_of(rid) == expected_tokens(10, 4)


def test_budget_exhausted_by_running_requests():
    sched = make_scheduler(budget=3)
    for rid in "abcd":
        add(sched, rid, 1, max_tokens=3)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert list(so.num_scheduled_tokens) == ["a", "b", "c"]
    so, _ = runner.step()
    # three running requests use the whole budget; d keeps waiting
    assert list(so.num_scheduled_tokens) == ["a", "b", "c"]
    assert sched.num_waiting == 1
    runner.run()
    assert all(len(runner.tokens_of(r)) == 3 for r in "abcd")


def test_max_num_seqs():
    sched = make_scheduler(max_num_seqs=2)
    for rid in "abcde":
        add(sched, rid, 5, max_tokens=3)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert list(so.num_scheduled_tokens) == ["a", "b"]
    assert sched.num_running == 2 and sched.num_waiting == 3
    runner.step()
    so, _ = runner.step()  # a and b finish at the end of this step
    assert list(so.num_scheduled_tokens) == ["a", "b"]
    so, _ = runner.step()
    assert list(so.num_scheduled_tokens) == ["c", "d"]
    assert so.finished_req_ids == {"a", "b"}
    runner.run()
    assert all(runner.tokens_of(r) == expected_tokens(5, 3) for r in "abcde")


def test_no_chunked_prefill_waits_for_budget():
    sched = make_scheduler(budget=32, max_model_len=32, chunked=False)
    add(sched, "a", 20)
    add(sched, "b", 20)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert so.num_scheduled_tokens == {"a": 20}  # b would need 20 of the 12 left: waits
    so, _ = runner.step()
    assert so.num_scheduled_tokens == {"a": 1, "b": 20}


# -- preemption -----------------------------------------------------------------------------

@pytest.mark.parametrize("prefix_caching", [False, True])
def test_preemption_and_resume(prefix_caching):
    # 6 blocks of 4 slots; two requests of 8 prompt + 10 output tokens need 5 blocks each.
    sched = make_scheduler(num_blocks=6, prefix_caching=prefix_caching)
    a = add(sched, "a", 8, max_tokens=10)
    b = add(sched, "b", 8, max_tokens=10)
    add(sched, "c", 3, max_tokens=1)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert list(so.num_scheduled_tokens) == ["a", "b", "c"]  # c finishes at once
    preempt_step = None
    for _ in range(10):
        so, _ = runner.step()
        if so.preempted_req_ids:
            preempt_step = so
            break
    assert preempt_step is not None
    # FCFS: the last running request is the victim; it goes back to the front of the queue
    assert preempt_step.preempted_req_ids == {"b"}
    assert list(preempt_step.num_scheduled_tokens) == ["a"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert sched.policy.peek(sched.scheduling_context()) is b
    assert sched.num_preemptions == 1 and b.num_preemptions == 1
    assert sched.make_stats()["num_preemptions"] == 1
    tokens_before = list(b.all_token_ids)
    assert len(tokens_before) > 8  # it had produced outputs

    resumed = None
    while sched.has_unfinished_requests():
        so, _ = runner.step()
        if any(nr.req_id == "b" for nr in so.scheduled_new_reqs):
            resumed = next(nr for nr in so.scheduled_new_reqs if nr.req_id == "b")
            break
    assert resumed is not None
    assert resumed.token_ids == tokens_before  # prompt + outputs so far are recomputed
    assert resumed.num_prompt_tokens == 8
    if not prefix_caching:
        assert resumed.num_computed_tokens == 0
    runner.run()
    assert runner.tokens_of("a") == expected_tokens(8, 10)
    assert runner.tokens_of("b") == expected_tokens(8, 10)
    assert runner.finish_reason("a") == runner.finish_reason("b") == "length"
    assert a.num_preemptions == 0
    assert sched.kv_cache_manager.num_free_blocks == 6


def test_preempted_request_goes_before_waiting_ones():
    sched = make_scheduler(num_blocks=4, max_num_seqs=2)
    add(sched, "a", 4, max_tokens=8)
    add(sched, "b", 4, max_tokens=8)
    runner = FakeRunner(sched)
    runner.step()
    add(sched, "c", 4, max_tokens=1)
    while not runner.steps[-1].preempted_req_ids:
        runner.step()
    assert [r.request_id for r in sched.policy] == ["b", "c"]
    runner.run()
    assert runner.tokens_of("b") == expected_tokens(4, 8)
    # b was resumed before c was admitted
    first_b_resume = next(i for i, s in enumerate(runner.steps)
                          if i > 0 and any(nr.req_id == "b" for nr in s.scheduled_new_reqs))
    first_c = next(i for i, s in enumerate(runner.steps)
                   if any(nr.req_id == "c" for nr in s.scheduled_new_reqs))
    assert first_b_resume <= first_c


def test_self_preemption_when_victim_is_the_request():
    sched = make_scheduler(num_blocks=3)
    add(sched, "a", 4, max_tokens=3)
    b = add(sched, "b", 4, max_tokens=3)
    runner = FakeRunner(sched)
    runner.step()  # one block each, one free
    so, _ = runner.step()  # a takes the free block; b (the FCFS victim) preempts itself
    assert so.num_scheduled_tokens == {"a": 1}
    assert so.preempted_req_ids == {"b"}
    assert b.status == RequestStatus.PREEMPTED and sched.num_running == 1
    runner.run()
    assert runner.tokens_of("a") == expected_tokens(4, 3)
    assert runner.tokens_of("b") == expected_tokens(4, 3)


def test_running_request_outgrowing_whole_cache_is_aborted():
    sched = make_scheduler(num_blocks=3)  # 12 slots
    add(sched, "a", 8, max_tokens=10)
    runner = FakeRunner(sched)
    runner.run()
    # Alone in the cache there is no one to preempt: when computing position 12 would need a
    # 4th block it is aborted, not livelocked. Positions 7..11 each produced a token.
    assert runner.finish_reason("a") == "abort"
    assert runner.tokens_of("a") == expected_tokens(8, 5)
    assert sched.num_preemptions == 0
    assert sched.kv_cache_manager.num_free_blocks == 3


# -- priority -------------------------------------------------------------------------------

def test_priority_policy_queue_order():
    sched = make_scheduler()
    policy, ctx = PriorityPolicy(sched.config), sched.scheduling_context()
    reqs = [make_request(sched, "p5", 1, priority=5, arrival=1.0),
            make_request(sched, "p1-late", 1, priority=1, arrival=3.0),
            make_request(sched, "p1-early", 1, priority=1, arrival=2.0),
            make_request(sched, "p-1", 1, priority=-1, arrival=4.0)]
    for r in reqs:
        policy.add(r)
    assert len(policy) == 4
    assert policy.peek(ctx).request_id == "p-1"
    policy.remove([reqs[2]])
    assert [policy.pop(ctx).request_id for _ in range(3)] == ["p-1", "p1-late", "p5"]
    assert len(policy) == 0


def test_fcfs_policy_queue_order():
    sched = make_scheduler()
    policy, ctx = FCFSPolicy(sched.config), sched.scheduling_context()
    a, b, c = (make_request(sched, r, 1) for r in "abc")
    policy.add(a)
    policy.add(b)
    policy.prepend(c)
    assert policy.peek(ctx) is c
    policy.remove([a])
    assert [policy.pop(ctx) for _ in range(2)] == [c, b]


def test_victim_choice():
    sched = make_scheduler()
    r1 = make_request(sched, "r1", 1, priority=0, arrival=1.0)
    r2 = make_request(sched, "r2", 1, priority=3, arrival=2.0)
    r3 = make_request(sched, "r3", 1, priority=3, arrival=3.0)
    r4 = make_request(sched, "r4", 1, priority=1, arrival=4.0)
    ctx = sched.scheduling_context()
    assert FCFSPolicy(sched.config).choose_victim([r1, r2, r3, r4], ctx) is r4
    assert PriorityPolicy(sched.config).choose_victim([r1, r2, r3, r4], ctx) is r3
    assert PriorityPolicy(sched.config).choose_victim([r3, r1, r2], ctx) is r3


def test_priority_scheduler_admits_by_priority():
    sched = make_scheduler(policy="priority", max_num_seqs=1)
    for rid, prio in [("low", 9), ("high", 0), ("mid", 4)]:
        add(sched, rid, 3, priority=prio, max_tokens=1)
    runner = FakeRunner(sched)
    order = []
    while sched.has_unfinished_requests():
        so, _ = runner.step()
        order += [nr.req_id for nr in so.scheduled_new_reqs]
    assert order == ["high", "mid", "low"]


def test_priority_preempts_lowest_priority_even_if_already_scheduled():
    sched = make_scheduler(num_blocks=3, policy="priority")
    b = add(sched, "b", 6, priority=5, max_tokens=3)
    runner = FakeRunner(sched)
    runner.step()  # b: 2 blocks, tokens 0..5 computed
    add(sched, "a", 4, priority=0, max_tokens=3)
    so, _ = runner.step()  # b decodes pos 6; a admitted with the last block
    assert so.num_scheduled_tokens == {"b": 1, "a": 4}
    assert sched.kv_cache_manager.num_free_blocks == 0
    assert [r.request_id for r in sched.running] == ["b", "a"]
    # Step 3: b computes pos 7 (fills its 2nd block, no new block needed) and is scheduled
    # first; then a needs a block, none is free, and the victim is b: it must be unscheduled.
    so, _ = runner.step()
    assert so.preempted_req_ids == {"b"}
    assert so.num_scheduled_tokens == {"a": 1}
    assert so.scheduled_cached_reqs.req_ids == ["a"]
    assert so.total_num_scheduled_tokens == 1
    assert b.num_computed_tokens == 0 and b.status == RequestStatus.PREEMPTED
    # b's 2nd block was registered in the prefix cache when b was scheduled, but the step
    # that would have written it never ran: it must not be left in the cache.
    cached = sched.kv_cache_manager.block_pool.cached_blocks
    assert b.block_hashes[0] in cached
    assert b.block_hashes[1] not in cached
    runner.run()
    assert runner.tokens_of("a") == expected_tokens(4, 3)
    assert runner.tokens_of("b") == expected_tokens(6, 3)


def test_no_admission_in_a_step_that_preempted():
    sched = make_scheduler(num_blocks=4, max_num_seqs=2, policy="priority")
    add(sched, "a", 4, priority=0, max_tokens=8)
    add(sched, "b", 4, priority=5, max_tokens=8)
    runner = FakeRunner(sched)
    runner.step()
    add(sched, "c", 3, priority=1, max_tokens=1)  # ahead of b once b waits
    while not runner.steps[-1].preempted_req_ids:
        runner.step()
    so = runner.steps[-1]
    assert so.preempted_req_ids == {"b"}
    # b's blocks freed room and a sequence slot that c fits in, but admission waits a step
    assert so.scheduled_new_reqs == [] and sched.num_running == 1
    so, _ = runner.step()
    assert [nr.req_id for nr in so.scheduled_new_reqs] == ["c"]
    runner.run()
    assert runner.tokens_of("b") == expected_tokens(4, 8)


# -- stop conditions ------------------------------------------------------------------------

def scripted(script):
    """token_fn returning script[rid][n] for the n-th sampled token (default tokens after)."""
    counts = {}

    def fn(rid, pos):
        n = counts.get(rid, 0)
        counts[rid] = n + 1
        seq = script.get(rid, [])
        return seq[n] if n < len(seq) else default_token(rid, pos)
    return fn


def test_stop_conditions():
    sched = make_scheduler()
    add(sched, "eos", 3, max_tokens=10)
    add(sched, "stop_id", 3, max_tokens=10, stop_token_ids=[6])
    add(sched, "min_tokens", 3, max_tokens=10, min_tokens=3)
    add(sched, "ignore_eos", 3, max_tokens=4, ignore_eos=True)
    add(sched, "stop_and_eos", 3, max_tokens=10, stop_token_ids=[EOS])
    add(sched, "length", 3, max_tokens=3)
    runner = FakeRunner(sched, scripted({
        "eos": [5, 6, EOS, 7],
        "stop_id": [5, 6, EOS],
        "min_tokens": [EOS, 5, EOS, EOS],
        "ignore_eos": [EOS, EOS, 5, EOS, EOS],
        "stop_and_eos": [5, EOS],
        "length": [5, 5, 5, 5],
    }))
    runner.run()
    out = {rid: runner.outputs[rid][-1] for rid in runner.outputs}
    assert runner.tokens_of("eos") == [5, 6, EOS]
    assert (out["eos"].finish_reason, out["eos"].stop_reason) == ("stop", None)
    assert runner.tokens_of("stop_id") == [5, 6]
    assert (out["stop_id"].finish_reason, out["stop_id"].stop_reason) == ("stop", 6)
    # EOS before min_tokens does not stop; the one at output 3 does
    assert runner.tokens_of("min_tokens") == [EOS, 5, EOS]
    assert out["min_tokens"].finish_reason == "stop"
    assert runner.tokens_of("ignore_eos") == [EOS, EOS, 5, EOS]
    assert out["ignore_eos"].finish_reason == "length"
    assert out["stop_and_eos"].stop_reason is None  # EOS wins: reported as EOS
    assert runner.tokens_of("length") == [5, 5, 5]
    assert (out["length"].finish_reason, out["length"].stop_reason) == ("length", None)
    assert all(len([o for o in runner.outputs[r] if o.finished]) == 1 for r in runner.outputs)
    assert sched.kv_cache_manager.num_free_blocks == 64


def test_max_model_len_caps_output():
    sched = make_scheduler(max_model_len=12)
    add(sched, "a", 10, max_tokens=None)
    runner = FakeRunner(sched)
    runner.run()
    assert runner.tokens_of("a") == expected_tokens(10, 2)
    assert runner.finish_reason("a") == "length"


def test_multiple_tokens_per_step_trimmed_at_stop():
    sched = make_scheduler()
    add(sched, "a", 3, max_tokens=10, logprobs=1)
    runner = FakeRunner(sched, scripted({"a": [5, 6, EOS, 7, 8]}))
    runner.step()  # prefill: samples 5
    runner.multi["a"] = 3  # next step returns 4 tokens: 6, EOS, 7, 8
    _, outs = runner.step()
    (o,) = outs
    assert o.new_token_ids == [6, EOS]
    assert o.finish_reason == "stop"
    assert o.new_logprobs.token_ids == [[6], [EOS]]
    assert len(o.new_logprobs.logprobs) == len(o.new_logprobs.ranks) == 2
    assert sched.requests == {}


def test_prompt_logprobs_only_outputs_and_no_prefix_hits():
    sched = make_scheduler(budget=4)
    prompt = list(range(100, 109))
    add(sched, "warm", prompt, max_tokens=1)
    runner = FakeRunner(sched)
    runner.run()
    req = add(sched, "a", prompt, max_tokens=1, prompt_logprobs=1)  # cached, but no hits
    so, outs = runner.step()
    assert so.scheduled_new_reqs[0].num_computed_tokens == 0  # no prefix hit
    (o,) = outs
    assert o.new_token_ids == [] and not o.finished
    assert o.new_prompt_logprobs.token_ids == [[t] for t in req.all_token_ids[1:5]]
    runner.run()
    rows = [r for o in runner.outputs["a"] if o.new_prompt_logprobs
            for r in o.new_prompt_logprobs.token_ids]
    assert rows == [[t] for t in req.prompt_token_ids[1:]]


def test_prompt_logprobs_not_repeated_after_preemption():
    sched = make_scheduler(num_blocks=3, budget=7)
    add(sched, "b", 4, max_tokens=2)
    a = add(sched, "a", 8, max_tokens=1, prompt_logprobs=1)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert so.num_scheduled_tokens == {"b": 4, "a": 3}
    so, _ = runner.step()  # b takes the last block, a (last running) preempts itself
    assert so.preempted_req_ids == {"a"}
    runner.run()
    assert a.num_preemptions == 1
    rows = [r for o in runner.outputs["a"] if o.new_prompt_logprobs
            for r in o.new_prompt_logprobs.token_ids]
    assert rows == [[t] for t in a.prompt_token_ids[1:]]  # each prompt position exactly once


# -- prefix caching through the scheduler ---------------------------------------------------

def test_prefix_hit_through_scheduler():
    sched = make_scheduler()
    prefix = list(range(100, 108))
    add(sched, "a", prefix + [1, 2, 3, 4], max_tokens=3)
    runner = FakeRunner(sched)
    runner.step()
    b = add(sched, "b", prefix + [5, 6], max_tokens=2)
    so, _ = runner.step()
    (nr,) = so.scheduled_new_reqs
    assert nr.num_computed_tokens == 8
    assert so.num_scheduled_tokens["b"] == 2
    a_blocks = sched.kv_cache_manager.get_block_ids("a")
    assert nr.block_ids[:2] == a_blocks[:2]
    assert [sched.kv_cache_manager.block_pool.blocks[i].ref_cnt for i in a_blocks[:2]] == [2, 2]
    assert b.num_cached_tokens == 8
    runner.run()
    assert all(o.num_cached_tokens == 8 for o in runner.outputs["b"])
    assert runner.tokens_of("b") == expected_tokens(10, 2)
    stats = sched.make_stats()
    assert stats["prefix_cache_queries"] == 12 + 10
    assert stats["prefix_cache_hits"] == 8


def test_same_step_prefix_hit():
    # b is admitted in the step that computes a's prompt: a's full blocks are registered at
    # allocation, so b reuses them (attention writes a layer's K/V before reading it).
    sched = make_scheduler()
    prefix = list(range(100, 112))
    add(sched, "a", prefix + [1], max_tokens=2)
    add(sched, "b", prefix + [2, 3], max_tokens=2)
    runner = FakeRunner(sched)
    so, _ = runner.step()
    assert so.num_scheduled_tokens == {"a": 13, "b": 2}
    a_nr, b_nr = so.scheduled_new_reqs
    assert b_nr.num_computed_tokens == 12 and b_nr.block_ids[:3] == a_nr.block_ids[:3]
    runner.run()
    assert runner.tokens_of("b") == expected_tokens(14, 2)


# -- aborts, oversize, queue bound ----------------------------------------------------------

def test_abort_frees_blocks_and_removes_from_queues():
    sched = make_scheduler(num_blocks=16, max_num_seqs=2)
    add(sched, "a", 8, max_tokens=10)
    add(sched, "b", 8, max_tokens=10)
    add(sched, "c", 8, max_tokens=10)
    runner = FakeRunner(sched)
    runner.step()
    assert sched.kv_cache_manager.num_free_blocks == 12
    sched.finish_requests(["a", "c", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert sched.kv_cache_manager.num_free_blocks == 14
    assert [r.request_id for r in sched.running] == ["b"]
    assert sched.num_waiting == 0
    assert "a" not in sched.requests and "c" not in sched.requests
    so, outs = runner.step()
    assert so.finished_req_ids == {"a", "c"}
    assert list(so.num_scheduled_tokens) == ["b"]
    assert all(o.request_id == "b" for o in outs)
    sched.finish_requests("b", RequestStatus.FINISHED_STOPPED)  # e.g. a stop string matched
    assert not sched.has_unfinished_requests()
    assert sched.kv_cache_manager.num_free_blocks == 16
    with pytest.raises(ValueError):
        sched.finish_requests("b", RequestStatus.RUNNING)


def test_request_larger_than_cache_is_aborted_not_hung():
    sched = make_scheduler(num_blocks=4)  # 16 slots
    add(sched, "huge", 17, max_tokens=1)
    add(sched, "ok", 5, max_tokens=2)
    runner = FakeRunner(sched)
    so, outs = runner.step()
    assert list(so.num_scheduled_tokens) == ["ok"]
    assert so.finished_req_ids == {"huge"}
    huge = [o for o in outs if o.request_id == "huge"]
    assert len(huge) == 1 and huge[0].finish_reason == "abort" and huge[0].new_token_ids == []
    runner.run()
    assert runner.tokens_of("ok") == expected_tokens(5, 2)


def test_aborted_alone_with_empty_step_still_reports():
    sched = make_scheduler(num_blocks=2)
    add(sched, "huge", 9)
    assert sched.has_unfinished_requests()
    so = sched.schedule()
    assert so.is_empty
    outs = sched.update_from_output(so, ModelRunnerOutput([], [], []))
    assert [(o.request_id, o.finish_reason) for o in outs] == [("huge", "abort")]
    assert not sched.has_unfinished_requests()


def test_queue_full():
    sched = make_scheduler(max_waiting=2)
    add(sched, "a", 3)
    add(sched, "b", 3)
    with pytest.raises(QueueFullError, match="max_waiting_requests"):
        add(sched, "c", 3)
    assert sched.num_waiting == 2
    sched.schedule()  # both admitted: the queue has room again
    add(sched, "c", 3)
    with pytest.raises(ValueError, match="already"):
        add(sched, "c", 3)


def test_stats_and_counts():
    sched = make_scheduler(num_blocks=10, max_num_seqs=1)
    add(sched, "a", 8)
    add(sched, "b", 8)
    runner = FakeRunner(sched)
    runner.step()
    stats = sched.make_stats()
    assert stats["num_running"] == 1 == sched.num_running
    assert stats["num_waiting"] == 1 == sched.num_waiting
    assert stats["kv_cache_usage"] == pytest.approx(0.2)  # 8 computed tokens: 2 blocks of 10
    assert stats["num_preemptions"] == 0
