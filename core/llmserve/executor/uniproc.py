"""One rank, in the engine core's process: the runner is called directly."""

from __future__ import annotations

from llmserve.executor.base import Executor, device_index
from llmserve.executor.worker import Worker
from llmserve.runner.base import RunnerConfig


class UniprocExecutor(Executor):
    def __init__(self, config: RunnerConfig) -> None:
        super().__init__(config)
        self.worker = Worker(config)
        self.worker.init_device(device_index(config, 0))
        self.runner = self.worker.runner

    def device_name(self) -> str:
        return self.worker.device_name()

    def load_model(self) -> None:
        self.worker.load_model()

    def cache_specs(self):
        return self.worker.cache_specs()

    def memory_budget(self) -> int:
        return self.worker.memory_budget()

    def initialize_kv_cache(self, kv_config) -> None:
        self.worker.initialize_kv_cache(kv_config)

    def warm_up(self) -> None:
        self.worker.warm_up()

    def execute_model_async(self, so):
        return self.runner.execute_model_async(so)

    def sample_tokens(self, grammar) -> None:
        self.runner.sample_tokens(grammar)
