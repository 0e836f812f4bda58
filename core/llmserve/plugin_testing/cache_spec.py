"""Conformance checks for a cache spec: what the KV cache manager must do with its layers.

A plugin that contributes a cache kind through ``llmserve_cache_specs`` runs
``check_cache_spec`` on a spec of that kind (alone, and beside an attention layer for a
hybrid model). Each check drives the real ``KVCacheManager`` the engine would build and
raises ``AssertionError`` naming what broke:

- allocate: requests get room for their tokens; paged layers' block tables cover them;
- free: a finished request gives every block and state slot back;
- preempt: a preempted request (freed, ``num_computed_tokens`` reset) recomputes from the start
  and holds again what it held before;
- prefix hit: a second request with a cached prefix reuses its blocks when the layers allow
  it (paged only), and never when a state layer would miss the prefix's state;
- state snapshots (state layers, prefix caching planned): a step crossing a block boundary is
  trimmed to end on it, the state there is saved into a snapshot row after the step, and a
  later request sharing the prefix hits up to it and gets the snapshot restored into its slot.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmserve.kv_cache.manager import KVCacheManager
from llmserve.kv_cache.spec import CacheSpec, check_layer_specs, plan_kv_cache
from llmserve.request import EngineCoreRequest, Request
from llmserve.sampling_params import SamplingParams

__all__ = ["check_cache_spec", "check_cache_spec_registered"]


def check_cache_spec_registered(pm, spec: CacheSpec) -> None:
    """The spec's kind is contributed through ``llmserve_cache_specs`` on ``pm``."""
    from llmserve.plugins import collect_registry

    check_layer_specs([spec], collect_registry(pm, "llmserve_cache_specs"))


def _request(rid: str, tokens: Sequence[int]) -> Request:
    return Request(EngineCoreRequest(rid, list(tokens), SamplingParams(max_tokens=256)), 4096)


def _held(kv: KVCacheManager) -> int:
    return kv.num_blocks - kv.num_free_blocks if kv.has_paged_layers else 0


def check_cache_spec(layer_specs: Sequence[CacheSpec], block_size: int = 16,
                     max_num_seqs: int = 4, num_blocks: int = 64) -> None:
    """Run the allocate / free / preempt / prefix-hit checks on a cache of ``layer_specs``."""
    plan = plan_kv_cache(list(layer_specs), 0, max_num_seqs, num_blocks_override=num_blocks)
    has_state = bool(plan.state_specs)
    assert plan.num_state_slots == (max_num_seqs if has_state else 0), "state slots"
    kv = KVCacheManager.from_config(plan, block_size)
    prompt = list(range(3 * block_size + 5))

    # allocate
    reqs = [_request(f"r{i}", prompt[: block_size * (i + 1) + 1]) for i in range(max_num_seqs)]
    for req in reqs:
        assert kv.allocate_slots(req, req.num_tokens) is not None, f"{req.request_id}: no room"
        req.num_computed_tokens = req.num_tokens
        if kv.has_paged_layers:
            assert len(kv.get_block_ids(req.request_id)) * block_size >= req.num_tokens, \
                f"{req.request_id}: block table does not cover its tokens"
    if has_state:
        slots = {kv.get_state_slot(r.request_id) for r in reqs}
        assert slots == set(range(max_num_seqs)), f"state slots {slots}: one each, all distinct"
        extra = _request("extra", prompt[:5])
        assert kv.allocate_slots(extra, 5) is None, "more running requests than state slots"

    # free
    for req in reqs:
        kv.free(req)
        assert kv.get_state_slot(req.request_id) is None, "state slot kept after free"
    assert _held(kv) == 0, f"{_held(kv)} blocks still held after every request was freed"

    # preempt: free mid-flight, reset, recompute from the start
    req = _request("p", prompt)
    assert kv.allocate_slots(req, req.num_tokens) is not None
    req.num_computed_tokens = req.num_tokens
    held, slot = _held(kv), kv.get_state_slot("p")
    kv.free(req)
    req.num_computed_tokens = 0
    assert kv.allocate_slots(req, req.num_tokens) is not None, "resume after preemption failed"
    req.num_computed_tokens = req.num_tokens
    assert _held(kv) == held, "a resumed request holds a different number of blocks"
    assert (kv.get_state_slot("p") is None) == (slot is None), "state slot lost on resume"
    kv.free(req)

    # prefix hit
    first = _request("a", prompt)
    kv.allocate_slots(first, first.num_tokens)
    first.num_computed_tokens = first.num_tokens
    kv.free(first)
    second = _request("b", prompt + [7])
    _, num_hit = kv.get_computed_blocks(second)
    if has_state or not kv.has_paged_layers:
        assert num_hit == 0, "a prefix hit would skip the state of the prefix"
    else:
        assert num_hit == (len(prompt) // block_size) * block_size, f"prefix hit of {num_hit}"
    hits = kv.get_computed_blocks(second)[0]
    assert kv.allocate_slots(second, second.num_tokens - num_hit, hits) is not None
    second.num_computed_tokens = second.num_tokens
    kv.free(second)
    assert _held(kv) == 0, "blocks still held after the prefix-hit request was freed"
    if has_state:
        _check_state_snapshots(layer_specs, block_size, max_num_seqs, num_blocks, prompt)


def _check_state_snapshots(layer_specs: Sequence[CacheSpec], block_size: int,
                           max_num_seqs: int, num_blocks: int, prompt: list[int]) -> None:
    plan = plan_kv_cache(list(layer_specs), 0, max_num_seqs, num_blocks_override=num_blocks,
                         state_snapshots=True)
    assert plan.num_state_snapshots == max_num_seqs, "one snapshot row per state slot"
    kv = KVCacheManager.from_config(plan, block_size)
    boundary = (len(prompt) // block_size) * block_size
    kv.begin_step()
    first = _request("s1", prompt)
    num_new = kv.snapshot_chunk(0, first.num_tokens)
    assert num_new == boundary, f"a prefill of {first.num_tokens} trimmed to {num_new}"
    assert kv.allocate_slots(first, num_new) is not None
    first.num_computed_tokens = num_new
    slot = kv.get_state_slot("s1")
    restores, saves = kv.take_state_copies()
    assert restores == [] and len(saves) == 1 and saves[0][0] == slot, f"saves {saves}"
    row = saves[0][1]
    assert plan.num_state_slots <= row < plan.num_state_rows, f"snapshot row {row}"
    second = _request("s2", prompt + [7])
    assert kv.get_computed_blocks(second)[1] == 0, "a snapshot is readable in its own step"
    kv.begin_step()
    hit_ids, num_hit = kv.get_computed_blocks(second)
    assert num_hit == boundary, f"prefix hit of {num_hit} through the snapshot"
    assert kv.allocate_slots(second, second.num_tokens - num_hit, hit_ids, num_hit) is not None
    restores, _ = kv.take_state_copies()
    assert restores == [(row, kv.get_state_slot("s2"))], f"restores {restores}"
    for req in (first, second):
        req.num_computed_tokens = req.num_tokens
        kv.free(req)
    assert _held(kv) == 0, "blocks still held after the snapshot requests were freed"
