"""Executors: how the engine core reaches the ranks that run the model."""

from llmserve.executor.base import Executor, WorkerDiedError, make_executor

__all__ = ["Executor", "WorkerDiedError", "make_executor"]
