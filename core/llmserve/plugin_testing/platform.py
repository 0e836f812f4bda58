"""Conformance checks for a platform plugin: its answers, its runner, parity on tiny models.

- ``FakeRunner``: a runner with no framework (one fixed token per scheduled request). A
  platform author swaps it in through ``model_runner_class`` to test the platform's sizing
  and the engine's step loop before any kernel exists.
- ``check_platform_answers(platform)``: the class answers every question the engine asks with
  a value of the right type.
- ``check_runner_contract(platform, model_dir)``: the platform's runner, driven by the real
  engine core, reports cache specs, takes the planned cache and returns plain host data.
- ``check_platform_parity(platform, model_dir)``: greedy tokens and logprobs on the platform
  match HF transformers' on a tiny checkpoint (``llmserve.testing.make_tiny_model``), by the
  method of ``llmserve.plugin_testing.hf_parity``.

Each takes a plugin manager that contributes the platform (``fresh_plugin_manager()`` with
the platform plugin registered); they raise ``AssertionError`` naming what broke.
"""

from __future__ import annotations

from llmserve.config import EngineArgs
from llmserve.kv_cache.spec import CacheSpec, FullAttentionSpec, KVCacheConfig
from llmserve.platforms.base import Platform
from llmserve.request import EngineCoreRequest
from llmserve.runner.base import CompletedStep, ModelRunnerBase, RunnerConfig
from llmserve.sampling_params import SamplingParams
from llmserve.scheduler.output import ModelRunnerOutput

__all__ = ["FakeRunner", "check_platform_answers", "check_platform_parity",
           "check_runner_contract"]


class FakeRunner(ModelRunnerBase):
    """Answers ``token`` for every request that sampled this step; records the calls."""

    token = 7

    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        self.calls: list[str] = []
        self.kv_config: KVCacheConfig | None = None

    def load_model(self) -> None:
        self.calls.append("load_model")

    def cache_specs(self) -> list[CacheSpec]:
        self.calls.append("cache_specs")
        block_size = self.config.engine.cache.block_size
        return [FullAttentionSpec(block_size, 1, 8, 4)] * 2

    def profile_run(self, num_tokens: int, num_seqs: int) -> None:
        self.calls.append("profile_run")

    def initialize_kv_cache(self, kv_config: KVCacheConfig) -> None:
        self.calls.append("initialize_kv_cache")
        self.kv_config = kv_config

    def warm_up(self) -> None:
        self.calls.append("warm_up")

    def execute_model_async(self, so) -> CompletedStep:
        self.calls.append("execute_model_async")
        ids = [new.req_id for new in so.scheduled_new_reqs] + so.scheduled_cached_reqs.req_ids
        return CompletedStep(ModelRunnerOutput(ids, [[self.token] for _ in ids],
                                               [None] * len(ids)))


def check_platform_answers(platform: type[Platform]) -> None:
    assert issubclass(platform, Platform), f"{platform!r} is not a Platform subclass"
    assert isinstance(platform.name, str) and platform.name, "name"
    assert isinstance(platform.is_available(), bool), "is_available() must return a bool"
    assert isinstance(platform.can_run_forced(), bool), "can_run_forced() must return a bool"
    assert isinstance(platform.priority, int), "priority"
    assert isinstance(platform.distributed_backend, str), "distributed_backend"
    assert platform.device_visibility_env is None or isinstance(
        platform.device_visibility_env, str), "device_visibility_env"
    if platform.is_available():
        # Device 0 exists wherever the platform is available; taking it changes nothing
        # the engine relies on (plugin API 1.7).
        platform.select_device(0)
        cap = platform.device_capability()
        assert cap is None or (isinstance(cap, tuple) and len(cap) == 2), "device_capability"
        runner = platform.model_runner_class()
        assert issubclass(runner, ModelRunnerBase), "model_runner_class() must be a runner"
        with platform.inference_mode():
            platform.record_event().synchronize()
        platform.synchronize()


def _engine_args(platform: type[Platform], model_dir: str, **kwargs) -> EngineArgs:
    return EngineArgs(model=model_dir, device=platform.name, dtype="float32",
                      max_model_len=256, **{"kv_cache_memory": 2**24} | kwargs)


def check_runner_contract(pm, platform: type[Platform], model_dir: str) -> None:
    """The platform's runner under the real engine core: a request of 3 tokens runs to its
    ``max_tokens``, every output is plain host data, and the cache matches the plan."""
    from llmserve.engine.core import EngineCore
    from llmserve.engine.resolver import resolve_engine

    core = EngineCore(resolve_engine(_engine_args(platform, model_dir), pm), pm)
    assert isinstance(core.runner, ModelRunnerBase), "the runner is not a ModelRunnerBase"
    specs = core.runner.cache_specs()
    assert list(core.kv_cache_config.layer_specs) == list(specs), "cache specs changed"
    core.add_request(EngineCoreRequest("contract", [5, 6, 7],
                                       SamplingParams(max_tokens=4, ignore_eos=True)))
    tokens: list[int] = []
    while core.has_unfinished_requests():
        for out in core.step():
            assert all(type(t) is int for t in out.new_token_ids), "token ids must be ints"
            tokens += out.new_token_ids
    assert len(tokens) == 4, f"{len(tokens)} tokens for max_tokens=4"
    assert core.kv_manager.num_free_blocks == core.kv_manager.num_blocks, "blocks leaked"


def check_platform_parity(pm, platform: type[Platform], model_dir: str,
                          prompts: list[list[int]]) -> None:
    """Greedy parity with HF on the platform, plus a chunked-prefill and a preempting run."""
    from llmserve.engine.llm_engine import LLMEngine
    from llmserve.plugin_testing.hf_parity import (
        assert_greedy_matches,
        greedy_params,
        hf_greedy_reference,
    )

    refs = hf_greedy_reference(model_dir, prompts)
    for label, kwargs in (("plain", {}), ("chunked", {"max_num_batched_tokens": 24}),
                          ("preempting", {"num_gpu_blocks_override": 14})):
        engine = LLMEngine(_engine_args(platform, model_dir, **kwargs), pm)
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, greedy_params())
        finished = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                finished[out.request_id] = out
        for i in range(len(prompts)):
            assert_greedy_matches(finished[str(i)].outputs[0], refs[i],
                                  f"{platform.name}/{label}/prompt{i}")
