"""The engine core's side of running the model: one rank in its own process, or many.

An executor gives the engine core the runner's calls (``ModelRunnerBase``) over however many
ranks the engine spans, and answers each with one value: the output rank's step outputs,
the smallest KV budget of all ranks, the cache specs every rank agrees on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

from llmserve.kv_cache.spec import CacheSpec, KVCacheConfig
from llmserve.runner.base import RunnerConfig, StepHandle
from llmserve.scheduler.output import GrammarBitmask, SchedulerOutput


class WorkerDiedError(RuntimeError):
    """A worker rank exited or failed; the engine cannot continue."""


class Executor(ABC):
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.parallel = config.engine.parallel

    #: The in-process model runner (one rank only); None where workers hold the runners.
    runner = None

    @abstractmethod
    def load_model(self) -> None: ...

    @abstractmethod
    def cache_specs(self) -> list[CacheSpec]:
        """Every rank's caching layers (each rank holds its share of the KV heads)."""

    @abstractmethod
    def memory_budget(self) -> int:
        """Bytes every rank can give its KV cache: the smallest across ranks."""

    @abstractmethod
    def initialize_kv_cache(self, kv_config: KVCacheConfig) -> None: ...

    @abstractmethod
    def warm_up(self) -> None: ...

    @abstractmethod
    def execute_model_async(self, so: SchedulerOutput) -> StepHandle: ...

    @abstractmethod
    def sample_tokens(self, grammar: GrammarBitmask) -> None: ...

    def shutdown(self) -> None:
        """Stop the workers and free what they hold; idempotent."""


def device_index(config: RunnerConfig, rank: int) -> int:
    """The local device of ``rank``: data-parallel replica r takes devices
    [r * world_size, (r + 1) * world_size)."""
    parallel = config.engine.parallel
    return parallel.data_parallel_rank * parallel.world_size + rank


def output_rank(config: RunnerConfig) -> int:
    """The rank whose outputs the engine reads: the last stage's first tensor-parallel rank
    (every rank of that stage samples the same tokens)."""
    parallel = config.engine.parallel
    return (parallel.pipeline_parallel_size - 1) * parallel.tensor_parallel_size


def make_executor(config: RunnerConfig, backend: Optional[str] = None) -> Executor:
    backend = backend or config.engine.parallel.distributed_executor_backend
    if backend == "uni":
        from llmserve.executor.uniproc import UniprocExecutor

        return UniprocExecutor(config)
    if backend == "mp":
        from llmserve.executor.multiproc import MultiprocExecutor

        return MultiprocExecutor(config)
    if backend == "ray":
        from llmserve.executor.ray_executor import RayExecutor

        return RayExecutor(config)
    raise ValueError(f"distributed_executor_backend must be one of ['mp', 'ray', 'uni'], "
                     f"got {backend!r}")
