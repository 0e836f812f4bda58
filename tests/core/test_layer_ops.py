"""The open ops table: any op replaced by name, new ops added, mistakes named."""

from __future__ import annotations

import pytest
import torch

from llmserve import SamplingParams, hookimpl
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.layers.norm import RMSNorm
from llmserve.layers.ops import TORCH_OPS, LayerOps, torch_rms_norm, torch_silu_and_mul
from llmserve.platforms.cpu import CpuPlatform
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin


def test_torch_table_holds_the_reference_ops():
    assert TORCH_OPS.name == "torch"
    assert TORCH_OPS.names == ("apply_token_bitmask", "rms_norm", "rotary", "silu_and_mul")
    assert TORCH_OPS.rms_norm is torch_rms_norm
    assert TORCH_OPS["silu_and_mul"] is torch_silu_and_mul
    assert "rotary" in TORCH_OPS and "gelu" not in TORCH_OPS


def test_token_bitmask_reference_masks_named_rows_only():
    vocab = 70  # three words, the last one partly used
    logits = torch.arange(4 * vocab, dtype=torch.float32).reshape(4, vocab)
    expected = logits.clone()
    bitmask = torch.zeros(2, 3, dtype=torch.int32)
    bitmask[0, 0] = 0b1011  # tokens 0, 1, 3
    bitmask[0, 2] = 1 << 5  # token 69
    bitmask[1] = -1  # everything
    TORCH_OPS.apply_token_bitmask(logits, bitmask, torch.tensor([2, 0]))
    allowed = {0, 1, 3, 69}
    expected[2, [t for t in range(vocab) if t not in allowed]] = float("-inf")
    assert torch.equal(logits, expected)


def test_replace_swaps_one_op_and_keeps_the_rest():
    def my_norm(x, weight, eps, residual=None):
        return torch_rms_norm(x, weight, eps, residual)

    table = TORCH_OPS.replace("mine", rms_norm=my_norm)
    assert (table.name, table.rms_norm, table.rotary) == ("mine", my_norm, TORCH_OPS.rotary)
    assert TORCH_OPS.rms_norm is torch_rms_norm  # the original is untouched
    assert TORCH_OPS.replace(rotary=abs).name == "torch"


def test_unknown_op_names_are_errors_that_list_the_table():
    with pytest.raises(ValueError, match=r"cannot replace layer ops \['rms_nrom'\]: not in "
                                         r"table 'torch' \(it has: apply_token_bitmask, rms_norm, rotary, "
                                         r"silu_and_mul\); add new ops with extend\(\)"):
        TORCH_OPS.replace(rms_nrom=abs)
    with pytest.raises(AttributeError, match="layer op 'gelu_and_mul' is not in table 'torch'; "
                                             "it has: apply_token_bitmask, rms_norm, rotary, "
                                             "silu_and_mul"):
        TORCH_OPS.gelu_and_mul
    with pytest.raises(AttributeError, match="layer op 'gelu_and_mul' is not in table"):
        TORCH_OPS["gelu_and_mul"]


def test_extend_adds_ops_and_refuses_to_shadow_one():
    def gelu_and_mul(x):
        d = x.shape[-1] // 2
        return torch.nn.functional.gelu(x[..., :d]) * x[..., d:]

    table = TORCH_OPS.extend(gelu_and_mul=gelu_and_mul)
    assert table.names == ("apply_token_bitmask", "gelu_and_mul", "rms_norm", "rotary",
                           "silu_and_mul")
    x = torch.randn(3, 8)
    assert torch.equal(table.gelu_and_mul(x), gelu_and_mul(x))
    assert "gelu_and_mul" not in TORCH_OPS
    with pytest.raises(ValueError, match=r"layer ops \['rms_norm'\] are already in table "
                                         r"'torch'; swap them with replace\(\)"):
        TORCH_OPS.extend(rms_norm=abs)


def test_tables_are_immutable_and_checked():
    with pytest.raises(AttributeError, match="immutable"):
        TORCH_OPS.rms_norm = abs
    with pytest.raises(ValueError, match="layer op name 'replace' must be a public identifier"):
        LayerOps("bad", {"replace": abs})
    with pytest.raises(ValueError, match="layer op name '_hidden'"):
        LayerOps("bad", {"_hidden": abs})
    with pytest.raises(TypeError, match="layer op 'rms_norm' of table 'bad' must be callable"):
        LayerOps("bad", {"rms_norm": 3})


def test_layers_call_through_their_table():
    calls = []

    def recording_norm(x, weight, eps, residual=None):
        calls.append(x.shape)
        return torch_rms_norm(x, weight, eps, residual)

    norm = RMSNorm(8, 1e-6, ops=TORCH_OPS.replace(rms_norm=recording_norm))
    x = torch.randn(2, 3, 8)
    assert torch.equal(norm(x), RMSNorm(8, 1e-6)(x))
    assert calls == [torch.Size([6, 8])]


#: Calls of the platform's silu_and_mul, one per MLP per forward.
SILU_CALLS: list[int] = []


def counting_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    SILU_CALLS.append(x.shape[0])
    return torch_silu_and_mul(x)


class CountingOpsPlatform(CpuPlatform):
    """The CPU with one op of its own: the model must run it, in every layer."""

    name = "counting-ops"

    @classmethod
    def layer_ops(cls) -> LayerOps:
        return TORCH_OPS.replace("counting", silu_and_mul=counting_silu_and_mul)


def _generate(model: str, device: str, pm) -> list[int]:
    engine = LLMEngine(EngineArgs(model=model, device=device, kv_cache_memory=2**22), pm)
    engine.add_request("r", [4, 5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=4,
                                                            ignore_eos=True))
    finished = []
    while engine.has_unfinished_requests():
        finished += engine.step()
    return finished[0].outputs[0].token_ids


def test_a_platform_that_replaces_one_op_sees_the_model_call_it(tiny_models):
    model = tiny_models["LlamaForCausalLM"]
    pm = fresh_plugin_manager()
    plugin = type("OpsPlugin", (), {"llmserve_platforms": staticmethod(
        hookimpl(lambda: [CountingOpsPlatform]))})()
    SILU_CALLS.clear()
    with registered_plugin(pm, plugin, "counting-ops"):
        tokens = _generate(model, "counting-ops", pm)
    # Two decoder layers; a 5-token prefill, then three one-token decode steps.
    assert SILU_CALLS == [5, 5] + [1, 1] * 3
    assert tokens == _generate(model, "cpu", fresh_plugin_manager())
