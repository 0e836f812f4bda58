"""What a hardware platform tells the engine and the runner: device, dtypes, kernels, memory,
and the device specifics (synchronisation, events, pinned memory, distributed backend) that
a runner must not spell out itself, so one torch runner serves every torch device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, ContextManager, Optional, Protocol

import torch

if TYPE_CHECKING:
    from llmserve.layers.ops import LayerOps
    from llmserve.runner.base import ModelRunnerBase


class DeviceEvent(Protocol):
    """A point in the device's work queue; ``synchronize()`` blocks the host until the device
    has passed it."""

    def synchronize(self) -> None: ...


class CompletedEvent:
    """The event of a device that runs in step with the host (the CPU): always passed."""

    def synchronize(self) -> None:
        return None


_COMPLETED = CompletedEvent()


class Platform(ABC):
    """Base class for hardware platforms; subclasses are contributed by plugins.

    The engine asks every registered platform ``is_available()`` and takes the available one
    with the highest ``priority`` unless the user names one with ``device=`` (or the
    environment variable ``LLMSERVE_PLATFORM`` forces one, see ``can_run_forced``). Platforms are
    used as classes, never instantiated: every member is a class attribute or classmethod.
    The defaults describe a device that runs in step with the host (the CPU); accelerator
    platforms override what differs (see ``llmserve.platforms.gpu.GpuPlatform``).
    """

    name: ClassVar[str] = "base"
    #: torch device type ("cpu", "cuda", ...).
    device_type: ClassVar[str] = "cpu"
    priority: ClassVar[int] = 0
    #: Attention backend name (from the ``llmserve_attention_backends`` hook) used by default.
    default_attention_backend: ClassVar[str] = "torch"
    #: Whether the engine runs the runner's ``profile_run`` before asking
    #: ``kv_cache_budget_bytes`` (platforms that size the cache from measured free memory).
    needs_profile_run: ClassVar[bool] = False
    #: Whether steps are scheduled asynchronously unless the user says otherwise. It pays
    #: where the device runs apart from the host (the host then never stalls it).
    default_async_scheduling: ClassVar[bool] = False
    #: Whether host buffers can be page-locked, so host<->device copies run without blocking
    #: the host. Without it copies are synchronous and ``host_buffer`` returns plain memory.
    can_pin_memory: ClassVar[bool] = False
    #: The ``torch.distributed`` backend for tensor parallelism ("gloo", "nccl", ...).
    distributed_backend: ClassVar[str] = "gloo"
    #: Environment variable that limits which devices a process sees (None: no such thing),
    #: set per worker when processes are placed on devices.
    device_visibility_env: ClassVar[Optional[str]] = None

    # ---- identity and choice -------------------------------------------------------------

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this machine has the platform's hardware and software (cheap; no device
        memory is allocated)."""

    @classmethod
    def can_run_forced(cls) -> bool:
        """Whether this platform's code path can run on this machine although
        ``is_available()`` says its hardware is absent (e.g. the ROCm path on a CUDA GPU:
        same ``torch.cuda`` API, another vendor). Asked only when ``LLMSERVE_PLATFORM`` names
        the platform, so its code path can be tested end to end without its hardware.
        Cheap, like ``is_available``. Added in plugin API 1.8."""
        return False

    @classmethod
    def device(cls) -> torch.device:
        return torch.device(cls.device_type)

    @classmethod
    def select_device(cls, index: int) -> None:
        """Make local device ``index`` this process's current one, before its runner is
        built (each rank, and each data-parallel replica, takes its own). Devices the host
        runs on have no index: the default does nothing. Added in plugin API 1.7."""

    @classmethod
    def device_capability(cls) -> Optional[tuple[int, int]]:
        """(major, minor) of the current device (e.g. (9, 0) for an H100), for kernels and
        dtypes that need a minimum; None where the notion does not apply (the CPU)."""
        return None

    # ---- dtypes --------------------------------------------------------------------------

    @classmethod
    def resolve_dtype(cls, checkpoint_dtype: torch.dtype) -> torch.dtype:
        """The dtype ``dtype="auto"`` picks for a checkpoint stored in ``checkpoint_dtype``."""
        return checkpoint_dtype

    @classmethod
    def fp8_dtype(cls) -> Optional[torch.dtype]:
        """The 8-bit float (e4m3) this hardware computes in: ``torch.float8_e4m3fn`` on
        NVIDIA, ``torch.float8_e4m3fnuz`` on AMD CDNA3; None where FP8 is not supported."""
        return None

    # ---- memory --------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def kv_cache_budget_bytes(cls, requested: int | None, gpu_memory_utilization: float) -> int:
        """Bytes to give the KV cache after the model is loaded (and profiled, when
        ``needs_profile_run``). ``requested`` is the user's explicit ``kv_cache_memory``."""

    @classmethod
    def host_buffer(cls, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised host tensor to stage device copies through: page-locked where
        ``can_pin_memory``, so a copy into or out of it does not block the host."""
        return torch.empty(shape, dtype=dtype, pin_memory=cls.can_pin_memory)

    # ---- synchronisation -----------------------------------------------------------------

    @classmethod
    def synchronize(cls) -> None:
        """Block the host until all work queued on the current device is done."""

    @classmethod
    def record_event(cls) -> DeviceEvent:
        """An event at the current end of the device's work queue (after the work queued so
        far). The default device runs in step with the host: the event has already passed."""
        return _COMPLETED

    @classmethod
    def inference_mode(cls) -> ContextManager:
        """The context the runner runs forwards in: no autograd bookkeeping. A backend that
        supports only ``torch.no_grad`` returns that instead."""
        return torch.inference_mode()

    # ---- what runs here ------------------------------------------------------------------

    @classmethod
    def model_runner_class(cls) -> type["ModelRunnerBase"]:
        """The runner for this platform, a ``llmserve.runner.base.ModelRunnerBase``; the
        engine builds it as ``runner_cls(RunnerConfig)``. The default is the torch runner,
        ``llmserve.runner.model_runner.ModelRunner``."""
        from llmserve.runner.model_runner import ModelRunner

        return ModelRunner

    @classmethod
    def layer_ops(cls) -> "LayerOps":
        """The kernels (norms, rotary, activations, ...) models run with here: the torch
        reference table, or a copy of it with some ops replaced (``TORCH_OPS.replace``)."""
        from llmserve.layers.ops import TORCH_OPS

        return TORCH_OPS
