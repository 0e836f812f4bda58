"""The AMD plugin's logic on a faked ROCm torch: discovery, selection, the architecture and
what follows from it (dtype policy, FP8 flavour, kernel tuning), the forced ROCm path, and
what it shares with NVIDIA through the core's GpuPlatform. Compilation of the tuned kernels
for gfx942/gfx950 is in tests/kernels_triton/test_triton_compile_amd.py; the forced path ran
end to end on an H200 (benchmarks/gpu/rocm_path.py)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch

from llmserve.engine.resolver import select_platform
from llmserve.platforms.gpu import GpuPlatform
from llmserve.plugins import collect_list, collect_registry, get_plugin_manager
from llmserve.runner.graph_runner import GraphModelRunner
from llmserve_amd import plugin
from llmserve_amd.arch import KNOWN_ARCHS, gfx_arch, parse_gcn_arch
from llmserve_amd.platform import RocmPlatform
from llmserve_amd.tuning import CDNA3, CDNA4
from llmserve_triton.tuning import DEFAULT_TUNING

MI300X = SimpleNamespace(name="AMD Instinct MI300X", gcnArchName="gfx942:sramecc+:xnack-",
                         warp_size=64, multi_processor_count=304, total_memory=192 * 2**30)
MI355X = SimpleNamespace(name="AMD Instinct MI355X", gcnArchName="gfx950:sramecc+:xnack-",
                         warp_size=64, multi_processor_count=256, total_memory=288 * 2**30)
RADEON = SimpleNamespace(name="AMD Radeon RX 7900 XTX", gcnArchName="gfx1100",
                         warp_size=32, multi_processor_count=48, total_memory=24 * 2**30)


@pytest.fixture(autouse=True)
def no_forcing(monkeypatch):
    monkeypatch.delenv("LLMSERVE_PLATFORM", raising=False)
    monkeypatch.delenv("LLMSERVE_ROCM_ARCH", raising=False)


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(props, hip=...)``: torch reports one GPU with these properties, on a ROCm build
    (``hip`` a version string) or a CUDA one (``hip=None``); ``gpu(None)``: no GPU."""

    def set_gpu(props, hip="6.4.43482", bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: props is not None)
        monkeypatch.setattr(torch.version, "hip", hip)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return set_gpu


def test_plugin_is_discovered_through_its_entry_point():
    pm = get_plugin_manager()
    assert pm.get_plugin("amd") is not None
    assert RocmPlatform in collect_list(pm, "llmserve_platforms")
    assert collect_registry(pm, "llmserve_attention_backends")["triton_rocm"].name == \
        "triton_rocm"


def test_auto_picks_rocm_on_a_hip_build_and_cuda_means_it_too(gpu):
    gpu(MI300X)
    pm = get_plugin_manager()
    assert RocmPlatform.is_available()
    assert select_platform(pm, "auto") is RocmPlatform
    assert select_platform(pm, "rocm") is RocmPlatform
    # vLLM users on ROCm say --device cuda (torch's name for the device type): it is ROCm.
    assert select_platform(pm, "cuda") is RocmPlatform
    assert select_platform(pm, "cpu").name == "cpu"


def test_a_cuda_build_is_not_rocm(gpu):
    gpu(SimpleNamespace(name="NVIDIA H200", multi_processor_count=132), hip=None)
    pm = get_plugin_manager()
    assert not RocmPlatform.is_available()
    assert select_platform(pm, "auto").name == "cuda"
    with pytest.raises(ValueError, match="device 'rocm' is not available"):
        select_platform(pm, "rocm")


def test_no_gpu_means_cpu(gpu):
    gpu(None)
    pm = get_plugin_manager()
    assert not RocmPlatform.is_available() and not RocmPlatform.can_run_forced()
    assert select_platform(pm, "auto").name == "cpu"
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        select_platform(pm, "cuda")


@pytest.mark.parametrize("raw,name", [
    ("gfx942:sramecc+:xnack-", "gfx942"), ("gfx950", "gfx950"),
    ("gfx90a:sramecc-:xnack+", "gfx90a"), (" gfx1100 ", "gfx1100")])
def test_gcn_arch_names_are_parsed(raw, name):
    assert parse_gcn_arch(raw) == name


def test_a_name_that_is_no_gfx_arch_is_refused():
    with pytest.raises(ValueError, match="not an AMD gfx architecture name: 'sm_90'"):
        parse_gcn_arch("sm_90")


