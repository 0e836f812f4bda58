"""MambaForCausalLM (Mamba1): a config variant against HF, the old embedding name, and the
mixer's decode path against its prefill path over the engine's state slots (the
architecture-wide tests are in test_models)."""

from __future__ import annotations

import shutil

import torch
from llmserve import LLM
from llmserve.plugin_testing.hf_parity import greedy_params
from llmserve_ssm.layers.mamba import MambaDims, MambaMixer
from llmserve_ssm.layers.step import MambaStep, kernels_for
from model_testutil import assert_hf_parity, parity_prompts
from safetensors.torch import load_file, save_file
from ssm_testutil import assert_close, cu_seqlens_of


def test_hf_parity_config_variant(mamba_variant_dir):
    assert_hf_parity(mamba_variant_dir, parity_prompts())


def test_loads_embedding_table_named_embedding(mamba_dir, tmp_path):
    """Some checkpoints name the table ``backbone.embedding``; the current HF loader does not
    rename it any more, so the check is against the engine on the usual names."""
    renamed = tmp_path / "renamed"
    shutil.copytree(mamba_dir, renamed)
    weights = renamed / "model.safetensors"
    save_file({name.replace("backbone.embeddings.", "backbone.embedding."): t
               for name, t in load_file(weights).items()}, weights, metadata={"format": "pt"})
    prompts = [{"prompt_token_ids": p} for p in parity_prompts((3, 17))]
    outs = [LLM(str(d), dtype="float32").generate(prompts, greedy_params(4))
            for d in (mamba_dir, renamed)]
    for usual, old_name in zip(*outs):
        assert usual.outputs[0].token_ids == old_name.outputs[0].token_ids
        assert usual.outputs[0].logprobs == old_name.outputs[0].logprobs


def test_decode_steps_match_one_prefill():
    """Prefill n - 2 tokens then decode 2, each sequence in a scattered slot, equals a
    prefill of all n; the slot no sequence owns is left alone."""
    dims = MambaDims(hidden_size=32, d_inner=64, d_state=8, dt_rank=4, conv_kernel=4)
    mixer = MambaMixer(dims, cache_index=0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # scaled by fan-in, so the output is O(1) and the check is tight
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
        mixer.A_log.uniform_(-1, 1, generator=gen)
        mixer.dt_proj.bias.uniform_(-3, 0.5, generator=gen)
    lengths, slots, num_decode = [5, 3, 9], torch.tensor([3, 0, 2]), 2
    hidden = torch.randn(sum(lengths), dims.hidden_size, generator=gen)
    spec = mixer.cache_spec()

    def fresh_caches() -> list:
        # Garbage in every slot: a new sequence must start from zeros whatever its slot holds.
        return [[torch.randn(4, *shape, generator=torch.Generator().manual_seed(9))
                 for shape in spec.shapes]]

    def run(caches, x, step_lengths, has_state):
        step = MambaStep(state_indices=slots, cu_seqlens=cu_seqlens_of(step_lengths),
                         has_initial_state=torch.tensor(has_state),
                         is_decode=max(step_lengths) == 1, kernels=kernels_for("cpu"))
        return mixer(x, caches, step)

    seqs, prefix = hidden.split(lengths), [n - num_decode for n in lengths]
    with torch.no_grad():
        whole_caches = fresh_caches()
        whole = run(whole_caches, hidden, lengths, [False] * 3).split(lengths)

        caches = fresh_caches()
        pieces = [run(caches, torch.cat([s[:n] for s, n in zip(seqs, prefix)]), prefix,
                      [False] * 3).split(prefix)]
        for t in range(num_decode):
            tokens = torch.stack([s[n + t] for s, n in zip(seqs, prefix)])
            pieces.append(run(caches, tokens, [1] * 3, [True] * 3).split(1))

    assert whole[0].abs().max() > 0.1
    for i, per_step in enumerate(zip(*pieces)):
        assert_close(torch.cat(per_step), whole[i], f"mamba mixer decode, sequence {i}")
    for kind, (got, want, garbage) in enumerate(zip(caches[0], whole_caches[0],
                                                    fresh_caches()[0])):
        assert_close(got, want, f"mamba mixer decode, state {kind}")
        assert torch.equal(got[1], garbage[1])

