"""The core's defaults, registered through the same hooks as any third-party plugin.

Every hook imports its classes inside its body: registering this module costs nothing, and a
process that never asks for, say, scheduling policies never imports the scheduler.
``get_plugin_manager`` registers this module under the name ``llmserve.default_plugins``; a
third-party plugin that contributes a name defined here replaces the default (with a warning).
"""

from __future__ import annotations

from llmserve import hookimpl

#: Subcommands of the ``llmserve`` CLI the core ships: (command name, module path). The module
#: defines ``COMMAND``, a ``llmserve.cli.command.CliCommand`` instance of that name (a
#: ``"module:attribute"`` path names another attribute). Add a command by adding a line.
CLI_COMMANDS: list[tuple[str, str]] = [
    ("plugins", "llmserve.cli.plugins_cmd"),
    ("generate", "llmserve.cli.generate_cmd"),
    ("bench", "llmserve.cli.bench_cmd"),
]

#: HF architecture names served by the shared Llama-style transformer.
LLAMA_FAMILY_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)


@hookimpl
def llmserve_platforms():
    from llmserve.platforms.cpu import CpuPlatform

    return [CpuPlatform]


@hookimpl
def llmserve_model_architectures():
    from llmserve.models.eagle import (EAGLE3_ARCHITECTURES, EAGLE_ARCHITECTURE,
                                       Eagle3LlamaForCausalLM, EagleLlamaForCausalLM)
    from llmserve.models.llama import LlamaForCausalLM

    # The EAGLE heads are draft heads, loaded by the eagle/eagle3 proposers, not targets.
    heads = {EAGLE_ARCHITECTURE: EagleLlamaForCausalLM,
             **{name: Eagle3LlamaForCausalLM for name in EAGLE3_ARCHITECTURES}}
    return {**{name: LlamaForCausalLM for name in LLAMA_FAMILY_ARCHITECTURES}, **heads}


@hookimpl
def llmserve_attention_backends():
    from llmserve.attention.torch_ref import TorchPagedAttention

    return {"torch": TorchPagedAttention}


@hookimpl
def llmserve_scheduling_policies():
    from llmserve.scheduler.policy import BUILTIN_POLICIES

    return dict(BUILTIN_POLICIES)


@hookimpl
def llmserve_speculative_proposers():
    from llmserve.spec_decode.draft_model import DraftModelProposer
    from llmserve.spec_decode.eagle import Eagle3Proposer, EagleProposer
    from llmserve.spec_decode.ngram import NgramProposer

    return {"ngram": NgramProposer, "draft_model": DraftModelProposer,
            "eagle": EagleProposer, "eagle3": Eagle3Proposer}


@hookimpl
def llmserve_logits_processors():
    from llmserve.sample.logits_processor import BUILTIN_LOGITS_PROCESSORS

    return dict(BUILTIN_LOGITS_PROCESSORS)


@hookimpl
def llmserve_structured_output_backends():
    from llmserve.structured_output.backends.guidance import GuidanceBackend
    from llmserve.structured_output.backends.xgrammar import XgrammarBackend

    return {"xgrammar": XgrammarBackend, "guidance": GuidanceBackend}


@hookimpl
def llmserve_tool_parsers():
    from llmserve.tool_parsers.hermes import HermesToolParser
    from llmserve.tool_parsers.llama3_json import Llama3JsonToolParser

    return {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}


@hookimpl
def llmserve_cache_specs():
    from llmserve.kv_cache.spec import BUILTIN_CACHE_SPECS

    return dict(BUILTIN_CACHE_SPECS)


@hookimpl
def llmserve_cli_commands():
    from llmserve.cli.command import load_command

    commands = (load_command(name, target) for name, target in CLI_COMMANDS)
    return [command for command in commands if command is not None]
