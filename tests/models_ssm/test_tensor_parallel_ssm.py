"""A hybrid (Mamba2 state layers + paged attention) at tensor_parallel_size 2 on gloo gives
the one-rank engine's greedy tokens."""

from __future__ import annotations

from llmserve import LLM, SamplingParams

from model_testutil import tiny_bamba

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(20, 60))]


def test_bamba_at_tensor_parallel_2_matches_one_rank(tmp_path):
    path = tiny_bamba(tmp_path / "bamba")
    settings = dict(dtype="float32", max_model_len=128, skip_tokenizer_init=True)
    one = [o.outputs[0].token_ids for o in LLM(path, **settings).generate(
        PROMPTS, GREEDY, use_tqdm=False)]
    two = LLM(path, **settings, tensor_parallel_size=2, kv_cache_memory=16 << 20)
    assert two.llm_engine.core.kv_cache_config.state_specs  # the state layers are there
    assert [o.outputs[0].token_ids for o in two.generate(PROMPTS, GREEDY,
                                                         use_tqdm=False)] == one
