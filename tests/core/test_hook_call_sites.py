"""Every hook specification has a call site: a hook nobody calls is a broken promise.

One recording plugin implements every hook in ``llmserve.hookspecs`` and passes (returns
nothing); the engine's start-up, a step, the CLI parser and the HTTP application (with a tool
parser named, as ``--tool-call-parser`` does) are then built on a manager that has it. Each hook must have been called at least once. A new hook
without a call site fails here until something calls it (or it is removed).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from llmserve import SamplingParams, hookimpl, hookspecs
from llmserve.cli.main import build_parser
from llmserve.config import EngineArgs
from llmserve.engine.llm_engine import LLMEngine
from llmserve.http.app import build_app
from llmserve.plugin_testing import fresh_plugin_manager, registered_plugin

HOOK_NAMES = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                    if name.startswith("llmserve_"))


def recording_plugin(calls: set[str]):
    """An object with every hook: each records its own name and contributes nothing."""

    class Recorder:
        pass

    for name in HOOK_NAMES:
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)

        def impl(*args, _name=name):
            calls.add(_name)

        impl.__signature__ = inspect.Signature(
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params])
        impl.__name__ = name
        setattr(Recorder, name, staticmethod(hookimpl(impl)))
    return Recorder()


def test_every_hookspec_is_called(tiny_models):
    assert len(HOOK_NAMES) >= 9
    calls: set[str] = set()
    pm = fresh_plugin_manager()
    with registered_plugin(pm, recording_plugin(calls), "recorder"):
        engine = LLMEngine(EngineArgs(model=tiny_models["LlamaForCausalLM"],
                                      dtype="float32", max_model_len=64,
                                      speculative_config={"method": "ngram",
                                                          "num_speculative_tokens": 2}), pm)
        engine.add_request("r", [1, 2, 3], SamplingParams(max_tokens=2))
        while engine.has_unfinished_requests():
            engine.step()
        build_parser(pm)
        build_app(SimpleNamespace(config=engine.config), pm, tool_call_parser="hermes")
    assert sorted(calls) == HOOK_NAMES, f"never called: {sorted(set(HOOK_NAMES) - calls)}"
