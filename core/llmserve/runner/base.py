"""The contract between the engine core and a model runner, independent of any framework.

The engine core builds one ``RunnerConfig``, hands it to the platform's runner class and then
drives the runner through the methods of ``ModelRunnerBase`` in a fixed order::

    runner = platform.model_runner_class()(config)
    runner.load_model()
    specs = runner.cache_specs()                  # what each caching layer keeps
    runner.profile_run(tokens, seqs)              # only if platform.needs_profile_run
    runner.initialize_kv_cache(kv_config)         # the planned cache
    runner.warm_up()
    handle = runner.execute_model_async(so)       # every step; handle.result() later
    runner.sample_tokens(grammar_bitmask)         # only when so.grammar_req_ids is non-empty

Only host values cross this line: ``SchedulerOutput`` in, ``ModelRunnerOutput`` (plain
Python lists) out. This module imports no torch, so a runner on another framework (JAX on a
TPU) implements the same contract without the torch runner's internals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, TYPE_CHECKING, Any, Mapping, Optional, Protocol

from llmserve.config import EngineConfig
from llmserve.kv_cache.spec import CacheSpec, KVCacheConfig
from llmserve.scheduler.output import GrammarBitmask, ModelRunnerOutput, SchedulerOutput

if TYPE_CHECKING:
    from llmserve.platforms.base import Platform


@dataclass(frozen=True)
class RunnerConfig:
    """Everything a runner is built from, resolved once by the engine core."""

    engine: EngineConfig
    #: The model directory's ``config.json``, as read.
    hf_config: Mapping[str, Any]
    #: The model class registered for the checkpoint's architecture.
    model_cls: type
    #: The attention backend class chosen for this platform and architecture.
    attn_backend: type
    #: Logits-processor classes plugins contribute (the sampler adds its built-ins first).
    logits_processor_classes: tuple[type, ...]
    #: "auto" reads the checkpoint; "dummy" fills random weights (benchmarks).
    load_format: str
    #: The chosen platform: the runner's only way to device specifics.
    platform: type["Platform"]
    #: The speculative-decoding method's ``Proposer`` class (None: no speculation).
    proposer_cls: Optional[type] = None
    #: Installed architectures by HF name, for models a proposer loads (draft models).
    model_classes: Optional[Mapping[str, type]] = None

    @property
    def dtype(self) -> str:
        """The dtype name the model runs in ("float32", "bfloat16", "float16"), "auto"
        already resolved by the platform."""
        return self.engine.model.dtype


class StepHandle(Protocol):
    """A launched step. ``result()`` waits for the step's outputs to reach the host (once;
    later calls return the same object)."""

    def result(self) -> ModelRunnerOutput: ...


class CompletedStep:
    """A step whose output is known at launch (e.g. one with nothing scheduled)."""

    def __init__(self, output: ModelRunnerOutput) -> None:
        self._output = output

    def result(self) -> ModelRunnerOutput:
        return self._output


class ModelRunnerBase(ABC):
    """A model runner: loads the model, owns the KV cache, runs one step per scheduler output.

    Subclasses are constructed with one argument, ``runner_cls(config)``.
    """

    #: Whether the runner makes the drafts the scheduler places as ``DRAFT_PLACEHOLDER``s
    #: under asynchronous scheduling (speculation then keeps the step in flight; without
    #: it, speculation turns asynchronous scheduling off). Added in plugin API 1.6.
    supports_async_speculation: ClassVar[bool] = False

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config

    @abstractmethod
    def load_model(self) -> None:
        """Build the model and load its weights onto the device (seeding the framework's
        random state from ``config.engine.model.seed`` first). Called once, right after
        construction, before anything else."""

    @abstractmethod
    def cache_specs(self) -> list[CacheSpec]:
        """One spec per caching layer of the loaded model, in the order the layers read
        their caches. Called after ``load_model`` to plan the KV cache; the engine checks them
        against the installed cache kinds."""

    @abstractmethod
    def profile_run(self, num_tokens: int, num_seqs: int) -> None:
        """Run one forward at the largest step the scheduler can produce (``num_tokens`` over
        ``num_seqs`` sequences) on a throwaway cache, so the platform can measure peak memory.
        Called after ``cache_specs`` and before ``initialize_kv_cache``, only when the
        platform's ``needs_profile_run`` is set and no block count is forced."""

    @abstractmethod
    def initialize_kv_cache(self, kv_config: KVCacheConfig) -> None:
        """Allocate every layer's cache as planned (``kv_config.layer_specs`` in
        ``cache_specs`` order, ``num_blocks`` paged blocks, ``num_state_slots`` state slots).
        Called once, after planning."""

    @abstractmethod
    def warm_up(self) -> None:
        """Prepare for serving with the cache in place (compile, capture graphs). Called once
        after ``initialize_kv_cache``, before the first step."""

    @abstractmethod
    def execute_model_async(self, scheduler_output: SchedulerOutput) -> StepHandle:
        """Launch one step and return without waiting for its sampled tokens. Called every
        engine step, in order; with asynchronous scheduling the next call comes before this
        step's ``result()`` is read, so the runner must take tokens still in flight as inputs
        of the next step. Returns a handle whose ``result()`` gives the ``ModelRunnerOutput``:
        one entry per scheduled request, in the order of its ``req_ids``."""

    def sample_tokens(self, grammar: GrammarBitmask) -> None:
        """Finish the step launched last by sampling under the structured-output mask.

        When ``scheduler_output.grammar_req_ids`` is non-empty, ``execute_model_async`` queues
        the forward pass but holds the sampling; the engine fills the mask on the host while
        the device computes, then calls this once, before that step's ``result()``. Row ``i``
        of ``grammar.bitmask`` belongs to ``grammar.req_ids[i]``; tokens whose bit is clear
        must get probability zero (logit -inf) before sampling, and unconstrained rows must
        not be touched. Added in plugin API 1.1; a runner without it cannot serve constrained
        requests.
        """
        raise NotImplementedError(f"{type(self).__qualname__} does not support structured "
                                  "outputs (ModelRunnerBase.sample_tokens)")

    def execute_model(self, scheduler_output: SchedulerOutput,
                      grammar: Optional[GrammarBitmask] = None) -> ModelRunnerOutput:
        """Run one step and wait for its output; ``grammar`` is the step's mask when the
        step has constrained requests."""
        handle = self.execute_model_async(scheduler_output)
        if scheduler_output.grammar_req_ids:
            self.sample_tokens(grammar)
        return handle.result()
