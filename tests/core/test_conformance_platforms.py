"""The platform conformance kit: the CPU platform passes it, a fake runner drives the engine,
and a platform whose kernels are wrong is caught by the parity check."""

from __future__ import annotations

import pytest

from llmserve import hookimpl
from llmserve.layers.ops import TORCH_OPS
from llmserve.platforms.cpu import CpuPlatform
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin
from llmserve.plugin_testing.hf_parity import parity_prompts
from llmserve.plugin_testing.platform import (
    FakeRunner,
    check_platform_answers,
    check_platform_parity,
    check_runner_contract,
)


def platform_plugin(platform):
    return type("P", (), {"llmserve_platforms": staticmethod(hookimpl(lambda: [platform]))})()


class FakeRunnerPlatform(CpuPlatform):
    name = "fake-runner"

    @classmethod
    def model_runner_class(cls):
        return FakeRunner


class WrongNormPlatform(CpuPlatform):
    """RMSNorm with its weight scaled: runs fine, computes the wrong thing."""

    name = "wrong-norm"

    @classmethod
    def layer_ops(cls):
        def rms_norm(x, weight, eps, residual=None):
            return TORCH_OPS.rms_norm(x, 4 * weight, eps, residual)
        return TORCH_OPS.replace(rms_norm=rms_norm)


def test_cpu_platform_conforms(tiny_models, bpe_tokenizer):
    pm = fresh_plugin_manager()
    path = tiny_models["Qwen3ForCausalLM"]
    check_platform_answers(CpuPlatform)
    check_runner_contract(pm, CpuPlatform, path)
    check_platform_parity(pm, CpuPlatform, path, parity_prompts(len(bpe_tokenizer))[:6])


def test_fake_runner_drives_the_engine(tiny_models):
    pm = fresh_plugin_manager()
    with registered_plugin(pm, platform_plugin(FakeRunnerPlatform), "fake"):
        check_platform_answers(FakeRunnerPlatform)
        check_runner_contract(pm, FakeRunnerPlatform, tiny_models["LlamaForCausalLM"])


def test_parity_catches_wrong_kernels(tiny_models, bpe_tokenizer):
    pm = fresh_plugin_manager()
    with registered_plugin(pm, platform_plugin(WrongNormPlatform), "wrong"):
        with pytest.raises(AssertionError, match="wrong-norm/plain"):
            check_platform_parity(pm, WrongNormPlatform, tiny_models["LlamaForCausalLM"],
                                  parity_prompts(len(bpe_tokenizer))[:3])
