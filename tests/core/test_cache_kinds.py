"""The KV cache manager per cache kind: full attention, sliding window, per-request state."""

import pytest

from llmserve.kv_cache.manager import NULL_BLOCK_ID, KVCacheManager
from llmserve.kv_cache.retention import FullRetention, WindowRetention, retention_for
from llmserve.kv_cache.spec import (
    FullAttentionSpec,
    KVCacheConfig,
    PerRequestStateSpec,
    SlidingWindowSpec,
)
from llmserve.kv_cache.state_slots import StateSlotPool
from llmserve.request import EngineCoreRequest, Request
from llmserve.sampling_params import SamplingParams

BS = 4


def make_request(rid, prompt, **sp):
    params = SamplingParams(max_tokens=sp.pop("max_tokens", 64), **sp)
    return Request(EngineCoreRequest(rid, list(prompt), params), 1024)


def step(kv, req, n):
    """Allocate ``n`` tokens for ``req`` and mark them computed, as one scheduler step."""
    new = kv.allocate_slots(req, n)
    assert new is not None
    req.num_computed_tokens += n
    return new


def decode(kv, req, n):
    """``n`` decode steps: each appends a sampled token, then computes it."""
    for _ in range(n):
        req.all_token_ids.append(7)
        step(kv, req, 1)


def window_config(window, num_blocks=16, layers=2):
    spec = SlidingWindowSpec(BS, 2, 8, 4, sliding_window=window)
    return KVCacheConfig((spec,) * layers, num_blocks)


class TestRetention:
    def test_window_keeps_the_blocks_the_next_query_sees(self):
        r = WindowRetention(6)
        # Next query at position 9 sees keys 4..9: block 0 (keys 0-3) is unneeded.
        assert r.num_unneeded_blocks(9, BS) == 1
        assert r.num_unneeded_blocks(8, BS) == 0  # sees keys 3..8: block 0 still needed
        assert r.num_unneeded_blocks(13, BS) == 2
        assert FullRetention().num_unneeded_blocks(10**6, BS) == 0

    def test_peak_blocks(self):
        r = WindowRetention(6)
        # A chunk of 4 plus the 5 keys behind its first token: 9 tokens over at most 4 blocks.
        assert r.max_blocks_at_once(1000, 4, BS) == 4
        assert r.max_blocks_at_once(5, 4, BS) == 2  # never more than the sequence itself
        assert FullRetention().max_blocks_at_once(1000, 4, BS) == 250

    def test_rule_per_spec_mix(self):
        full = FullAttentionSpec(BS, 2, 8, 4)
        win = SlidingWindowSpec(BS, 2, 8, 4, sliding_window=8)
        assert retention_for([win, win]).window == 8
        # A table shared with a full layer, or two windows, keeps every block.
        assert retention_for([full, win]).window is None
        other = SlidingWindowSpec(BS, 2, 8, 4, sliding_window=12)
        assert retention_for([win, other]).window is None
        assert retention_for([]).window is None


