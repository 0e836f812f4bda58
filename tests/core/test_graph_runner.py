"""The graph runner's host-side logic on the CPU: batch buckets, padding rows, scratch block.
Capture and replay themselves need a GPU (benchmarks/gpu)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from llmserve.attention.torch_ref import TorchPagedAttention
from llmserve.config import EngineArgs
from llmserve.engine.resolver import resolve_engine
from llmserve.kv_cache.spec import KVCacheConfig, PerRequestStateSpec
from llmserve.platforms.cpu import CpuPlatform
from llmserve.platforms.gpu import GpuPlatform
from llmserve.plugin_testing import fresh_plugin_manager
from llmserve.runner.base import RunnerConfig
from llmserve.plugin_testing.eager_replay import EagerReplayPlatform, EagerReplayRunner
from llmserve.runner.graph_runner import (GraphModelRunner, capture_sizes, pad_inert,
                                          padded_size, stage_decode_inputs)
from llmserve.runner.model_runner import StepBatch


def test_capture_sizes():
    assert capture_sizes(256) == [1, 2, 4, 8] + list(range(16, 257, 16))
    assert capture_sizes(10) == [1, 2, 4, 8, 10]
    assert capture_sizes(1) == [1]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]


def test_a_batch_replays_at_the_smallest_captured_size_that_holds_it():
    sizes = capture_sizes(40)
    assert [padded_size(sizes, n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 33, 40)] == \
        [1, 2, 4, 8, 8, 16, 16, 32, 40, 40]
    assert padded_size(sizes, 41) is None  # larger than every graph: runs eagerly


def _decode_step(ids, positions, slots, seq_lens) -> StepBatch:
    n = len(ids)
    arr = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return StepBatch(rows=np.arange(n), num_sched=np.ones(n, dtype=np.int64),
                     computed=arr(seq_lens) - 1, cu=np.arange(1, n + 1), input_ids=arr(ids),
                     positions=arr(positions), slots=arr(slots), seq_lens=arr(seq_lens))


def test_staged_inputs_are_padded_with_inert_rows_in_the_scratch_block():
    scratch, bs, scratch_row = 9, 16, 6
    host = torch.full((5, 8), -5, dtype=torch.long)
    step = _decode_step(ids=[101, 102, 103], positions=[4, 17, 0], slots=[36, 49, 64],
                        seq_lens=[5, 18, 1])
    stage_decode_inputs(host, step, size=4, scratch_block=scratch, block_size=bs,
                        state_slots=np.array([2, 0, 5]), scratch_state_row=scratch_row)
    assert host[:, :3].tolist() == [[101, 102, 103], [4, 17, 0], [36, 49, 64], [5, 18, 1],
                                    [2, 0, 5]]
    # The padding row: token 0 at position 0, K/V into the scratch block's first slot, state
    # in the scratch state row.
    assert host[:, 3].tolist() == [0, 0, scratch * bs, 1, scratch_row]
    assert (host[:, 4:] == -5).all()  # beyond the captured size: untouched

    stage_decode_inputs(host, _decode_step([7], [2], [3], [3]), size=1, scratch_block=scratch,
                        block_size=bs)
    assert host[:4, 0].tolist() == [7, 2, 3, 3]
    assert host[:, 3].tolist() == [0, 0, scratch * bs, 1, scratch_row]  # nothing padded


def test_pad_inert_resets_every_row_of_the_range():
    host = torch.arange(5 * 6, dtype=torch.long).reshape(5, 6)
    pad_inert(host, 2, 5, scratch_block=3, block_size=4, scratch_state_row=7)
    assert host[:, 2:5].tolist() == [[0] * 3, [0] * 3, [12] * 3, [1] * 3, [7] * 3]
    assert host[:, [0, 1, 5]].tolist() == [[0, 1, 5], [6, 7, 11], [12, 13, 17], [18, 19, 23],
                                           [24, 25, 29]]


class CpuMemoryGpu(GpuPlatform):
    """A GpuPlatform whose device is the CPU: enough to build the graph runner and allocate
    its cache here (no capture, no pinned memory)."""

    name = "cpu-memory-gpu"
    can_pin_memory = False

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device(cls) -> torch.device:
        return torch.device("cpu")


def _config(tiny_models, platform) -> RunnerConfig:
    pm = fresh_plugin_manager()
    resolved = resolve_engine(EngineArgs(model=tiny_models["LlamaForCausalLM"]), pm)
    return RunnerConfig(resolved.config, resolved.hf_config, resolved.model_cls,
                        TorchPagedAttention, (), "auto", platform)


def test_graph_runner_keeps_one_scratch_block_beyond_the_plan(tiny_models):
    runner = GraphModelRunner(_config(tiny_models, CpuMemoryGpu))
    runner.load_model()
    specs = tuple(runner.cache_specs())
    runner.initialize_kv_cache(KVCacheConfig(specs, 10, 0))
    assert runner.scratch_block == 10
    assert len(runner.kv_caches) == len(specs) == 2
    backend = runner.attn_backend
    expected = backend.kv_cache_shape(11, specs[0].block_size, specs[0].num_kv_heads,
                                      specs[0].head_size)
    assert all(tuple(c.shape) == tuple(expected) for c in runner.kv_caches)


def test_graph_runner_needs_a_gpu_platform(tiny_models):
    with pytest.raises(TypeError, match="GraphModelRunner needs a GpuPlatform .*platform "
                                        "'cpu' is not one"):
        GraphModelRunner(_config(tiny_models, CpuPlatform))


def test_graph_runner_keeps_one_scratch_state_row_beyond_slots_and_snapshots(tiny_models):
    runner = GraphModelRunner(_config(tiny_models, CpuMemoryGpu))
    runner.load_model()
    state = PerRequestStateSpec(((3, 4), (2,)), 4)
    runner.initialize_kv_cache(KVCacheConfig(tuple(runner.cache_specs()) + (state,), 10,
                                             num_state_slots=2, num_state_snapshots=2))
    # Rows 0-1 are slots, 2-3 snapshots, 4 the padded graph rows' scratch.
    assert runner.scratch_state_row == 4
    assert [tuple(t.shape) for t in runner.kv_caches[-1]] == [(5, 3, 4), (5, 2)]
    assert [tuple(t.shape) for t in runner.state_tensors] == [(5, 3, 4), (5, 2)]


# ---- the replay paths on the CPU -------------------------------------------------------------


PROMPTS = [[7], [5, 9, 11, 300], list(range(20, 60)), [40, 41, 42, 43] * 15,
           [100 + i % 7 for i in range(30)]]


def _greedy_tokens(engine, prompts, new_tokens=20) -> list[list[int]]:
    from llmserve.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{len(engine.seen)}-{i}", p, params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = list(out.outputs[0].token_ids)
    engine.seen.append(1)
    return [done[f"r{len(engine.seen) - 1}-{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("spec", [
    {"method": "ngram", "num_speculative_tokens": 3},
    {"method": "draft_model", "num_speculative_tokens": 4},
], ids=["ngram", "draft_model"])
def test_verification_and_drafting_replays_keep_greedy_tokens(tiny_models, spec):
    """Steps of at most k + 1 tokens per request replay the verification graph, laid out
    k + 1 columns per request; the draft model replays its recorded drafting. Greedy tokens
    stay those of the plain engine, over prompts of 1 to 60 tokens and batches of 1 to 5."""
    from llmserve import hookimpl
    from llmserve.engine.llm_engine import LLMEngine
    from llmserve.plugin_testing import registered_plugin

    path = tiny_models["LlamaForCausalLM"]
    if spec["method"] == "draft_model":
        spec = {**spec, "model": path}
    args = dict(model=path, dtype="float32", max_model_len=256, max_num_seqs=8)
    plain = LLMEngine(EngineArgs(**args), fresh_plugin_manager())
    plain.seen = []
    want = _greedy_tokens(plain, PROMPTS)
    plugin = type("P", (), {"llmserve_platforms": staticmethod(
        hookimpl(lambda: [EagerReplayPlatform]))})()
    EagerReplayRunner.replays = {}
    pm = fresh_plugin_manager()
    with registered_plugin(pm, plugin, "eager-replay"):
        engine = LLMEngine(EngineArgs(**args, device="eager-replay", speculative_config=spec),
                           pm)
        engine.seen = []
        runner = engine.core.runner
        assert isinstance(runner, EagerReplayRunner)
        got = _greedy_tokens(engine, PROMPTS)
        one = [_greedy_tokens(engine, [p])[0] for p in PROMPTS[2:4]]
    assert got == want and one == want[2:4]
    q = spec["num_speculative_tokens"] + 1
    verify = runner.graph_sets[q]
    assert engine.core.stats()["spec_decode_num_accepted_tokens"] > 0
    # Recordings in order: decode graphs, verification graphs, then the proposer's.
    counts = list(EagerReplayRunner.replays.values())
    n = len(runner.sizes)
    assert len(verify.graphs) == n
    assert sum(counts[n:2 * n]) > 0
    if spec["method"] == "ngram":  # steps without drafts decode
        assert sum(counts[:n]) > 0
    else:
        recorded = runner.proposer.recorded
        assert recorded is not None and recorded.q == q
        assert len(counts) == 2 * n + len(recorded.sizes) and sum(counts[2 * n:]) > 0


def _perturbed_copy(model_dir: str, out) -> str:
    """The model with noise on its weights: as a draft it agrees with the model part of the
    time, so both accepted and rejected drafts occur."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(f"{out}/model.safetensors")
    gen = torch.Generator().manual_seed(3)
    save_file({name: w + 0.2 * w.std() * torch.randn(w.shape, generator=gen)
               for name, w in weights.items()}, f"{out}/model.safetensors")
    return str(out)


