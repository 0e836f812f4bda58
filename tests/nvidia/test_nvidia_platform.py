"""The NVIDIA plugin's CPU-testable logic: discovery, selection, dtype policy and the CUDA
specifics it adds to the core's GpuPlatform (whose KV sizing and CUDA-graph runner are tested
in tests/core). GPU numerics and speed are in benchmarks/gpu (run on an H100)."""

from __future__ import annotations

import pytest
import torch

from llmserve.engine.resolver import select_platform
from llmserve.plugins import collect_list, get_plugin_manager
from llmserve_nvidia import plugin
from llmserve_nvidia.platform import CudaPlatform


def test_plugin_is_discovered_through_its_entry_point():
    pm = get_plugin_manager()
    assert pm.get_plugin("nvidia") is not None
    assert CudaPlatform in collect_list(pm, "llmserve_platforms")


@pytest.fixture
def cuda_runtime(monkeypatch):
    """``cuda_runtime(available, hip=None)`` makes torch report a CUDA (or, with ``hip``, a
    ROCm) runtime or none, so these hold on any machine, GPU or not."""

    def set_runtime(available: bool, hip=None) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.version, "hip", hip)

    return set_runtime


def test_auto_device_falls_back_to_cpu_without_a_gpu(cuda_runtime):
    cuda_runtime(False)
    pm = get_plugin_manager()
    assert not CudaPlatform.is_available()
    assert select_platform(pm, "auto").name == "cpu"
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        select_platform(pm, "cuda")


def test_auto_device_picks_cuda_when_torch_sees_a_gpu(cuda_runtime):
    cuda_runtime(True)
    pm = get_plugin_manager()
    assert CudaPlatform.is_available()
    assert select_platform(pm, "auto") is CudaPlatform
    assert select_platform(pm, "cuda") is CudaPlatform
    assert select_platform(pm, "cpu").name == "cpu"


def test_a_rocm_torch_is_not_cuda(cuda_runtime):
    # ROCm builds of torch answer torch.cuda.is_available() too; they are not this platform.
    cuda_runtime(True, hip="6.2.41133")
    assert not CudaPlatform.is_available()
    # With the AMD plugin installed (as in this repository's test install) it is ROCm's.
    assert select_platform(get_plugin_manager(), "auto").name == "rocm"


def test_attention_backend_choice_is_triton_only_on_cuda():
    assert plugin.llmserve_select_attention_backend("cuda", "LlamaForCausalLM") == "triton"
    assert plugin.llmserve_select_attention_backend("cpu", "LlamaForCausalLM") is None


def test_async_scheduling_is_the_cuda_default_only():
    from llmserve.platforms.cpu import CpuPlatform

    assert CudaPlatform.default_async_scheduling is True
    assert CpuPlatform.default_async_scheduling is False


def test_dtype_policy():
    assert CudaPlatform.resolve_dtype(torch.float32) == torch.bfloat16
    assert CudaPlatform.resolve_dtype(torch.float16) == torch.float16
    assert CudaPlatform.resolve_dtype(torch.bfloat16) == torch.bfloat16


def test_cuda_specifics_on_top_of_the_shared_gpu_platform():
    from llmserve.platforms.gpu import GpuPlatform
    from llmserve.runner.graph_runner import GraphModelRunner

    assert issubclass(CudaPlatform, GpuPlatform)
    assert CudaPlatform.fp8_dtype() == torch.float8_e4m3fn
    assert CudaPlatform.device_visibility_env == "CUDA_VISIBLE_DEVICES"
    assert CudaPlatform.distributed_backend == "nccl"
    assert CudaPlatform.can_pin_memory is True
    assert CudaPlatform.needs_profile_run is True
    assert CudaPlatform.model_runner_class() is GraphModelRunner


def test_layer_ops_are_the_triton_kernels():
    pytest.importorskip("triton")
    from llmserve_triton import ops

    table = CudaPlatform.layer_ops()
    assert table.name == "triton"
    assert (table.rms_norm, table.rotary, table.silu_and_mul, table.apply_token_bitmask) == (
        ops.rms_norm, ops.rotary, ops.silu_and_mul, ops.apply_token_bitmask)


def test_cuda_platform_passes_the_platform_conformance_answers():
    """The kit's answer checks on this machine's view of CUDA (none here, or a GPU)."""
    from llmserve.plugin_testing.platform import check_platform_answers
    from llmserve.runner.base import ModelRunnerBase
    from llmserve_nvidia.platform import CudaPlatform

    check_platform_answers(CudaPlatform)
    assert CudaPlatform.distributed_backend == "nccl"
    assert issubclass(CudaPlatform.model_runner_class(), ModelRunnerBase)
