"""The engine core <-> runner contract: ``ModelRunnerBase`` built from one ``RunnerConfig``,
driven in a fixed order, with only host values crossing the line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from llmserve import SamplingParams, hookimpl
from llmserve.config import EngineArgs
from llmserve.engine.core import EngineCore
from llmserve.engine.llm_engine import LLMEngine
from llmserve.engine.resolver import resolve_engine
from llmserve.kv_cache.manager import KVCacheManager
from llmserve.kv_cache.spec import FullAttentionSpec, KVCacheConfig
from llmserve.platforms.cpu import CpuPlatform
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
from llmserve.request import EngineCoreRequest, Request
from llmserve.runner.base import CompletedStep, ModelRunnerBase, RunnerConfig
from llmserve.runner.model_runner import ModelRunner
from llmserve.scheduler.output import ModelRunnerOutput
from llmserve.scheduler.policy import FCFSPolicy
from llmserve.scheduler.scheduler import Scheduler


def _no_torch_after(module: str) -> bool:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip() == "False"


def test_engine_core_and_the_runner_contract_import_no_torch():
    assert _no_torch_after("llmserve.engine.core")
    assert _no_torch_after("llmserve.runner.base")


def test_runner_base_cannot_be_instantiated_without_its_abstract_methods():
    with pytest.raises(TypeError, match="abstract"):
        ModelRunnerBase(None)

    class Partial(ModelRunnerBase):
        def load_model(self):
            pass

    with pytest.raises(TypeError) as err:
        Partial(None)
    for name in ("cache_specs", "profile_run", "initialize_kv_cache", "warm_up",
                 "execute_model_async"):
        assert name in str(err.value)
    assert "load_model" not in str(err.value)
    assert ModelRunnerBase.__abstractmethods__ == {
        "load_model", "cache_specs", "profile_run", "initialize_kv_cache", "warm_up",
        "execute_model_async"}


def test_every_abstract_method_says_when_it_is_called():
    for name in ModelRunnerBase.__abstractmethods__:
        doc = getattr(ModelRunnerBase, name).__doc__
        assert doc and "Called" in doc, name


class ScriptedRunner(ModelRunnerBase):
    """A runner with no framework at all: answers one token per scheduled request, and
    records the order the engine calls it in."""

    calls: list[str] = []

    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        self.calls = ScriptedRunner.calls = ["init"]

    def load_model(self):
        self.calls.append("load_model")

    def cache_specs(self):
        self.calls.append("cache_specs")
        return [FullAttentionSpec(block_size=self.config.engine.cache.block_size, num_kv_heads=1,
                              head_size=4, dtype_bytes=4)]

    def profile_run(self, num_tokens, num_seqs):
        self.calls.append("profile_run")

    def initialize_kv_cache(self, kv_config: KVCacheConfig):
        self.calls.append(f"initialize_kv_cache({kv_config.num_blocks})")

    def warm_up(self):
        self.calls.append("warm_up")

    def execute_model_async(self, so):
        self.calls.append("step")
        ids = [new.req_id for new in so.scheduled_new_reqs] + so.scheduled_cached_reqs.req_ids
        return CompletedStep(ModelRunnerOutput(ids, [[7] for _ in ids], [None] * len(ids)))


class ScriptedPlatform(CpuPlatform):
    name = "scripted"
    needs_profile_run = True

    @classmethod
    def model_runner_class(cls):
        return ScriptedRunner


def platform_plugin(platform) -> object:
    """A plugin contributing one platform class."""
    return type("PlatformPlugin", (), {
        "llmserve_platforms": staticmethod(hookimpl(lambda: [platform]))})()


def _register(pm, platform):
    return registered_plugin(pm, platform_plugin(platform), f"platform-{platform.name}")


def test_engine_core_drives_any_runner_through_the_contract_in_order(tiny_models):
    pm = fresh_plugin_manager()
    with _register(pm, ScriptedPlatform):
        resolved = resolve_engine(EngineArgs(model=tiny_models["LlamaForCausalLM"],
                                             device="scripted", kv_cache_memory=2**20), pm)
        core = EngineCore(resolved, pm)
        core.add_request(EngineCoreRequest("a", [5, 6, 7], SamplingParams(max_tokens=3,
                                                                           ignore_eos=True)))
        outputs = []
        while core.has_unfinished_requests():
            outputs += core.step()
    calls = ScriptedRunner.calls
    assert calls[:5] == ["init", "load_model", "cache_specs", "profile_run",
                         f"initialize_kv_cache({core.num_blocks})"]
    assert calls[5] == "warm_up"
    assert calls[6:] == ["step"] * 3
    assert [tok for out in outputs for tok in out.new_token_ids] == [7, 7, 7]
    config = core.runner.config
    assert config.platform is ScriptedPlatform
    assert config.dtype == "float32" and config.load_format == "auto"
    assert config.engine is resolved.config
    assert config.model_cls is resolved.model_cls
    assert config.attn_backend.name == "torch"


def test_runner_config_is_frozen(tiny_models):
    pm = fresh_plugin_manager()
    resolved = resolve_engine(EngineArgs(model=tiny_models["LlamaForCausalLM"]), pm)
    config = RunnerConfig(resolved.config, resolved.hf_config, resolved.model_cls, type,
                          (), "auto", CpuPlatform)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.load_format = "dummy"


def test_torch_runner_built_from_a_runner_config_runs_the_tiny_model(tiny_models):
    """The torch runner alone, driven as the engine drives it: the same greedy tokens as the
    whole engine produces."""
    path = tiny_models["Qwen2ForCausalLM"]
    pm = fresh_plugin_manager()
    prompt = [11, 12, 13, 14, 15]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    engine = LLMEngine(EngineArgs(model=path, kv_cache_memory=2**22), pm)
    engine.add_request("r", prompt, params)
    while engine.has_unfinished_requests():
        finished = engine.step()
    expected = finished[0].outputs[0].token_ids

    core = engine.core
    assert isinstance(core.runner, ModelRunner)
    runner = ModelRunner(core.runner.config)
    assert runner.model is None
    runner.load_model()
    runner.initialize_kv_cache(core.kv_cache_config)
    runner.warm_up()
    cfg = core.resolved.config
    kv = KVCacheManager.from_config(core.kv_cache_config, cfg.cache.block_size)
    scheduler = Scheduler(cfg.scheduler, kv, FCFSPolicy(cfg.scheduler))
    scheduler.add_request(Request(EngineCoreRequest("r", prompt, params), cfg.model.max_model_len))
    tokens = []
    while scheduler.has_unfinished_requests():
        so = scheduler.schedule()
        out = runner.execute_model(so)
        assert all(type(t) is int for row in out.sampled_token_ids for t in row)
        tokens += [t for row in out.sampled_token_ids for t in row]
        scheduler.update_from_output(so, out)
    assert tokens == expected