@pytest.mark.parametrize("props,family,fp8,tuning", [
    (MI300X, "CDNA3", torch.float8_e4m3fnuz, CDNA3),
    (MI355X, "CDNA4", torch.float8_e4m3fn, CDNA4),
])
def test_the_architecture_sets_fp8_flavour_dtype_and_tuning(gpu, props, family, fp8, tuning):
    gpu(props)
    arch = RocmPlatform.arch()
    assert (arch.family, arch.fp8_dtype, arch.tuning) == (family, fp8, tuning)
    assert RocmPlatform.fp8_dtype() is fp8
    assert RocmPlatform.kernel_tuning() is tuning
    assert RocmPlatform.resolve_dtype(torch.float32) is torch.bfloat16
    assert RocmPlatform.resolve_dtype(torch.float16) is torch.float16
    assert RocmPlatform.resolve_dtype(torch.bfloat16) is torch.bfloat16


def test_an_unlisted_architecture_gets_no_fp8_and_its_own_wave_size(gpu):
    gpu(RADEON)
    arch = RocmPlatform.arch()
    assert (arch.name, arch.family, arch.fp8_dtype) == ("gfx1100", "unknown", None)
    assert arch.tuning.name == "generic-wave32" and arch.tuning.warp_size == 32
    assert arch.tuning.attention_compile_options("hip") == {}
    assert RocmPlatform.fp8_dtype() is None


def test_without_bf16_float32_checkpoints_run_in_float16(gpu):
    gpu(SimpleNamespace(gcnArchName="gfx906:sramecc+:xnack-", warp_size=64), bf16=False)
    assert RocmPlatform.arch().bf16 is None  # not in the table: torch is asked
    assert RocmPlatform.resolve_dtype(torch.float32) is torch.float16
    gpu(RADEON, bf16=True)
    assert RocmPlatform.resolve_dtype(torch.float32) is torch.bfloat16


def test_the_arch_table_covers_the_instinct_generations_named_in_the_readme():
    products = {p: a.name for a in KNOWN_ARCHS.values() for p in a.products}
    assert products["MI300X"] == products["MI325X"] == "gfx942"
    assert products["MI355X"] == "gfx950"
    assert gfx_arch("gfx942") is KNOWN_ARCHS["gfx942"]


def test_cdna_tunings_are_wave64_with_hip_hints_kept_to_hip():
    for tuning, kpack in ((CDNA3, 2), (CDNA4, 1)):
        assert tuning.warp_size == 64 and tuning.backend == "hip"
        assert tuning.warps(256) == 4 and tuning.warps(32) == 1
        assert tuning.attention_compile_options("hip") == {
            "num_stages": 1, "waves_per_eu": 2, "matrix_instr_nonkdim": 16, "kpack": kpack}
        # Forced onto an NVIDIA GPU the tiles and stages apply; HIP's hints do not exist there.
        assert tuning.attention_compile_options("cuda") == {"num_stages": 1}
    assert DEFAULT_TUNING.attention_compile_options("cuda") == {}
    assert DEFAULT_TUNING.warps(256) == 8


def test_a_tuning_refuses_what_cannot_be_launched():
    from llmserve_triton.tuning import KernelTuning

    with pytest.raises(ValueError, match="warp_size must be 32 or 64, got 48"):
        KernelTuning("x", warp_size=48)
    with pytest.raises(ValueError, match="need the backend"):
        KernelTuning("x", attention_options=(("waves_per_eu", 2),))


def test_attention_launch_configs_follow_the_tuning():
    pytest.importorskip("triton")
    from llmserve_triton.kernels.attention import AttentionConfig, attention_config

    # (max_query_len, queries per KV head, head_dim) -> config
    assert attention_config(1, 4, 128, CDNA3) == AttentionConfig(16, 4, 64, 4)
    assert attention_config(512, 4, 128, CDNA3) == AttentionConfig(128, 32, 64, 8)
    assert attention_config(512, 8, 256, CDNA4) == AttentionConfig(64, 8, 64, 4)
    assert attention_config(512, 7, 64, CDNA3) == AttentionConfig(128, 18, 64, 8)
    # The default (NVIDIA) configs are unchanged by tunings existing.
    assert attention_config(1, 4, 128) == AttentionConfig(16, 4, 32, 4)
    assert attention_config(512, 4, 128) == AttentionConfig(64, 16, 32, 4)
    assert attention_config(512, 1, 64) == AttentionConfig(64, 64, 64, 4)


def test_layer_ops_are_the_triton_kernels_bound_to_the_arch_tuning(gpu):
    pytest.importorskip("triton")
    from llmserve_triton import ops

    gpu(MI355X)
    table = RocmPlatform.layer_ops()
    assert table.name == "triton-cdna4"
    for name in ("rms_norm", "rotary", "silu_and_mul", "apply_token_bitmask"):
        op = getattr(table, name)
        assert isinstance(op, partial) and op.func is getattr(ops, name)
        assert op.keywords == {"tuning": CDNA4}


