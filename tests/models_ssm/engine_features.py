"""Engine features every SSM architecture must keep exact, as reusable checks: a prefix hit
restores a state snapshot and gives the tokens a miss gives; a conversation's next turn hits
the snapshot its decode left; n>1 and seeded sampling reproduce; forced preemption recomputes
the same tokens. The per-architecture test modules call these on their tiny checkpoints."""

from __future__ import annotations

import torch
from llmserve import LLM, SamplingParams
from model_testutil import VOCAB

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _prompts(shared_len: int = 70, tails=(3, 9, 30), seed: int = 3) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randint(4, VOCAB, (shared_len,), generator=gen).tolist()
    return [shared + torch.randint(4, VOCAB, (n,), generator=gen).tolist() for n in tails]


def _tokens(llm: LLM, prompts, params=GREEDY) -> list[list[list[int]]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [[c.token_ids for c in o.outputs] for o in outs]


def check_prefix_hits_match_misses(model_dir: str, **engine_kwargs) -> None:
    """Same tokens with and without prefix caching; the cached run's second pass hits the
    shared prefix up to the last block boundary a first-pass step ended on."""
    prompts = _prompts()
    miss = _tokens(LLM(model_dir, dtype="float32", enable_prefix_caching=False,
                       **engine_kwargs), prompts)
    llm = LLM(model_dir, dtype="float32", enable_prefix_caching=True, **engine_kwargs)
    assert _tokens(llm, prompts) == miss
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY)
    # Prompts of 73, 79 and 100 tokens, blocks of 16: the first pass left snapshots at 64
    # (the shared 70 tokens' last boundary) and 96.
    assert [o.num_cached_tokens for o in outs] == [64, 64, 96]
    assert [[c.token_ids for c in o.outputs] for o in outs] == miss


def check_next_turn_hits_decode_snapshot(model_dir: str, **engine_kwargs) -> None:
    """A follow-up prompt (prompt + answer + more) restores the state the answer's decode
    snapshotted, and continues as if computed from scratch."""
    first = _prompts(tails=(5,))[0]  # 75 tokens
    llm = LLM(model_dir, dtype="float32", enable_prefix_caching=True, **engine_kwargs)
    answer = _tokens(llm, [first])[0][0]  # 24 tokens: decode crosses 80 and 96
    follow_up = first + answer + [11, 12, 13]
    out = llm.generate([{"prompt_token_ids": follow_up}], GREEDY)[0]
    assert out.num_cached_tokens == 96
    fresh = LLM(model_dir, dtype="float32", enable_prefix_caching=False, **engine_kwargs)
    assert out.outputs[0].token_ids == _tokens(fresh, [follow_up])[0][0]


def check_n_and_seeds_reproduce(model_dir: str, **engine_kwargs) -> None:
    """n=3 seeded sampling gives the same samples on a miss and on a prefix hit, and the
    three samples are not all equal (the state is per sequence, not shared)."""
    params = SamplingParams(n=3, temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    prompts = _prompts(tails=(9,))
    llm = LLM(model_dir, dtype="float32", enable_prefix_caching=True, **engine_kwargs)
    first = _tokens(llm, prompts, params)
    second = _tokens(llm, prompts, params)  # hits the snapshot of the first
    assert first == second
    assert len({tuple(t) for t in first[0]}) > 1


def check_preemption_recomputes_the_same_tokens(model_dir: str, num_blocks: int,
                                                **engine_kwargs) -> None:
    """With too few KV blocks for the batch (hybrid models), requests are preempted and
    recomputed from the start (their state slot given back), and still decode as with room."""
    prompts = _prompts(tails=(3, 9, 30, 12))
    roomy = _tokens(LLM(model_dir, dtype="float32", **engine_kwargs), prompts)
    llm = LLM(model_dir, dtype="float32", num_gpu_blocks_override=num_blocks, **engine_kwargs)
    assert _tokens(llm, prompts) == roomy
    assert llm.llm_engine.core.scheduler.num_preemptions > 0
