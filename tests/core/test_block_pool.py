"""Block pool, free queue and cache-spec sizing."""

import dataclasses

import pytest

from llmserve.kv_cache.block_pool import BlockPool, FreeBlockQueue, KVBlock
from llmserve.kv_cache.spec import (
    FullAttentionSpec,
    PerRequestStateSpec,
    SlidingWindowSpec,
    plan_kv_cache,
)


def make_blocks(n):
    return [KVBlock(i) for i in range(n)]


class TestFreeBlockQueue:
    def test_fifo_order(self):
        blocks = make_blocks(5)
        q = FreeBlockQueue(blocks)
        assert len(q) == 5
        assert q.block_ids() == [0, 1, 2, 3, 4]
        assert q.popleft().block_id == 0
        assert q.popleft().block_id == 1
        q.append(blocks[0])
        assert q.block_ids() == [2, 3, 4, 0]
        assert len(q) == 4

    def test_remove_from_middle_and_ends(self):
        blocks = make_blocks(6)
        q = FreeBlockQueue(blocks)
        q.remove(blocks[3])
        assert q.block_ids() == [0, 1, 2, 4, 5]
        q.remove(blocks[0])
        q.remove(blocks[5])
        assert q.block_ids() == [1, 2, 4]
        assert len(q) == 3
        # A removed block is fully unlinked and can be re-queued.
        assert blocks[3].prev_free is None and blocks[3].next_free is None
        q.append(blocks[3])
        assert q.block_ids() == [1, 2, 4, 3]

    def test_appendleft(self):
        blocks = make_blocks(3)
        q = FreeBlockQueue(blocks[:2])
        q.appendleft(blocks[2])
        assert q.block_ids() == [2, 0, 1]
        assert q.popleft() is blocks[2]

    def test_errors(self):
        blocks = make_blocks(2)
        q = FreeBlockQueue()
        with pytest.raises(IndexError):
            q.popleft()
        with pytest.raises(ValueError):
            q.remove(blocks[0])
        q.append(blocks[0])
        q.popleft()
        assert len(q) == 0
        with pytest.raises(IndexError):
            q.popleft()

    def test_drain_and_refill_many(self):
        blocks = make_blocks(1000)
        q = FreeBlockQueue(blocks)
        # remove every odd block from the middle, then drain: evens in order
        for b in blocks[1::2]:
            q.remove(b)
        assert len(q) == 500
        assert [q.popleft().block_id for _ in range(500)] == list(range(0, 1000, 2))
        assert len(q) == 0


class TestBlockPool:
    def test_allocate_and_free(self):
        pool = BlockPool(8, enable_caching=True)
        assert pool.num_free_blocks == 8 and pool.usage == 0.0
        got = pool.get_new_blocks(3)
        assert [b.block_id for b in got] == [0, 1, 2]
        assert all(b.ref_cnt == 1 for b in got)
        assert pool.num_free_blocks == 5
        assert pool.usage == pytest.approx(3 / 8)
        pool.free_blocks(reversed(got))
        assert pool.num_free_blocks == 8
        assert all(b.ref_cnt == 0 for b in got)
        with pytest.raises(ValueError):
            pool.get_new_blocks(9)

    def test_ref_counts_with_touch(self):
        pool = BlockPool(4)
        (b,) = pool.get_new_blocks(1)
        pool.touch([b])
        assert b.ref_cnt == 2
        pool.free_blocks([b])
        assert b.ref_cnt == 1 and pool.num_free_blocks == 3
        pool.free_blocks([b])
        assert b.ref_cnt == 0 and pool.num_free_blocks == 4
        with pytest.raises(RuntimeError):
            pool.free_blocks([b])

    def test_touch_revives_free_cached_block(self):
        pool = BlockPool(4)
        blocks = pool.get_new_blocks(2)
        pool.cache_full_blocks(blocks, ["h0", "h1"], 0, 2)
        pool.free_blocks(reversed(blocks))
        assert pool.num_free_blocks == 4
        hit = pool.get_cached_block("h0")
        assert hit is blocks[0]
        pool.touch([hit])
        assert hit.ref_cnt == 1 and pool.num_free_blocks == 3
        assert hit.block_id not in pool.free_queue.block_ids()

    def test_eviction_drops_hash(self):
        pool = BlockPool(2)
        blocks = pool.get_new_blocks(2)
        pool.cache_full_blocks(blocks, ["a", "b"], 0, 2)
        assert set(pool.cached_blocks) == {"a", "b"}
        pool.free_blocks(reversed(blocks))  # tail ("b") first in eviction order
        (evicted,) = pool.get_new_blocks(1)
        assert evicted is blocks[1]
        assert evicted.block_hash is None
        assert pool.get_cached_block("b") is None
        assert pool.get_cached_block("a") is blocks[0]

    def test_empty_blocks_reused_before_cached(self):
        pool = BlockPool(4)
        blocks = pool.get_new_blocks(4)
        pool.cache_full_blocks(blocks, ["a", "b"], 0, 2)  # 0, 1 cached; 2, 3 not
        pool.free_blocks([blocks[0], blocks[1], blocks[2], blocks[3]])
        # empty blocks go to the front, cached ones to the back in the order freed
        order = pool.free_queue.block_ids()
        assert set(order[:2]) == {2, 3}
        assert order[2:] == [0, 1]
        got = pool.get_new_blocks(2)
        assert {b.block_id for b in got} == {2, 3}
        assert pool.get_cached_block("a") is blocks[0]

    def test_duplicate_hash_keeps_first(self):
        pool = BlockPool(4)
        a, b = pool.get_new_blocks(2)
        pool.cache_full_blocks([a], ["h"], 0, 1)
        pool.cache_full_blocks([b], ["h"], 0, 1)
        assert pool.get_cached_block("h") is a
        assert b.block_hash is None

    def test_caching_disabled(self):
        pool = BlockPool(4, enable_caching=False)
        blocks = pool.get_new_blocks(2)
        pool.cache_full_blocks(blocks, ["a", "b"], 0, 2)
        assert pool.cached_blocks == {}
        assert all(b.block_hash is None for b in blocks)

    def test_reset_prefix_cache(self):
        pool = BlockPool(4)
        blocks = pool.get_new_blocks(3)
        pool.cache_full_blocks(blocks, ["a", "b", "c"], 0, 3)
        pool.free_blocks([blocks[2]])  # one free cached block, two in use
        assert pool.reset_prefix_cache() is True
        assert pool.cached_blocks == {}
        assert all(b.block_hash is None for b in blocks)
        assert blocks[0].ref_cnt == 1 and pool.num_free_blocks == 2

    def test_bad_size(self):
        with pytest.raises(ValueError):
            BlockPool(0)