class TestSlidingWindowManager:
    def test_blocks_behind_the_window_go_back(self):
        kv = KVCacheManager.from_config(window_config(6), BS)
        req = make_request("a", range(10))
        step(kv, req, 10)  # positions 0..9 in blocks 0, 1, 2
        assert kv.num_free_blocks == 13
        decode(kv, req, 1)  # next query at 10 sees keys 5..10: block 0 freed
        assert kv.num_free_blocks == 14
        ids = kv.get_block_ids("a")
        assert ids[0] == NULL_BLOCK_ID and len(ids) == 3
        decode(kv, req, 30)  # 41 tokens: only the last 2-3 blocks stay held
        held = kv.num_blocks - kv.num_free_blocks
        assert held <= 3, held
        assert len(kv.get_block_ids("a")) == 11  # table positions are kept
        kv.free(req)
        assert kv.num_free_blocks == kv.num_blocks

    def test_runs_a_sequence_longer_than_the_cache(self):
        kv = KVCacheManager.from_config(window_config(6, num_blocks=4), BS)
        req = make_request("a", range(8))
        assert kv.can_ever_fit(200, max_chunk=4)
        assert not KVCacheManager(4, BS).can_ever_fit(200, max_chunk=4)
        step(kv, req, 4)
        step(kv, req, 4)
        decode(kv, req, 100)  # 108 tokens through a 16-token cache
        assert req.num_computed_tokens == 108
        kv.free(req)
        assert kv.num_free_blocks == 4

    def test_prefix_hit_blocks_behind_the_window_are_released(self):
        kv = KVCacheManager.from_config(window_config(4), BS)
        a = make_request("a", range(17))
        step(kv, a, 17)
        kv.free(a)  # blocks 0..3 stay cached (free)
        b = make_request("b", list(range(17)) + [99])
        hit_ids, num_hit = kv.get_computed_blocks(b)
        assert num_hit == 16
        new = kv.allocate_slots(b, b.num_tokens - num_hit, hit_ids)
        assert new is not None
        # First token to compute sits at 16 and sees keys 13..16: blocks 0-2 are not held.
        ids = kv.get_block_ids("b")
        assert ids[:3] == [NULL_BLOCK_ID] * 3 and ids[3] == hit_ids[3]
        assert kv.num_blocks - kv.num_free_blocks == 2
        # Released hits are still cached for the next request with that prefix.
        c = make_request("c", list(range(17)) + [42])
        assert kv.get_computed_blocks(c)[1] == 16

    def test_preempted_request_frees_what_it_holds(self):
        kv = KVCacheManager.from_config(window_config(6), BS)
        req = make_request("a", range(20))
        step(kv, req, 20)
        decode(kv, req, 8)
        kv.free(req)  # preemption frees like a finish
        assert kv.num_free_blocks == kv.num_blocks
        req.num_computed_tokens = 0
        step(kv, req, req.num_tokens)  # recompute from scratch: all 28 tokens written at once
        assert kv.num_blocks - kv.num_free_blocks == 7
        decode(kv, req, 1)  # the query at 28 sees keys 23..28: blocks 0-4 go, block 7 comes
        assert kv.num_blocks - kv.num_free_blocks == 3


class TestStateSlots:
    def test_pool(self):
        pool = StateSlotPool(2)
        assert pool.allocate("a") == 0 and pool.allocate("b") == 1
        assert pool.allocate("a") == 0  # idempotent for a holder
        assert not pool.can_allocate("c")
        with pytest.raises(ValueError, match="no free state slot"):
            pool.allocate("c")
        pool.free("a")
        pool.free("zzz")  # unknown: ignored
        assert pool.allocate("c") == 0 and pool.num_free_slots == 0

    def test_manager_gives_each_running_request_one_slot(self):
        state = PerRequestStateSpec(shapes=((4, 8),), dtype_bytes=2)
        attn = FullAttentionSpec(BS, 2, 8, 4)
        kv = KVCacheManager.from_config(KVCacheConfig((attn, state), 16, 2), BS)
        assert not kv.enable_prefix_caching  # a hit would skip the prefix's state
        a, b, c = (make_request(r, range(5)) for r in "abc")
        assert kv.allocate_slots(a, 5) is not None and kv.allocate_slots(b, 5) is not None
        assert {kv.get_state_slot("a"), kv.get_state_slot("b")} == {0, 1}
        free_blocks = kv.num_free_blocks
        assert kv.allocate_slots(c, 5) is None  # no slot: nothing changed
        assert kv.num_free_blocks == free_blocks and kv.get_state_slot("c") is None
        kv.free(a)  # finish or preemption
        assert kv.allocate_slots(c, 5) is not None and kv.get_state_slot("c") == 0
        assert kv.get_computed_blocks(make_request("d", range(5)))[1] == 0

    def test_pure_state_model(self):
        state = PerRequestStateSpec(shapes=((3,),), dtype_bytes=4)
        kv = KVCacheManager.from_config(KVCacheConfig((state,), 0, 3), BS)
        a = make_request("a", range(40))
        assert kv.allocate_slots(a, 40) is not None
        assert kv.get_state_slot("a") == 0
