"""The plugin API: every module a plugin may import from llmserve, and their public names.

A plugin imports from the modules in ``PLUGIN_API_MODULES`` and nothing else of llmserve;
whatever those modules offer is versioned by ``PLUGIN_API_VERSION`` (semantic versioning: a
minor release adds or deprecates, only a major release removes or changes incompatibly, after
at least one minor release of deprecation warnings). Every other llmserve module is internal
and may change in any release. ``docs/plugins/api.md`` describes each module in one line;
a test checks that the plugin packages of this repository import only from this list.

This module re-exports the names plugins use at run time, so ``from llmserve.plugin_api import
AttentionBackend`` works as well as importing from the defining module. It imports torch:
import it from contributed classes' modules or inside hook bodies, not from a plugin's
entry-point module (every llmserve process imports those, ``llmserve plugins`` included).
The test helpers (``llmserve.plugin_testing``, ``llmserve.testing``) are on the list but not
re-exported: they need pytest and transformers.
"""

from __future__ import annotations

from llmserve.attention.backend import AttentionBackend, AttentionMetadata, ForwardContext
from llmserve.cli.command import CliCommand
from llmserve.config import EngineConfig, SchedulerConfig, SpeculativeConfig
from llmserve.kv_cache.spec import (
    AttentionSpec,
    CacheSpec,
    FullAttentionSpec,
    KVCacheConfig,
    PerRequestStateSpec,
    SlidingWindowSpec,
)
from llmserve.layers.activation import SiluAndMul
from llmserve.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from llmserve.layers.linear import (
    ColumnParallelLinear,
    LinearMethod,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from llmserve.layers.norm import RMSNorm
from llmserve.layers.ops import TORCH_OPS, LayerOps
from llmserve.layers.rotary import RotaryEmbedding, get_rope
from llmserve.models.base import ModelBuildContext, rope_settings
from llmserve.models.interface import CausalLM
from llmserve.platforms.base import Platform
from llmserve.platforms.gpu import GpuPlatform
from llmserve.plugin_markers import PLUGIN_API_ATTRIBUTE, PLUGIN_API_VERSION, hookimpl
from llmserve.request import Request, SchedulingHints
from llmserve.runner.base import ModelRunnerBase, RunnerConfig, StepHandle
from llmserve.runner.graph_runner import GraphModelRunner
from llmserve.runner.model_runner import ModelRunner, StepBatch
from llmserve.sample.logits_processor import LogitsProcessor
from llmserve.sample.metadata import SamplingMetadata
from llmserve.spec_decode.proposer import (GraphCapture, PendingProposalBatch, ProposalBatch,
                                           Proposer, ProposerContext, TargetStep)
from llmserve.scheduler.policy import (
    PolicyMetric,
    PolicyOptions,
    SchedulingContext,
    SchedulingPolicy,
    StepFeedback,
)
from llmserve.tool_parsers.base import (
    DeltaBuilder,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCalls,
    ToolCall,
    ToolParser,
)

#: The modules that form the plugin API, grouped as in ``docs/plugins/api.md``. A package
#: listed here means its ``__init__`` re-exports, not its submodules.
PLUGIN_API_MODULES: tuple[str, ...] = (
    # The contract itself
    "llmserve",                       # hookimpl, PLUGIN_API_VERSION
    "llmserve.plugin_api",            # this module
    "llmserve.hookspecs",             # the hook catalogue
    "llmserve.plugins",               # hookimpl, collect_registry/collect_list for plugin tests
    # Configuration handed to hooks and policies
    "llmserve.config",                # EngineConfig, SchedulerConfig (frozen)
    # Platforms
    "llmserve.platforms",
    "llmserve.platforms.base",        # Platform
    "llmserve.platforms.gpu",         # GpuPlatform: what every torch.cuda device shares
    "llmserve.platforms.memory",      # kv_budget_from_memory
    # The model runner contract and the runners a platform may extend (model_runner_class)
    "llmserve.runner.base",           # ModelRunnerBase, RunnerConfig, StepHandle
    "llmserve.runner.model_runner",   # ModelRunner, StepBatch
    "llmserve.runner.graph_runner",   # GraphModelRunner
    "llmserve.scheduler.output",      # SchedulerOutput, ModelRunnerOutput, GrammarBitmask
    # Attention backends
    "llmserve.attention",
    "llmserve.attention.backend",     # AttentionBackend, AttentionMetadata, ForwardContext
    # Cache kinds
    "llmserve.kv_cache.spec",         # CacheSpec and its kinds, KVCacheConfig
    # Models and the layers they are built from
    "llmserve.models.interface",      # CausalLM
    "llmserve.models.base",           # ModelBuildContext, rope_settings
    "llmserve.layers.ops",            # LayerOps, TORCH_OPS
    "llmserve.layers.linear",         # parallel linear layers, LinearMethod
    "llmserve.layers.embedding",      # VocabParallelEmbedding, ParallelLMHead
    "llmserve.layers.norm",           # RMSNorm
    "llmserve.layers.rotary",         # RotaryEmbedding, get_rope
    "llmserve.layers.activation",     # SiluAndMul
    "llmserve.distributed.parallel_state",  # tensor/pipeline ranks and their collectives
    # Scheduling
    "llmserve.scheduler.policy",      # SchedulingPolicy, its context, feedback, options, metrics
    "llmserve.request",               # Request, SchedulingHints (read, never write)
    # Sampling
    "llmserve.sample.logits_processor",  # LogitsProcessor
    "llmserve.sample.metadata",       # SamplingMetadata
    # Speculative decoding
    "llmserve.spec_decode.proposer",  # Proposer, ProposerContext, ProposalBatch, TargetStep,
    #                                   GraphCapture, PendingProposalBatch
    "llmserve.spec_decode.rejection",  # rejection_sample, Verified
    # Structured outputs
    "llmserve.structured_output",     # re-exports the two modules below
    "llmserve.structured_output.backend",  # StructuredOutputBackend, GrammarMatcher, VocabInfo
    "llmserve.structured_output.params",   # StructuredOutputsParams, GrammarSpec
    # Front ends
    "llmserve.cli.command",           # CliCommand
    "llmserve.tool_parsers.base",     # ToolParser and the values it returns
    # Test helpers
    "llmserve.plugin_testing",        # fresh managers and fixtures for plugin tests
    "llmserve.plugin_testing.scheduling",  # policy conformance kit and simulation helpers
    "llmserve.plugin_testing.cache_spec",  # cache-spec conformance checks
    "llmserve.plugin_testing.platform",    # platform and runner conformance checks
    "llmserve.plugin_testing.structured_output",  # grammar-backend conformance checks
    "llmserve.plugin_testing.hf_parity",   # engine-vs-HF parity checks
    "llmserve.plugin_testing.spec_decode",  # proposer conformance checks
    "llmserve.testing",               # tiny models and a local tokenizer
)

__all__ = [
    "PLUGIN_API_MODULES",
    # contract
    "hookimpl", "PLUGIN_API_VERSION", "PLUGIN_API_ATTRIBUTE",
    # configuration
    "EngineConfig", "SchedulerConfig", "SpeculativeConfig",
    # speculative decoding
    "Proposer", "ProposerContext", "ProposalBatch", "TargetStep", "GraphCapture",
    "PendingProposalBatch",
    # platforms and runners
    "Platform", "GpuPlatform", "ModelRunnerBase", "RunnerConfig", "StepHandle", "ModelRunner",
    "StepBatch", "GraphModelRunner",
    # attention
    "AttentionBackend", "AttentionMetadata", "ForwardContext",
    # cache
    "CacheSpec", "AttentionSpec", "FullAttentionSpec", "SlidingWindowSpec",
    "PerRequestStateSpec", "KVCacheConfig",
    # models and layers
    "CausalLM", "ModelBuildContext", "rope_settings", "LayerOps", "TORCH_OPS", "LinearMethod",
    "ReplicatedLinear", "ColumnParallelLinear", "MergedColumnParallelLinear",
    "QKVParallelLinear", "RowParallelLinear", "VocabParallelEmbedding", "ParallelLMHead",
    "RMSNorm", "RotaryEmbedding", "get_rope", "SiluAndMul",
    # scheduling
    "SchedulingPolicy", "SchedulingContext", "StepFeedback", "PolicyOptions", "PolicyMetric",
    "Request", "SchedulingHints",
    # sampling
    "LogitsProcessor", "SamplingMetadata",
    # front ends
    "CliCommand", "ToolParser", "ToolCall", "ExtractedToolCalls", "DeltaMessage",
    "DeltaToolCall", "DeltaBuilder",
]