class TestCacheSpec:
    def test_page_size(self):
        spec = FullAttentionSpec(block_size=16, num_kv_heads=8, head_size=128, dtype_bytes=2)
        assert spec.page_size_bytes == 2 * 16 * 8 * 128 * 2 == 65536
        assert spec.is_paged
        with pytest.raises(ValueError):
            FullAttentionSpec(block_size=0, num_kv_heads=8, head_size=128, dtype_bytes=2)

    def test_specs_are_frozen_and_hashable(self):
        a = FullAttentionSpec(16, 2, 64, 4)
        assert a == FullAttentionSpec(16, 2, 64, 4)
        assert len({a, FullAttentionSpec(16, 2, 64, 4)}) == 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            a.block_size = 32  # type: ignore[misc]

    def test_plan_kv_cache_paged(self):
        spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype_bytes=4)
        page = 2 * 16 * 2 * 64 * 4  # 16384
        specs = [spec] * 4  # 4 layers share block ids: one block costs 4 pages
        assert plan_kv_cache(specs, 4 * page * 10, 8).num_blocks == 10
        assert plan_kv_cache(specs, 4 * page * 10 + 4 * page - 1, 8).num_blocks == 10
        assert plan_kv_cache(specs, 4 * page, 8).num_blocks == 1
        mixed = [spec, FullAttentionSpec(16, 4, 64, 4)]  # 16384 + 32768
        plan = plan_kv_cache(mixed, 49152 * 7 + 5, 8)
        assert (plan.num_blocks, plan.num_state_slots, plan.total_bytes) == (7, 0, 49152 * 7)
        assert plan_kv_cache(specs, 0, 8, num_blocks_override=3).num_blocks == 3

    def test_plan_kv_cache_too_small(self):
        spec = FullAttentionSpec(16, 2, 64, 4)
        with pytest.raises(ValueError, match="too small"):
            plan_kv_cache([spec, spec], 2 * spec.page_size_bytes - 1, 8)
        with pytest.raises(ValueError, match="no caching layer"):
            plan_kv_cache([], 10**9, 8)

    def test_state_slots_are_reserved_before_blocks(self):
        state = PerRequestStateSpec(shapes=((4, 8), (16,)), dtype_bytes=2)
        assert not state.is_paged and state.page_size_bytes == (32 + 16) * 2
        attn = FullAttentionSpec(16, 2, 64, 4)
        budget = 5 * state.state_bytes * 2 + 3 * attn.page_size_bytes + 7
        plan = plan_kv_cache([attn, state, state], budget, max_num_seqs=5)
        assert (plan.num_blocks, plan.num_state_slots) == (3, 5)
        assert plan.state_specs == (state, state) and plan.paged_specs == (attn,)
        # Pure state models get no blocks at all.
        assert plan_kv_cache([state], 10**6, 4).num_blocks == 0
        with pytest.raises(ValueError, match="per-request state"):
            plan_kv_cache([state], 3 * state.state_bytes, max_num_seqs=4)
        with pytest.raises(ValueError):
            PerRequestStateSpec(shapes=(), dtype_bytes=2)
        with pytest.raises(ValueError):
            SlidingWindowSpec(16, 2, 64, 4, sliding_window=0)
