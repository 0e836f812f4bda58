"""Engine configuration: pydantic models, so every bad value names its field and range.

``EngineArgs`` is the flat, vLLM-named set of knobs that ``LLM(...)`` and the CLI take;
``EngineArgs.create_config`` resolves it against the model directory into ``EngineConfig``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["auto", "float32", "bfloat16", "float16", "half", "float", "fp32", "bf16", "fp16"]

_DTYPE_ALIASES = {"half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32",
                  "bf16": "bfloat16"}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelConfig(_Frozen):
    """Resolved model settings (the HF config itself stays in ``hf_config``)."""

    model: str
    tokenizer: str
    #: torch dtype name after resolving "auto": float32, bfloat16 or float16.
    dtype: str
    max_model_len: int = Field(ge=1)
    seed: int = 0
    architecture: str
    served_model_name: str


class CacheConfig(_Frozen):
    block_size: int = Field(16, ge=1, le=1024)
    enable_prefix_caching: bool = True
    #: Bytes of KV cache on the CPU platform (and an explicit budget anywhere).
    kv_cache_memory: Optional[int] = Field(None, ge=1)
    #: Fraction of device memory the engine may use (GPU platforms).
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    #: Fix the number of KV blocks (tests and benchmarks); overrides the memory budget.
    num_gpu_blocks_override: Optional[int] = Field(None, ge=1)


class SchedulerConfig(_Frozen):
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    max_model_len: int = Field(ge=1)
    enable_chunked_prefill: bool = True
    #: Name of a scheduling policy registered through the ``llmserve_scheduling_policies`` hook.
    policy: str = "fcfs"
    #: The policy's options, validated by its ``Options`` model when it is built.
    policy_config: dict[str, Any] = Field(default_factory=dict)
    #: Bound on waiting requests; None means unbounded (the server sets one).
    max_waiting_requests: Optional[int] = Field(None, ge=1)
    #: Schedule step N+1 while step N runs on the device (its sampled tokens feed N+1 on the
    #: device); outputs reach the caller one step later.
    async_scheduling: bool = False

    @model_validator(mode="after")
    def _budget_fits(self) -> "SchedulerConfig":
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) when chunked prefill is disabled"
            )
        return self


class StructuredOutputsConfig(_Frozen):
    #: "auto" (xgrammar, falling back to guidance per request) or a backend registered
    #: through the ``llmserve_structured_output_backends`` hook.
    backend: str = "auto"


class SpeculativeConfig(_Frozen):
    """Speculative decoding, with vLLM's names (``--speculative-config '{"method": ...}'``)."""

    #: A proposer registered through the ``llmserve_speculative_proposers`` hook: "ngram",
    #: "draft_model", "eagle", "eagle3" or a plugin's.
    method: str
    #: Draft tokens proposed per request and step (k).
    num_speculative_tokens: int = Field(ge=1, le=32)
    #: n-gram sizes tried by ``ngram``, longest first.
    prompt_lookup_min: Optional[int] = Field(None, ge=1)
    prompt_lookup_max: Optional[int] = Field(None, ge=1)
    #: The draft model's or EAGLE head's HF directory (``draft_model``, ``eagle``,
    #: ``eagle3``); None: the method's default, if any.
    model: Optional[str] = None
    #: Speculate only while fewer requests than this run in a step (None: always). Above
    #: the crossover batch size, verifying drafts costs more than it saves.
    disable_by_batch_size: Optional[int] = Field(None, ge=2)

    @field_validator("model", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _lookup_sizes(self) -> "SpeculativeConfig":
        lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"prompt_lookup_min ({lo}) must be <= prompt_lookup_max ({hi})")
        return self


