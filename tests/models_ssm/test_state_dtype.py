"""A Mamba layer's SSM state in another dtype than the model's: NemotronH keeps it in fp32
(``mamba_ssm_cache_dtype``, HF's default) under a bf16 model, in the plan and in memory."""

from __future__ import annotations

import pytest
import torch
from llmserve import LLM, SamplingParams
from llmserve.kv_cache.spec import PerRequestStateSpec


def test_bf16_nemotron_h_keeps_an_fp32_ssm_state(tiny_dirs):
    llm = LLM(tiny_dirs("NemotronHForCausalLM"), dtype="bfloat16", max_num_seqs=4,
              skip_tokenizer_init=True)
    core = llm.llm_engine.core
    state_specs = core.kv_cache_config.state_specs
    assert [s.dtypes for s in state_specs] == [(None, "float32")] * 2
    # conv (3, 128 + 2*2*16) in bf16, SSM (8, 16, 16) in fp32, per Mamba layer and row.
    assert state_specs[0].state_bytes == 3 * 192 * 2 + 8 * 16 * 16 * 4
    conv, ssm = core.runner.state_tensors[:2]
    assert (conv.dtype, ssm.dtype) == (torch.bfloat16, torch.float32)
    out = llm.generate([{"prompt_token_ids": list(range(5, 45))}],
                       SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 8
    assert ssm.abs().sum() > 0  # the forward wrote the fp32 rows


def test_fp32_model_needs_no_override(tiny_dirs):
    llm = LLM(tiny_dirs("NemotronHForCausalLM"), dtype="float32", max_num_seqs=2,
              skip_tokenizer_init=True)
    assert all(s.dtypes == () for s in llm.llm_engine.core.kv_cache_config.state_specs)


def test_state_dtypes_are_checked():
    with pytest.raises(ValueError, match="dtypes must name one dtype"):
        PerRequestStateSpec(((2, 3), (4,)), 2, dtypes=("float32",))
    with pytest.raises(ValueError, match="dtypes must name one dtype"):
        PerRequestStateSpec(((2, 3),), 2, dtypes=("int8",))