def test_the_attention_backend_is_the_tuned_one_only_on_rocm(gpu):
    pytest.importorskip("triton")
    from llmserve_amd.backend import RocmTritonAttention
    from llmserve_triton.backend import TritonPagedAttention

    assert plugin.llmserve_select_attention_backend("rocm", "LlamaForCausalLM") == "triton_rocm"
    assert plugin.llmserve_select_attention_backend("cuda", "LlamaForCausalLM") is None
    assert RocmPlatform.default_attention_backend == "triton_rocm"
    gpu(MI300X)
    assert RocmTritonAttention.kernel_tuning() is CDNA3
    gpu(MI355X)
    assert RocmTritonAttention.kernel_tuning() is CDNA4
    assert TritonPagedAttention.kernel_tuning() is DEFAULT_TUNING


def test_gpu_logic_is_shared_with_nvidia_not_copied():
    """KV sizing, the graph runner, async copies and events come from the core's
    GpuPlatform, which the NVIDIA platform subclasses too."""
    from llmserve_nvidia.platform import CudaPlatform

    assert issubclass(RocmPlatform, GpuPlatform) and issubclass(CudaPlatform, GpuPlatform)
    shared = ("kv_cache_budget_bytes", "model_runner_class", "host_buffer", "record_event",
              "synchronize", "select_device", "reset_peak_memory", "device")
    for member in shared:
        assert member not in vars(RocmPlatform), member
        assert getattr(RocmPlatform, member).__func__ is getattr(GpuPlatform, member).__func__
    assert RocmPlatform.model_runner_class() is GraphModelRunner
    assert RocmPlatform.needs_profile_run and RocmPlatform.default_async_scheduling
    assert RocmPlatform.can_pin_memory and RocmPlatform.distributed_backend == "nccl"
    assert RocmPlatform.device_visibility_env == "HIP_VISIBLE_DEVICES"


# ---- LLMSERVE_PLATFORM=rocm: the ROCm path on any torch GPU --------------------------------

NVIDIA = SimpleNamespace(name="NVIDIA H200", multi_processor_count=132)


def test_forcing_runs_rocm_on_an_nvidia_gpu_as_gfx942(gpu, monkeypatch):
    gpu(NVIDIA, hip=None)
    monkeypatch.setenv("LLMSERVE_PLATFORM", "rocm")
    pm = get_plugin_manager()
    assert not RocmPlatform.is_available() and RocmPlatform.can_run_forced()
    assert select_platform(pm, "auto") is RocmPlatform
    assert select_platform(pm, "rocm") is RocmPlatform
    assert select_platform(pm, "cuda") is RocmPlatform
    assert RocmPlatform.arch().name == "gfx942" and RocmPlatform.kernel_tuning() is CDNA3
    monkeypatch.setenv("LLMSERVE_ROCM_ARCH", "gfx950")
    assert RocmPlatform.kernel_tuning() is CDNA4
    assert RocmPlatform.fp8_dtype() is torch.float8_e4m3fn


def test_a_bad_forced_arch_names_the_variable(gpu, monkeypatch):
    gpu(NVIDIA, hip=None)
    monkeypatch.setenv("LLMSERVE_ROCM_ARCH", "mi300")
    with pytest.raises(ValueError, match="LLMSERVE_ROCM_ARCH must name a gfx architecture .* "
                                         "got 'mi300'"):
        RocmPlatform.arch()


def test_forcing_errors_are_clear(gpu, monkeypatch):
    pm = get_plugin_manager()
    gpu(NVIDIA, hip=None)
    monkeypatch.setenv("LLMSERVE_PLATFORM", "rocm")
    with pytest.raises(ValueError, match="device 'cpu' contradicts LLMSERVE_PLATFORM='rocm'"):
        select_platform(pm, "cpu")
    monkeypatch.setenv("LLMSERVE_PLATFORM", "tpu9")
    with pytest.raises(ValueError, match=r"LLMSERVE_PLATFORM must name an installed platform, "
                                         r"one of \[.*'rocm'.*\], got 'tpu9'"):
        select_platform(pm, "auto")
    gpu(None)
    monkeypatch.setenv("LLMSERVE_PLATFORM", "rocm")
    with pytest.raises(ValueError, match="'rocm' is not available on this machine and cannot "
                                         "run its code path here"):
        select_platform(pm, "auto")
    monkeypatch.setenv("LLMSERVE_PLATFORM", "cpu")
    assert select_platform(pm, "auto").name == "cpu"


def test_rocm_platform_passes_the_platform_conformance_answers(gpu):
    from llmserve.plugin_testing.platform import check_platform_answers

    gpu(None)
    check_platform_answers(RocmPlatform)
