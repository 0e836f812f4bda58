"""Prefix caching for models with state layers: snapshots of the state at block boundaries.

The cache of snapshot rows alone (readability, eviction order, re-keying), then the KV
manager around it: chunks trimmed to boundaries, saves and restores, and a save cancelled
when its request is preempted before the step runs.
"""

from __future__ import annotations

import pytest

from llmserve.kv_cache.manager import KVCacheManager
from llmserve.kv_cache.spec import FullAttentionSpec, PerRequestStateSpec, plan_kv_cache
from llmserve.kv_cache.state_snapshots import StateSnapshotCache
from llmserve.plugin_testing.cache_spec import check_cache_spec
from llmserve.request import EngineCoreRequest, Request
from llmserve.sampling_params import SamplingParams

BS = 4
STATE = PerRequestStateSpec(((3, 8), (2, 4)), 4)
ATTN = FullAttentionSpec(BS, 2, 8, 4)


def _request(rid: str, tokens) -> Request:
    return Request(EngineCoreRequest(rid, list(tokens), SamplingParams(max_tokens=64)), 4096)


def _manager(specs, max_num_seqs: int = 2) -> KVCacheManager:
    plan = plan_kv_cache(list(specs), 0, max_num_seqs, num_blocks_override=32,
                         state_snapshots=True)
    return KVCacheManager.from_config(plan, BS)


def test_a_snapshot_is_readable_from_the_next_step_on():
    cache = StateSnapshotCache(2, first_row=5)
    cache.begin_step()
    row = cache.take("a")
    assert row in (5, 6)
    assert cache.lookup("a") is None  # written by this step's forward: not yet
    cache.begin_step()
    assert cache.lookup("a") == row
    assert cache.take("a") is None  # the state after a prefix is unique


def test_snapshots_are_evicted_least_recently_used_and_demoted_first():
    cache = StateSnapshotCache(2, first_row=0)
    cache.begin_step()
    ra, rb = cache.take("a"), cache.take("b")
    cache.begin_step()
    cache.touch("a")  # restored: b is now the oldest
    assert cache.take("c") == rb and cache.lookup("b") is None
    cache.begin_step()
    cache.demote("c")  # never restored, its owner moved on: evicted before a
    assert cache.take("d") == cache._rows["d"][0]
    assert cache.lookup("c") is None and cache.lookup("a") == ra
    cache.touch("a")
    cache.demote("a")  # restored once: demoting keeps it
    assert cache.take("e") != ra and cache.lookup("a") == ra


def test_rekey_and_discard():
    cache = StateSnapshotCache(2, first_row=0)
    cache.begin_step()
    row = cache.take("pending")
    cache.rekey("pending", "real")
    cache.begin_step()
    assert cache.lookup("real") == row and cache.lookup("pending") is None
    other = cache.take("pending2")
    cache.rekey("pending2", "real")  # already kept: the duplicate row goes back
    assert len(cache) == 1 and cache.take("x") == other
    cache.discard("real")
    assert len(cache) == 1


@pytest.mark.parametrize("specs", [[STATE], [ATTN, STATE]], ids=["pure-state", "hybrid"])
def test_conformance_kit_passes(specs):
    check_cache_spec(specs, block_size=BS, num_blocks=64)


@pytest.mark.parametrize("specs", [[STATE], [ATTN, STATE]], ids=["pure-state", "hybrid"])
def test_chunks_end_on_block_boundaries(specs):
    kv = _manager(specs)
    assert kv.snapshot_chunk(0, 10) == 8  # crosses 4 and 8: ends at 8
    assert kv.snapshot_chunk(8, 2) == 2  # crosses none
    assert kv.snapshot_chunk(7, 1) == 1  # a decode token ending on a boundary
    assert kv.snapshot_chunk(0, 3) == 3  # shorter than a block


@pytest.mark.parametrize("specs", [[STATE], [ATTN, STATE]], ids=["pure-state", "hybrid"])
def test_preemption_before_the_step_cancels_its_save(specs):
    kv = _manager(specs)
    kv.begin_step()
    req = _request("a", range(10, 19))
    assert kv.allocate_slots(req, 8) is not None
    req.num_computed_tokens = 8
    # Preempted while this step is still being scheduled: its tokens are undone first.
    req.num_computed_tokens = 0
    kv.free(req)
    restores, saves = kv.take_state_copies()
    assert (restores, saves) == ([], [])
    kv.begin_step()
    assert kv.get_computed_blocks(_request("b", range(10, 19)))[1] == 0
    assert len(kv.snapshots) == 0


@pytest.mark.parametrize("specs", [[STATE], [ATTN, STATE]], ids=["pure-state", "hybrid"])
def test_finishing_after_the_step_keeps_the_snapshot(specs):
    kv = _manager(specs)
    kv.begin_step()
    req = _request("a", range(10, 19))
    kv.allocate_slots(req, 8)
    req.num_computed_tokens = 8
    _, saves = kv.take_state_copies()
    assert len(saves) == 1
    kv.free(req)  # aborted after its step ran
    kv.begin_step()
    ids, hit = kv.get_computed_blocks(_request("b", list(range(10, 19)) + [3]))
    assert hit == 8 and len(ids) == (2 if kv.has_paged_layers else 0)


def test_async_decode_snapshot_is_keyed_when_its_last_token_arrives():
    kv = _manager([STATE])
    kv.begin_step()
    req = _request("a", range(10, 17))  # 7 prompt tokens
    kv.allocate_slots(req, 7)
    req.num_computed_tokens = 7
    assert kv.take_state_copies()[1] == []  # 7 is not a boundary
    kv.begin_step()
    # Asynchronous scheduling: the 8th token is scheduled before it is sampled.
    kv.allocate_slots(req, 1)
    req.num_computed_tokens = 8
    _, saves = kv.take_state_copies()
    assert len(saves) == 1  # written after this step, key unknown yet
    req.all_token_ids.append(5)  # the sampled token reaches the scheduler
    kv.begin_step()
    kv.allocate_slots(req, 1)  # the next step keys it
    req.num_computed_tokens = 9
    kv.take_state_copies()
    kv.begin_step()
    probe = _request("b", list(range(10, 17)) + [5, 6])
    assert kv.get_computed_blocks(probe)[1] == 8
