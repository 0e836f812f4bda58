"""The NVIDIA plugin's CPU-testable logic: discovery, selection, dtype policy, KV sizing and
CUDA-graph batch buckets. GPU numerics and speed are in benchmarks/gpu (run on an H100)."""

from __future__ import annotations

import pytest
import torch

from llmserve.engine.resolver import select_platform
from llmserve.plugins import collect_list, get_plugin_manager
from llmserve_nvidia import plugin
from llmserve_nvidia.graph_runner import capture_sizes
from llmserve_nvidia.platform import CudaPlatform, kv_budget_from_memory

GiB = 2**30


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
    assert select_platform(get_plugin_manager(), "auto").name == "cpu"


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


def test_kv_budget_from_measured_memory():
    # 80 GiB card, 0.9 of it ours; torch peaked at 17 GiB; 1 GiB held outside torch.
    total, reserved, peak = 80 * GiB, 18 * GiB, 17 * GiB
    free = total - reserved - 1 * GiB
    assert kv_budget_from_memory(total, free, reserved, peak, 0.9) == int(72 * GiB) - 18 * GiB
    with pytest.raises(ValueError, match="no memory left for the KV cache"):
        kv_budget_from_memory(total, free, reserved, 75 * GiB, 0.9)


def test_capture_sizes():
    assert capture_sizes(256) == [1, 2, 4, 8] + list(range(16, 257, 16))
    assert capture_sizes(10) == [1, 2, 4, 8, 10]
    assert capture_sizes(1) == [1]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
