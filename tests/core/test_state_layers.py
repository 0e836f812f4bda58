"""Per-request state layers end to end: a model that keeps a running state per sequence.

``RunningSumLlama`` adds one state layer to the tiny Llama: per sequence, a count of the
tokens it has processed, kept in the state slot the scheduler gives the request. The test
checks, through the real engine, that every step's forward sees each sequence's own slot,
that the count survives across steps (so slots are stable while a request runs), and that
slots are handed back and reused.
"""

from __future__ import annotations

import torch

from llmserve import SamplingParams, hookimpl
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.kv_cache.spec import PerRequestStateSpec
from llmserve.models.llama import LlamaForCausalLM
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin


class RunningSumLlama(LlamaForCausalLM):
    seen: list[tuple[list[int], list[float]]] = []

    def cache_specs(self, block_size):
        return super().cache_specs(block_size) + [PerRequestStateSpec(((1,),), 4)]

    def forward(self, input_ids, positions, fctx):
        state = fctx.kv_caches[-1][0]  # [num_slots, 1]
        md = fctx.attn_metadata
        slots = fctx.state_slots
        state[slots, 0] += md.query_lens.to(state.dtype)
        RunningSumLlama.seen.append((slots.tolist(), state[slots, 0].tolist()))
        return super().forward(input_ids, positions, fctx)


class StateModelPlugin:
    @hookimpl
    def llmserve_model_architectures(self):
        return {"LlamaForCausalLM": RunningSumLlama}


def test_state_slots_reach_the_forward_and_persist(tiny_models):
    pm = fresh_plugin_manager()
    RunningSumLlama.seen = []
    with registered_plugin(pm, StateModelPlugin(), "state-model"):
        engine = LLMEngine(EngineArgs(model=tiny_models["LlamaForCausalLM"], dtype="float32",
                                      max_model_len=64, max_num_seqs=2,
                                      max_num_batched_tokens=8), pm)
        core = engine.core
        assert core.kv_cache_config.num_state_slots == 2
        # Prefix caching stays on through state snapshots, as many rows as slots.
        assert core.kv_cache_config.num_state_snapshots == 2
        assert core.kv_manager.snapshots is not None
        params = SamplingParams(max_tokens=3, ignore_eos=True)
        for rid, n in (("a", 5), ("b", 10), ("c", 4)):
            engine.add_request(rid, list(range(3, 3 + n)), params)
        while engine.has_unfinished_requests():
            engine.step()
    assert core.kv_manager.state_slots.num_free_slots == 2
    # The profile run is skipped on the CPU; every recorded step is a real one.
    counts = {}
    for slots, values in RunningSumLlama.seen:
        assert len(set(slots)) == len(slots), "two sequences share a slot in one step"
        assert all(0 <= s < 2 for s in slots)
        for slot, value in zip(slots, values):
            counts.setdefault(slot, []).append(value)
    # A request computes prompt + 2 decode tokens (the third sampled token is not fed back):
    # a, b and c total 7 + 12 + 6 tokens over the two slots, c reusing a freed slot and
    # starting from a's leftover count (state is the model's to reset on a new request).
    assert sum(values[-1] for values in counts.values()) == 7 + 12 + 6
    for values in counts.values():
        assert values == sorted(values), "a slot's running count went backwards"