@pytest.mark.parametrize("spec", [
    {"method": "ngram", "num_speculative_tokens": 3},
    {"method": "draft_model", "num_speculative_tokens": 4},
], ids=["ngram", "draft_model"])
def test_asynchronous_speculation_on_the_device_keeps_greedy_tokens(tiny_models, spec, tmp_path):
    """Asynchronous scheduling with speculation, through the replay paths: the draft model
    drafts on the device from the tokens of the step in flight, and the verification graph
    reads the previous step's last tokens and moves positions back by its rejected drafts,
    all before the host has them. Greedy tokens stay the plain engine's; the draft model's
    steps wait for the host only where a step runs eagerly (a prefill)."""
    from llmserve import hookimpl
    from llmserve.engine.llm_engine import LLMEngine
    from llmserve.plugin_testing import registered_plugin

    path = tiny_models["LlamaForCausalLM"]
    if spec["method"] == "draft_model":
        spec = {**spec, "model": _perturbed_copy(path, tmp_path / "draft")}
    args = dict(model=path, dtype="float32", max_model_len=256, max_num_seqs=8)
    plain = LLMEngine(EngineArgs(**args), fresh_plugin_manager())
    plain.seen = []
    want = _greedy_tokens(plain, PROMPTS, new_tokens=30)
    plugin = type("P", (), {"llmserve_platforms": staticmethod(
        hookimpl(lambda: [EagerReplayPlatform]))})()
    EagerReplayRunner.replays = {}
    pm = fresh_plugin_manager()
    with registered_plugin(pm, plugin, "eager-replay"):
        # Speculation is synchronous unless asynchronous scheduling is asked for, even where
        # the platform schedules asynchronously by default.
        default = resolve_engine(EngineArgs(**args, device="eager-replay",
                                            speculative_config=spec), pm)
        assert EagerReplayPlatform.default_async_scheduling
        assert not default.config.scheduler.async_scheduling
        engine = LLMEngine(EngineArgs(**args, device="eager-replay", speculative_config=spec,
                                      async_scheduling=True), pm)
        engine.seen = []
        runner = engine.core.runner
        got = _greedy_tokens(engine, PROMPTS, new_tokens=30)
        first_stats = engine.core.stats()
        one = [_greedy_tokens(engine, [p], new_tokens=30)[0] for p in PROMPTS[2:4]]
    assert got == want and one == want[2:4]
    stats = engine.core.stats()
    assert 0 < stats["spec_decode_num_accepted_tokens"] < stats["spec_decode_num_draft_tokens"]
    if spec["method"] == "draft_model":
        assert runner.num_device_proposals > 20
        assert runner.num_host_waits <= 3
    else:  # n-gram lookup reads the host's tokens: every drafting step waits
        assert runner.num_device_proposals == 0 and runner.num_host_waits > 0
        # Draft places the lookup left empty are computed but neither scored nor counted:
        # the counters are those of synchronous scheduling, but for the last steps of each
        # request, where the optimistic counts leave room for fewer drafts (filled with 4
        # tokens for every place scheduled, they would be several times larger).
        sync = LLMEngine(EngineArgs(**args, speculative_config=spec), fresh_plugin_manager())
        sync.seen = []
        _greedy_tokens(sync, PROMPTS, new_tokens=30)
        sync_stats = sync.core.stats()
        for key in ("spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"):
            assert abs(first_stats[key] - sync_stats[key]) <= 0.2 * sync_stats[key], (
                key, first_stats, sync_stats)
    assert engine.core.kv_manager.num_free_blocks == engine.core.num_blocks


