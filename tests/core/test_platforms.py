"""What platforms answer, and that the runner asks them (not torch.cuda) for device specifics."""

from __future__ import annotations

import logging

import pytest
import torch

from llmserve import SamplingParams, hookimpl
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.engine.resolver import select_platform
from llmserve.platforms.base import Platform
from llmserve.platforms.cpu import CpuPlatform
from llmserve.platforms.gpu import GpuPlatform
from llmserve.platforms.memory import kv_budget_from_memory
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
from llmserve.runner.graph_runner import GraphModelRunner

GiB = 2**30


def platform_plugin(*platforms) -> object:
    return type("PlatformPlugin", (), {
        "llmserve_platforms": staticmethod(hookimpl(lambda: list(platforms)))})()


def test_cpu_platform_answers():
    assert CpuPlatform.distributed_backend == "gloo"
    assert CpuPlatform.device_capability() is None
    assert CpuPlatform.fp8_dtype() is None
    assert CpuPlatform.device_visibility_env is None
    assert CpuPlatform.can_pin_memory is False
    assert CpuPlatform.device() == torch.device("cpu")
    assert CpuPlatform.synchronize() is None
    event = CpuPlatform.record_event()
    assert event.synchronize() is None
    buf = CpuPlatform.host_buffer((2, 3), torch.long)
    assert (buf.shape, buf.dtype, buf.device.type, buf.is_pinned()) == (
        (2, 3), torch.long, "cpu", False)
    assert not torch.is_inference_mode_enabled()
    with CpuPlatform.inference_mode():
        assert torch.is_inference_mode_enabled()
    assert CpuPlatform.kv_cache_budget_bytes(123, 0.9) == 123


def test_platform_is_abstract_in_availability_and_kv_budget():
    assert Platform.__abstractmethods__ == {"is_available", "kv_cache_budget_bytes"}
    assert GpuPlatform.__abstractmethods__ == {"is_available"}
    assert not CpuPlatform.__abstractmethods__


def test_gpu_platform_shares_what_torch_cuda_devices_have_in_common():
    assert GpuPlatform.device_type == "cuda"
    assert GpuPlatform.distributed_backend == "nccl"
    assert GpuPlatform.can_pin_memory and GpuPlatform.needs_profile_run
    assert GpuPlatform.default_async_scheduling
    assert GpuPlatform.model_runner_class() is GraphModelRunner


class Incomplete(Platform):
    name = "incomplete"

    @classmethod
    def is_available(cls) -> bool:
        return True


def test_platform_missing_abstract_members_is_skipped_or_named(caplog):
    pm = fresh_plugin_manager()
    with registered_plugin(pm, platform_plugin(Incomplete), "incomplete-plugin"):
        with caplog.at_level(logging.WARNING):
            assert select_platform(pm, "auto") is CpuPlatform
        assert "does not implement kv_cache_budget_bytes" in caplog.text
        with pytest.raises(ValueError, match="platform 'incomplete' .* does not implement "
                                             "kv_cache_budget_bytes"):
            select_platform(pm, "incomplete")


def test_kv_budget_from_measured_memory():
    # 80 GiB card, 0.9 of it ours; torch peaked at 17 GiB; 1 GiB held outside torch.
    total, reserved, peak = 80 * GiB, 18 * GiB, 17 * GiB
    free = total - reserved - 1 * GiB
    assert kv_budget_from_memory(total, free, reserved, peak, 0.9) == int(72 * GiB) - 18 * GiB
    # Nothing held outside torch: only the peak is subtracted.
    assert kv_budget_from_memory(total, total - reserved, reserved, peak, 0.5) == 23 * GiB
    with pytest.raises(ValueError, match="no memory left for the KV cache"):
        kv_budget_from_memory(total, free, reserved, 75 * GiB, 0.9)


class RecordedEvent:
    def __init__(self) -> None:
        self.num_syncs = 0

    def synchronize(self) -> None:
        self.num_syncs += 1


class EventRecordingPlatform(CpuPlatform):
    """The CPU, with events the test can see: the runner must wait on the event recorded
    after each step's sampled-token copy before reading the tokens."""

    name = "event-recording"
    events: list[RecordedEvent] = []

    @classmethod
    def record_event(cls) -> RecordedEvent:
        cls.events.append(RecordedEvent())
        return cls.events[-1]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_runner_waits_on_the_platform_event_of_every_sampled_step(tiny_models, async_scheduling):
    EventRecordingPlatform.events = []
    pm = fresh_plugin_manager()
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    with registered_plugin(pm, platform_plugin(EventRecordingPlatform), "events"):
        engine = LLMEngine(EngineArgs(model=tiny_models["LlamaForCausalLM"],
                                      device="event-recording", kv_cache_memory=2**22,
                                      async_scheduling=async_scheduling), pm)
        engine.add_request("r", [4, 5, 6, 7, 8, 9, 10], params)
        finished = []
        while engine.has_unfinished_requests():
            finished += engine.step()
    assert len(finished[0].outputs[0].token_ids) == 5
    # One prefill step and four decode steps each sampled once and were read once.
    assert [e.num_syncs for e in EventRecordingPlatform.events] == [1] * 5


def test_select_device_takes_an_index_or_names_the_range():
    CpuPlatform.select_device(3)  # the host has no device index: nothing to take
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device index must be in \[0, -1\]"):
            GpuPlatform.select_device(0)
