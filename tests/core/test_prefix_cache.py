"""Prefix hashing and the KV cache manager (allocation, sharing, eviction order)."""

import pytest

from llmserve.request import EngineCoreRequest, Request
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.kv_cache.prefix_hash import (
    builtin_block_hash,
    sha256_block_hash,
    update_block_hashes,
)
from llmserve.sampling_params import SamplingParams

BS = 4


def make_request(rid, prompt, salt=None, max_model_len=1024, **sp):
    params = SamplingParams(max_tokens=sp.pop("max_tokens", 8), **sp)
    return Request(EngineCoreRequest(rid, list(prompt), params, cache_salt=salt), max_model_len)


def admit(kv, req):
    """What the scheduler does for a waiting request: look up hits, allocate the rest."""
    hit_ids, num_hit = kv.get_computed_blocks(req)
    new = kv.allocate_slots(req, req.num_tokens - num_hit, hit_ids)
    assert new is not None
    req.num_computed_tokens = req.num_tokens
    return hit_ids, num_hit, new


class TestHashing:
    @pytest.mark.parametrize("fn", [sha256_block_hash, builtin_block_hash])
    def test_chain(self, fn):
        a = make_request("a", range(10))
        b = make_request("b", list(range(8)) + [99, 98])
        ha = update_block_hashes(a, BS, fn)
        hb = update_block_hashes(b, BS, fn)
        assert len(ha) == 2 and len(hb) == 2  # only full blocks (10 // 4)
        assert ha == hb  # first 8 tokens equal; partial third block not hashed
        c = make_request("c", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
        assert update_block_hashes(c, BS, fn)[:2] == ha
        # Same tokens under a different parent: different key.
        d = make_request("d", [9, 9, 9, 9, 4, 5, 6, 7])
        hd = update_block_hashes(d, BS, fn)
        assert hd[1] != ha[1]
        assert fn(hd[0], [4, 5, 6, 7]) == hd[1]
        assert fn(ha[0], [4, 5, 6, 7]) == ha[1]
        assert fn(None, [0, 1, 2, 3]) == ha[0]

    def test_salt_separates_every_block(self):
        plain = update_block_hashes(make_request("a", range(12)), BS)
        salted = update_block_hashes(make_request("b", range(12), salt="tenant-1"), BS)
        salted2 = update_block_hashes(make_request("c", range(12), salt="tenant-1"), BS)
        other = update_block_hashes(make_request("d", range(12), salt="tenant-2"), BS)
        assert salted == salted2
        assert all(x != y for x, y in zip(plain, salted))
        assert all(x != y for x, y in zip(salted, other))

    def test_sha256_is_stable_bytes(self):
        h = sha256_block_hash(None, [1, 2, 3, 4])
        assert isinstance(h, bytes) and len(h) == 32
        assert h == sha256_block_hash(None, (1, 2, 3, 4))
        assert h != sha256_block_hash(None, [1, 2, 3, 5])
        assert h != sha256_block_hash(None, [1, 2, 3, 4], ("salt", "x"))

    def test_incremental(self):
        calls = []

        def counting(parent, tokens, extra):
            calls.append(tuple(tokens))
            return sha256_block_hash(parent, tokens, extra)

        req = make_request("a", range(9))
        update_block_hashes(req, BS, counting)
        assert calls == [(0, 1, 2, 3), (4, 5, 6, 7)]
        update_block_hashes(req, BS, counting)
        assert len(calls) == 2  # nothing new
        req.all_token_ids.extend([9, 10])
        update_block_hashes(req, BS, counting)
        assert len(calls) == 2  # block 3 still partial
        req.all_token_ids.append(11)
        update_block_hashes(req, BS, counting)
        assert calls[2:] == [(8, 9, 10, 11)]
        assert req.block_hashes == update_block_hashes(make_request("b", range(12)), BS)


class TestManager:
    def test_allocate_and_free_counts(self):
        kv = KVCacheManager(10, BS, enable_prefix_caching=False)
        req = make_request("a", range(10))
        assert kv.get_computed_blocks(req) == ([], 0)
        new = kv.allocate_slots(req, 10)
        assert new == [0, 1, 2]
        assert kv.num_free_blocks == 7 and kv.usage == pytest.approx(0.3)
        req.num_computed_tokens = 10
        req.all_token_ids.append(100)
        assert kv.allocate_slots(req, 1) == []  # slot 10 fits in block 2
        req.num_computed_tokens = 11
        req.all_token_ids.append(101)
        assert kv.allocate_slots(req, 1) == []
        req.num_computed_tokens = 12
        req.all_token_ids.append(102)
        assert kv.allocate_slots(req, 1) == [3]  # slot 12 needs a 4th block
        assert kv.get_block_ids("a") == [0, 1, 2, 3]
        kv.free(req)
        assert kv.num_free_blocks == 10 and kv.get_block_ids("a") == []
        kv.free(req)  # second free is a no-op
        assert kv.num_free_blocks == 10

    def test_allocation_failure_changes_nothing(self):
        kv = KVCacheManager(4, BS)
        a = make_request("a", range(12))
        admit(kv, a)
        b = make_request("b", range(100, 110))  # needs 3 blocks, 1 free
        assert kv.allocate_slots(b, 10) is None
        assert kv.num_free_blocks == 1 and kv.get_block_ids("b") == []
        assert kv.prefix_cache_stats.queries == 12  # the failed admission is not counted

    def test_hits_capped_to_recompute_last_token(self):
        kv = KVCacheManager(16, BS)
        a = make_request("a", range(8))
        admit(kv, a)
        # Identical 8-token prompt: both blocks cached, but only the first may hit, so the
        # last prompt token is computed again.
        b = make_request("b", range(8))
        ids, n = kv.get_computed_blocks(b)
        assert n == 4 and ids == kv.get_block_ids("a")[:1]
        # One more token: both full blocks lie in the first num_tokens - 1 tokens.
        c = make_request("c", list(range(8)) + [50])
        ids, n = kv.get_computed_blocks(c)
        assert n == 8 and ids == kv.get_block_ids("a")[:2]

    def test_shared_prefix_shares_blocks(self):
        kv = KVCacheManager(16, BS)
        a = make_request("a", list(range(8)) + [50, 51])
        admit(kv, a)
        b = make_request("b", list(range(8)) + [60, 61, 62])
        hit_ids, num_hit, new = admit(kv, b)
        assert num_hit == 8
        a_ids, b_ids = kv.get_block_ids("a"), kv.get_block_ids("b")
        assert b_ids[:2] == a_ids[:2] == hit_ids
        assert new == b_ids  # hits first, then the fresh block
        assert b_ids[2] != a_ids[2]
        blocks = kv.block_pool.blocks
        assert [blocks[i].ref_cnt for i in a_ids] == [2, 2, 1]
        assert kv.num_free_blocks == 16 - 4
        kv.free(a)
        assert [blocks[i].ref_cnt for i in b_ids] == [1, 1, 1]
        assert kv.num_free_blocks == 16 - 3
        assert kv.prefix_cache_stats.queries == 10 + 11
        assert kv.prefix_cache_stats.hits == 8
        assert kv.prefix_cache_stats.hit_rate == pytest.approx(8 / 21)

    def test_hit_on_free_cached_block_revives_it(self):
        kv = KVCacheManager(4, BS)
        a = make_request("a", range(9))
        admit(kv, a)
        a_ids = kv.get_block_ids("a")
        kv.free(a)
        assert kv.num_free_blocks == 4
        b = make_request("b", list(range(8)) + [77, 78, 79, 80, 81])
        hit_ids, num_hit, new = admit(kv, b)
        assert hit_ids == a_ids[:2] and num_hit == 8
        assert len(new) == 4 and new[:2] == hit_ids  # 13 tokens
        assert kv.num_free_blocks == 0

    def test_revived_hits_count_against_free_blocks(self):
        kv = KVCacheManager(3, BS)
        a = make_request("a", range(9))
        admit(kv, a)
        kv.free(a)  # blocks 0,1 cached and free, 2 empty and free
        b = make_request("b", list(range(8)) + list(range(100, 108)))  # 16 tokens: 4 blocks
        hit_ids, num_hit = kv.get_computed_blocks(b)
        assert num_hit == 8
        # 2 revived hits + 2 fresh > 3 free: must fail without touching anything
        assert kv.allocate_slots(b, 8, hit_ids) is None
        assert kv.num_free_blocks == 3
        assert all(kv.block_pool.blocks[i].ref_cnt == 0 for i in hit_ids)

    def test_no_hits_when_disabled_or_prompt_logprobs(self):
        kv = KVCacheManager(16, BS)
        admit(kv, make_request("a", range(9)))
        assert kv.get_computed_blocks(make_request("b", range(9), prompt_logprobs=1)) == ([], 0)
        off = KVCacheManager(16, BS, enable_prefix_caching=False)
        admit(off, make_request("a", range(9)))
        assert off.get_computed_blocks(make_request("b", range(9))) == ([], 0)
        assert off.block_pool.cached_blocks == {}
        assert off.prefix_cache_stats.queries == 0

    def test_salt_prevents_hits(self):
        kv = KVCacheManager(16, BS)
        admit(kv, make_request("a", range(9), salt="x"))
        assert kv.get_computed_blocks(make_request("b", range(9)))[1] == 0
        assert kv.get_computed_blocks(make_request("c", range(9), salt="y"))[1] == 0
        assert kv.get_computed_blocks(make_request("d", range(9), salt="x"))[1] == 8

    def test_blocks_cached_only_once_computed_tokens_cover_them(self):
        kv = KVCacheManager(16, BS)
        a = make_request("a", range(12))
        kv.allocate_slots(a, 6)  # chunk: tokens 0..5, only block 0 becomes full
        assert len(kv.block_pool.cached_blocks) == 1
        a.num_computed_tokens = 6
        kv.allocate_slots(a, 6)
        assert len(kv.block_pool.cached_blocks) == 3
        # Decode: the block holding token 12..15 is cached once token 15 is computed.
        a.num_computed_tokens = 12
        for t in range(12, 16):
            a.all_token_ids.append(t)
            kv.allocate_slots(a, 1)
            a.num_computed_tokens += 1
            assert len(kv.block_pool.cached_blocks) == (4 if t == 15 else 3)
        assert a.block_hashes == update_block_hashes(make_request("z", range(16)), BS)

    def test_lru_eviction_order(self):
        kv = KVCacheManager(6, BS)
        a = make_request("a", range(9))      # blocks: 2 full + 1 partial
        b = make_request("b", range(100, 109))
        admit(kv, a)
        admit(kv, b)
        a_ids, b_ids = kv.get_block_ids("a"), kv.get_block_ids("b")
        kv.free(a)  # freed first: evicted first
        kv.free(b)
        # Partial (never cached) blocks are reused first, then a's chain tail to head, then b's.
        order = kv.block_pool.free_queue.block_ids()
        assert set(order[:2]) == {a_ids[2], b_ids[2]}
        assert order[2:] == [a_ids[1], a_ids[0], b_ids[1], b_ids[0]]
        c = make_request("c", range(200, 209))
        admit(kv, c)  # takes 3 blocks: both partials and a's tail block
        assert kv.get_computed_blocks(make_request("a2", range(9)))[1] == 4  # head survives
        assert kv.get_computed_blocks(make_request("b2", range(100, 109)))[1] == 8

    def test_touching_a_hit_refreshes_it(self):
        kv = KVCacheManager(4, BS)
        a = make_request("a", range(5))    # 1 full block + partial
        b = make_request("b", range(50, 55))
        admit(kv, a)
        admit(kv, b)
        kv.free(a)
        kv.free(b)
        a2 = make_request("a2", range(5))
        admit(kv, a2)  # revives a's block and takes one fresh (a partial block)
        kv.free(a2)
        # Now b's cached block is the least recently freed: evicted before a's.
        c = make_request("c", range(300, 312))  # 3 blocks
        admit(kv, c)
        assert kv.get_computed_blocks(make_request("b3", range(50, 55)))[1] == 0
        assert kv.get_computed_blocks(make_request("a3", range(5)))[1] == 4

    def test_reset_prefix_cache(self):
        kv = KVCacheManager(8, BS)
        a = make_request("a", range(9))
        admit(kv, a)
        kv.free(a)
        assert kv.get_computed_blocks(make_request("b", range(9)))[1] == 8
        assert kv.reset_prefix_cache() is True
        assert kv.get_computed_blocks(make_request("c", range(9)))[1] == 0
        assert kv.num_free_blocks == 8

    def test_free_uncaches_blocks_never_computed(self):
        # Scheduled (blocks cached at allocation), then preempted before the step ran: the
        # scheduler rolls num_computed_tokens back and frees. Those blocks hold no K/V.
        kv = KVCacheManager(8, BS)
        a = make_request("a", range(9))
        kv.allocate_slots(a, 9)
        assert len(kv.block_pool.cached_blocks) == 2
        kv.free(a)  # num_computed_tokens is still 0
        assert kv.block_pool.cached_blocks == {}
        assert kv.get_computed_blocks(make_request("b", range(9)))[1] == 0

    def test_can_ever_fit(self):
        kv = KVCacheManager(3, BS)
        assert kv.can_ever_fit(12)
        assert not kv.can_ever_fit(13)

    def test_hits_rejected_for_request_with_blocks(self):
        kv = KVCacheManager(8, BS)
        admit(kv, make_request("a", range(9)))
        b = make_request("b", range(9))
        kv.allocate_slots(b, 2)
        with pytest.raises(ValueError):
            kv.allocate_slots(b, 2, [0])

    def test_bad_hash_algo(self):
        with pytest.raises(ValueError, match="hash_algo"):
            KVCacheManager(4, BS, hash_algo="md5")

    def test_builtin_hash_manager(self):
        kv = KVCacheManager(8, BS, hash_algo="builtin")
        admit(kv, make_request("a", range(9)))
        assert kv.get_computed_blocks(make_request("b", range(9)))[1] == 8
