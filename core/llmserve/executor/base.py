"""The engine core's side of running the model: one rank in its own process, or many.

An executor gives the engine core the runner's calls (``ModelRunnerBase``) over however many
ranks the engine spans, and answers each with one value: the output rank's step outputs,
the smallest KV budget of all ranks, the cache specs every rank agrees on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Optional

from llmserve.kv_cache.spec import CacheSpec, KVCacheConfig
from llmserve.runner.base import RunnerConfig, StepHandle
from llmserve.scheduler.output import GrammarBitmask, ModelRunnerOutput, SchedulerOutput


class WorkerDiedError(RuntimeError):
    """A worker rank exited or failed; the engine cannot continue."""


class Executor(ABC):
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.parallel = config.engine.parallel

    #: The in-process model runner (one rank only); None where workers hold the runners.
    runner = None

    @abstractmethod
    def device_name(self) -> str:
        """The torch device the output rank runs on ("cpu", "cuda:0")."""

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


class RemoteExecutor(Executor):
    """Ranks in other processes, all sent the same messages (see ``WorkerLoop``): a
    transport supplies ``_broadcast``, ``_call`` and ``_next_output``."""

    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        #: Launched steps whose outputs are not read yet, oldest first.
        self._unread: deque["RemoteStep"] = deque()

    @abstractmethod
    def _broadcast(self, message: tuple) -> None:
        """Send ``message`` to every rank."""

    @abstractmethod
    def _call(self, method: str, *args) -> list:
        """Run ``Worker.<method>(*args)`` on every rank; their results, by rank."""

    @abstractmethod
    def _next_output(self) -> ModelRunnerOutput:
        """The output rank's next step output (waits for it)."""

    def device_name(self) -> str:
        return self._call("device_name")[output_rank(self.config)]

    def load_model(self) -> None:
        self._call("load_model")

    def cache_specs(self) -> list[CacheSpec]:
        return self._call("cache_specs")[0]

    def memory_budget(self) -> int:
        return min(self._call("memory_budget"))

    def initialize_kv_cache(self, kv_config: KVCacheConfig) -> None:
        self._call("initialize_kv_cache", kv_config)

    def warm_up(self) -> None:
        self._call("warm_up")

    def execute_model_async(self, so: SchedulerOutput) -> "RemoteStep":
        self._broadcast(("execute", so))
        step = RemoteStep(self)
        self._unread.append(step)
        return step

    def sample_tokens(self, grammar: GrammarBitmask) -> None:
        self._broadcast(("sample", grammar))

    def read_until(self, step: "RemoteStep") -> None:
        """Read step outputs in launch order, up to ``step``'s."""
        while step.output is None:
            self._unread.popleft().output = self._next_output()


class RemoteStep:
    """A step launched on the ranks; its output is the output rank's reply to it."""

    def __init__(self, executor: RemoteExecutor) -> None:
        self._executor = executor
        self.output: Optional[ModelRunnerOutput] = None

    def result(self) -> ModelRunnerOutput:
        if self.output is None:
            self._executor.read_until(self)
        return self.output


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


def make_executor(config: RunnerConfig) -> Executor:
    """The executor ``config.engine.parallel.distributed_executor_backend`` names."""
    backend = config.engine.parallel.distributed_executor_backend
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
