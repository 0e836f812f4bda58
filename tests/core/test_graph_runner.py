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
