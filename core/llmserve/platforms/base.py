"""What a hardware platform tells the engine: its device, dtypes, attention backend, memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from llmserve.layers.ops import LayerOps


class Platform:
    """Base class for hardware platforms; subclasses are contributed by plugins.

    The engine asks every registered platform ``is_available()`` and takes the available one
    with the highest ``priority`` unless the user names one with ``device=``.
    """

    name: ClassVar[str] = "base"
    #: torch device type ("cpu", "cuda", ...).
    device_type: ClassVar[str] = "cpu"
    priority: ClassVar[int] = 0
    #: Attention backend name (from the ``llmserve_attention_backends`` hook) used by default.
    default_attention_backend: ClassVar[str] = "torch"
    #: Whether the engine runs ``ModelRunner.profile_run`` before asking
    #: ``kv_cache_budget_bytes`` (platforms that size the cache from measured free memory).
    needs_profile_run: ClassVar[bool] = False
    #: Whether steps are scheduled asynchronously unless the user says otherwise. It pays
    #: where the device runs apart from the host (the host then never stalls it).
    default_async_scheduling: ClassVar[bool] = False

    @classmethod
    def is_available(cls) -> bool:
        raise NotImplementedError

    @classmethod
    def device(cls) -> torch.device:
        return torch.device(cls.device_type)

    @classmethod
    def resolve_dtype(cls, checkpoint_dtype: torch.dtype) -> torch.dtype:
        """The dtype ``dtype="auto"`` picks for a checkpoint stored in ``checkpoint_dtype``."""
        return checkpoint_dtype

    @classmethod
    def kv_cache_budget_bytes(cls, requested: int | None, gpu_memory_utilization: float) -> int:
        """Bytes to give the KV cache after the model is loaded (and profiled, when
        ``needs_profile_run``). ``requested`` is the user's explicit ``kv_cache_memory``."""
        raise NotImplementedError

    @classmethod
    def model_runner_class(cls) -> type:
        """The model runner for this platform: ``llmserve.runner.model_runner.ModelRunner``
        or a subclass (which typically overrides ``run_model``, e.g. to replay graphs)."""
        from llmserve.runner.model_runner import ModelRunner

        return ModelRunner

    @classmethod
    def layer_ops(cls) -> "LayerOps":
        """The elementwise kernels (norms, rotary, activations) models run with here."""
        from llmserve.layers.ops import TORCH_OPS

        return TORCH_OPS
