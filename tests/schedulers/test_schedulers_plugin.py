"""The plugin as a whole: registration through its entry point, the conformance kit, options
validation, and an engine running each policy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmserve import LLM, SamplingParams
from llmserve.plugin_testing.scheduling import check_scheduling_policy
from llmserve.plugins import collect_registry, get_plugin_manager
from llmserve.request import SchedulingHints
from llmserve_schedulers.cache_aware import CacheAwarePolicy
from llmserve_schedulers.deadline import DeadlinePolicy
from llmserve_schedulers.fair import FairPolicy
from llmserve_schedulers.sjf import ShortestJobFirstPolicy
from scheduler_sim import make_config

POLICIES = {"fair": FairPolicy, "sjf": ShortestJobFirstPolicy, "deadline": DeadlinePolicy,
            "cache-aware": CacheAwarePolicy}


def test_the_entry_point_contributes_the_four_policies():
    registry = collect_registry(get_plugin_manager(), "llmserve_scheduling_policies")
    assert {name: registry.get(name) for name in POLICIES} == POLICIES
    assert {"fcfs", "priority"} <= set(registry)


def test_the_entry_point_and_the_policies_import_no_torch():
    code = ("import sys, llmserve_schedulers.plugin as p; p.llmserve_scheduling_policies(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_pass_the_conformance_kit(name):
    check_scheduling_policy(POLICIES[name])


@pytest.mark.parametrize("name, options, named", [
    ("fair", {"weights": {"a": 0}}, "weights.a"),
    ("fair", {"weights": {"a": "heavy"}}, "weights.a"),
    ("fair", {"default_weight": -1}, "default_weight"),
    ("fair", {"default_tenant": ""}, "default_tenant"),
    ("fair", {"max_tenants": 0}, "max_tenants"),
    ("sjf", {"aging_tokens_per_s": 0}, "aging_tokens_per_s"),
    ("sjf", {"prompt_weight": -0.5}, "prompt_weight"),
    ("deadline", {"default_ttft_target_s": 0}, "default_ttft_target_s"),
    ("deadline", {"default_latency_target_s": -1}, "default_latency_target_s"),
    ("cache-aware", {"window": 0}, "window"),
    ("cache-aware", {"max_passes": -1}, "max_passes"),
    ("cache-aware", {"max_passes": 1.5}, "max_passes"),
])
def test_out_of_range_options_are_errors_naming_the_option(name, options, named):
    with pytest.raises(ValueError, match=rf"policy '{name}': {named}:"):
        POLICIES[name](make_config(**options))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_unknown_options_are_errors_naming_the_option(name):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['weight'\]"):
        POLICIES[name](make_config(weight=2))


def test_options_reach_the_policy():
    assert FairPolicy(make_config(weights={"a": 2})).options.weights == {"a": 2.0}
    assert ShortestJobFirstPolicy(make_config()).options.aging_tokens_per_s == 1000.0
    assert DeadlinePolicy(make_config()).options.default_latency_target_s is None
    assert CacheAwarePolicy(make_config()).options.window == 64


@pytest.mark.parametrize("name, config", [
    ("fair", {"weights": {"a": 2}}),
    ("sjf", {}),
    ("deadline", {"default_ttft_target_s": 0.5}),
    ("cache-aware", {"max_passes": 2}),
])
def test_the_engine_serves_with_each_policy(name, config):
    llm = LLM(max_model_len=128, kv_cache_memory=16 * 2**20, scheduling_policy=name,
              scheduling_policy_config=config)
    assert type(llm.llm_engine.core.scheduler.policy) is POLICIES[name]
    hints = [SchedulingHints(tenant="a", ttft_target_s=1.0), SchedulingHints(tenant="b")]
    outs = llm.generate(["hello there", "hello world"], SamplingParams(max_tokens=3, ignore_eos=True),
                        use_tqdm=False, scheduling_hints=hints)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3]