def _completions(engine, prompts, params) -> list:
    for i, p in enumerate(prompts):
        engine.add_request(f"c{len(engine.seen)}-{i}", p, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs
    engine.seen.append(1)
    return [done[f"c{len(engine.seen) - 1}-{i}"] for i in range(len(prompts))]


def test_asynchronous_device_speculation_with_preemption_logprobs_and_seeds(tiny_models,
                                                                            tmp_path):
    """The device path beside chunked prefill, prefix hits and preemption (a cache of 12
    blocks for 4 requests), with logprobs, a stop token inside a run of drafts, and seeded
    sampling with n=3."""
    from llmserve import hookimpl
    from llmserve.engine.llm_engine import LLMEngine
    from llmserve.plugin_testing import registered_plugin
    from llmserve.sampling_params import SamplingParams

    path = tiny_models["LlamaForCausalLM"]
    args = dict(model=path, dtype="float32", max_model_len=256, max_num_seqs=4,
                max_num_batched_tokens=16, num_gpu_blocks_override=12)
    spec = {"method": "draft_model", "num_speculative_tokens": 3,
            "model": _perturbed_copy(path, tmp_path / "draft")}
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    plain = LLMEngine(EngineArgs(**args), fresh_plugin_manager())
    plain.seen = []
    want = [c[0] for c in _completions(plain, PROMPTS, greedy)]
    plugin = type("P", (), {"llmserve_platforms": staticmethod(
        hookimpl(lambda: [EagerReplayPlatform]))})()
    pm = fresh_plugin_manager()
    with registered_plugin(pm, plugin, "eager-replay"):
        engine = LLMEngine(EngineArgs(**args, device="eager-replay", speculative_config=spec,
                                      async_scheduling=True), pm)
        engine.seen = []
        for _ in range(2):  # the second time with prefix hits
            got = [c[0] for c in _completions(engine, PROMPTS, greedy)]
            assert [c.token_ids for c in got] == [c.token_ids for c in want]
            for a, b in zip(got, want):
                for x, y in zip(a.logprobs, b.logprobs):
                    assert list(x) == list(y)
                    assert [v.logprob for v in x.values()] == pytest.approx(
                        [v.logprob for v in y.values()], abs=1e-4)
        stop = want[2].token_ids[10]
        cut = _completions(engine, [PROMPTS[2]], SamplingParams(
            temperature=0.0, max_tokens=24, ignore_eos=True, stop_token_ids=[stop]))[0][0]
        assert cut.token_ids == want[2].token_ids[:want[2].token_ids.index(stop) + 1]
        core = engine.core
        assert core.scheduler.num_preemptions > 0
        assert core.stats()["prefix_cache_hits"] > 0
        assert core.runner.num_device_proposals > 10
        assert core.kv_manager.num_free_blocks == core.num_blocks
        # Seeds reproduce beside other requests where the token budget leaves every request
        # its drafts (a seeded stream draws per draft).
        engine = LLMEngine(EngineArgs(**{**args, "max_num_batched_tokens": 256},
                                      device="eager-replay", speculative_config=spec,
                                      async_scheduling=True), pm)
        engine.seen = []
        seeded = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=5, ignore_eos=True)
        a = [c.token_ids for c in _completions(engine, [PROMPTS[1]], seeded)[0]]
        b = [c.token_ids for c in _completions(engine, [PROMPTS[1], [9] * 5], seeded)[0]]
        assert a == b and len({tuple(x) for x in a}) > 1