class ParallelConfig(_Frozen):
    """How many devices one engine spans, and how many engines serve behind one front end."""

    #: Ranks that split every layer's weights (one worker process per device).
    tensor_parallel_size: int = Field(1, ge=1)
    #: Stages that split the layers; each stage has ``tensor_parallel_size`` ranks.
    pipeline_parallel_size: int = Field(1, ge=1)
    #: Engine cores behind one API server (``llmserve serve`` only).
    data_parallel_size: int = Field(1, ge=1)
    #: This engine core's index among the ``data_parallel_size`` replicas: replica r uses
    #: local devices [r * world_size, (r + 1) * world_size).
    data_parallel_rank: int = Field(0, ge=0)
    #: "uni": the model runs in the engine's process (one device); "mp": one local worker
    #: process per rank; "ray": workers placed on a Ray cluster.
    distributed_executor_backend: Literal["uni", "mp", "ray"] = "uni"

    @property
    def world_size(self) -> int:
        """Ranks of one engine: tensor times pipeline size."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


class EngineConfig(_Frozen):
    model_config_: ModelConfig = Field(alias="model")
    cache: CacheConfig
    scheduler: SchedulerConfig
    structured_outputs: StructuredOutputsConfig = StructuredOutputsConfig()
    speculative: Optional[SpeculativeConfig] = None
    parallel: ParallelConfig = ParallelConfig()
    #: Platform name ("cpu", "cuda", ...) chosen through the platform hook.
    device: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              protected_namespaces=())

    @property
    def model(self) -> ModelConfig:
        return self.model_config_


class EngineArgs(BaseModel):
    """Flat engine arguments with vLLM's names; the ``LLM`` constructor and the CLI take these."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Optional[str] = None
    tokenizer: Optional[str] = None
    served_model_name: Optional[str] = None
    dtype: DType = "auto"
    max_model_len: Optional[int] = Field(None, ge=1)
    block_size: int = Field(16, ge=1, le=1024)
    enable_prefix_caching: bool = True
    kv_cache_memory: Optional[int] = Field(None, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    num_gpu_blocks_override: Optional[int] = Field(None, ge=1)
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: Optional[int] = Field(None, ge=1)
    enable_chunked_prefill: bool = True
    scheduling_policy: str = "fcfs"
    #: Options of the scheduling policy: a dict, or its JSON text (``--scheduling-policy-config``).
    scheduling_policy_config: Optional[dict[str, Any]] = None
    max_waiting_requests: Optional[int] = Field(None, ge=1)
    #: None: the platform's default (on for CUDA, off on the CPU).
    async_scheduling: Optional[bool] = None
    seed: int = 0
    device: str = "auto"
    #: "auto" reads the checkpoint; "dummy" fills random weights on the device (benchmarks).
    load_format: Literal["auto", "dummy"] = "auto"
    #: Run on token ids only: no tokenizer is loaded and nothing is detokenized.
    skip_tokenizer_init: bool = False
    #: Grammar backend for structured outputs: "auto", "xgrammar", "guidance" or a plugin's.
    structured_outputs_backend: str = "auto"
    #: Speculative decoding: a dict of ``SpeculativeConfig`` fields, or its JSON text
    #: (``--speculative-config``); None: off.
    speculative_config: Optional[dict[str, Any]] = None
    #: Devices that split every layer (one worker process each).
    tensor_parallel_size: int = Field(1, ge=1)
    #: Stages that split the layers across devices.
    pipeline_parallel_size: int = Field(1, ge=1)
    #: Engine cores behind one API server (``llmserve serve`` only).
    data_parallel_size: int = Field(1, ge=1)
    #: This engine core's replica index (set by the server for each core it starts).
    data_parallel_rank: int = Field(0, ge=0)
    #: How workers start: "mp" (local processes, the default for more than one device), "ray"
    #: (a Ray cluster: ``pip install 'llmserve[ray]'``) or "uni" (in the engine's process).
    distributed_executor_backend: Optional[Literal["uni", "mp", "ray"]] = None

    @field_validator("scheduling_policy_config", "speculative_config", mode="before")
    @classmethod
    def _options_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object")
        return value

    @property
    def canonical_dtype(self) -> str:
        return _DTYPE_ALIASES.get(self.dtype, self.dtype)
