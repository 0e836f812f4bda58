"""A graph runner on the CPU: ``EagerReplayPlatform`` runs ``GraphModelRunner`` with
recordings that re-run the recorded function, so every replay path (padded and inert
columns, the verification layout, a proposer's recorded steps and ``propose_pending``, the
on-device fix-ups of asynchronous scheduling) runs here exactly as a device would run it,
only without a graph. Register the platform and pick it with ``device="eager-replay"``::

    from llmserve import hookimpl
    from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
    from llmserve.plugin_testing.eager_replay import EagerReplayPlatform

    class Platforms:
        @hookimpl
        def llmserve_platforms(self):
            return [EagerReplayPlatform]

    pm = fresh_plugin_manager()
    with registered_plugin(pm, Platforms(), "eager-replay"):
        engine = LLMEngine(EngineArgs(model=..., device="eager-replay"), pm)
"""

from __future__ import annotations

import dataclasses

import torch

from llmserve.attention.backend import AttentionMetadata
from llmserve.platforms.cpu import CpuPlatform
from llmserve.platforms.gpu import GpuPlatform
from llmserve.runner.graph_runner import GraphModelRunner


class LiveMetadata(AttentionMetadata):
    """Static metadata whose backend state is planned again at every read.

    The torch reference backend plans its masks from the metadata's values, where a graph's
    backend (Triton) reads them from memory in every kernel; a recorded function may change
    them between two forwards (the draft model's decode steps do)."""

    def __getattribute__(self, name):
        if name == "backend_state":
            object.__getattribute__(self, "backend").prepare(self)
        return object.__getattribute__(self, name)


class EagerReplayRunner(GraphModelRunner):
    """A graph runner whose "recordings" re-run the recorded function: every replay path
    (padding, inert columns, layouts, the proposer's recorded drafting) runs here, on the
    CPU, exactly as the device would run it, only without a graph."""

    replays: dict = {}

    def graph_attention_metadata(self, *args, **kwargs):
        md = super().graph_attention_metadata(*args, **kwargs)
        live = LiveMetadata(**{f.name: getattr(md, f.name) for f in dataclasses.fields(md)})
        live.backend = self.attn_backend
        return live

    def record(self, fn):
        key = len(EagerReplayRunner.replays)
        EagerReplayRunner.replays[key] = 0

        def replay():
            EagerReplayRunner.replays[key] += 1
            return fn()

        fn()
        return replay


class EagerReplayPlatform(CpuPlatform, GpuPlatform):
    """The CPU, where the graph runner runs with ``EagerReplayRunner``'s recordings."""

    name = "eager-replay"
    priority = -1
    device_type = "cpu"
    can_pin_memory = False

    @classmethod
    def device(cls) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def select_device(cls, index: int) -> None:
        pass  # the host: no device to take

    @classmethod
    def synchronize(cls) -> None:
        pass

    @classmethod
    def record_event(cls):
        return CpuPlatform.record_event()

    @classmethod
    def reset_peak_memory(cls) -> None:
        pass

    @classmethod
    def model_runner_class(cls):
        return EagerReplayRunner
