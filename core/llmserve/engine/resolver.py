"""Resolve ``EngineArgs`` against the plugins and the model directory into an ``EngineConfig``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ValidationError

from llmserve.config import (CacheConfig, EngineArgs, EngineConfig, ModelConfig, ParallelConfig,
                             SchedulerConfig, SpeculativeConfig, StructuredOutputsConfig)
from llmserve.models.loader import checkpoint_dtype, read_hf_config, resolve_architecture
from llmserve.platforms.base import Platform
from llmserve.plugins import collect_list, collect_registry, plugin_infos
from llmserve.scheduler.policy import parse_policy_options

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ResolvedEngine:
    """Everything the engine core needs to start, resolved once in the engine process."""

    config: EngineConfig
    hf_config: dict[str, Any]
    platform: type[Platform]
    model_cls: type
    torch_dtype: torch.dtype
    load_format: str = "auto"
    skip_tokenizer_init: bool = False


def resolve_model_path(model: Optional[str]) -> str:
    """A local directory for ``model``; None means the embedded default model."""
    if model is None:
        from llmserve.default_model import DEFAULT_MODEL_PATH

        return str(DEFAULT_MODEL_PATH)
    if Path(model).is_dir():
        return str(Path(model))
    try:  # an explicit hub id: the only network access llmserve ever makes, and optional
        from huggingface_hub import snapshot_download

        return snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                        "*.txt", "*.jinja"])
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise ValueError(
            f"model {model!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}). Pass a local model directory."
        ) from exc


def _unimplemented(platform: type[Platform]) -> list[str]:
    """The abstract ``Platform`` members a contributed class leaves unimplemented."""
    return sorted(getattr(platform, "__abstractmethods__", ()))


#: Names the platform to run whatever the hardware, for testing one vendor's code path on
#: another's device (see ``Platform.can_run_forced``); ``device="auto"`` then means it.
FORCED_PLATFORM_ENV = "LLMSERVE_PLATFORM"


def select_platform(pm, device: str) -> type[Platform]:
    """The platform ``device`` names ("auto", a platform name, or a torch device type such
    as "cuda", which several platforms may share: the available one of highest priority
    wins), or the one ``LLMSERVE_PLATFORM`` forces."""
    platforms: list[type[Platform]] = []
    broken: dict[type[Platform], list[str]] = {}
    for p in collect_list(pm, "llmserve_platforms"):
        missing = _unimplemented(p)
        if missing:  # a broken plugin is skipped, never fatal
            broken[p] = missing
            logger.warning("skipping platform %s.%s: it does not implement %s", p.__module__,
                           p.__qualname__, ", ".join(missing))
        else:
            platforms.append(p)
    forced = os.environ.get(FORCED_PLATFORM_ENV)
    if forced:
        return _forced_platform(platforms, forced, device)
    if device != "auto":
        matches = [p for p in platforms if device in (p.name, p.device_type)]
        if matches:
            available = [p for p in matches if p.is_available()]
            if not available:
                raise ValueError(f"device {device!r} is not available on this machine")
            named = [p for p in available if p.name == device]
            return named[0] if named else max(available, key=lambda p: p.priority)
        for p, missing in broken.items():
            if device in (p.name, p.device_type):
                raise ValueError(f"platform {p.name!r} ({p.__module__}.{p.__qualname__}) does "
                                 f"not implement {', '.join(missing)}")
        names = sorted({p.name for p in platforms})
        raise ValueError(f"device must be 'auto' or one of {names}, got {device!r}")
    available = [p for p in platforms if p.is_available()]
    if not available:
        raise RuntimeError("no platform is available (not even the CPU)")
    return max(available, key=lambda p: p.priority)


def _forced_platform(platforms: list[type[Platform]], forced: str,
                     device: str) -> type[Platform]:
    by_name = {p.name: p for p in platforms}
    platform = by_name.get(forced)
    if platform is None:
        raise ValueError(f"{FORCED_PLATFORM_ENV} must name an installed platform, one of "
                         f"{sorted(by_name)}, got {forced!r}")
    if device not in ("auto", platform.name, platform.device_type):
        raise ValueError(f"device {device!r} contradicts {FORCED_PLATFORM_ENV}={forced!r}: "
                         f"pass device='auto' or {forced!r}, or unset {FORCED_PLATFORM_ENV}")
    if platform.is_available():
        return platform
    if not platform.can_run_forced():
        raise ValueError(f"{FORCED_PLATFORM_ENV}={forced!r}: platform {forced!r} is not "
                         f"available on this machine and cannot run its code path here")
    logger.warning("%s=%s: running platform %r's code path on hardware it was not built for "
                   "(for testing)", FORCED_PLATFORM_ENV, forced, forced)
    return platform


def resolve_engine(args: EngineArgs, pm) -> ResolvedEngine:
    model_path = resolve_model_path(args.model)
    hf_config = read_hf_config(model_path)
    arch, model_cls = resolve_architecture(
        hf_config, collect_registry(pm, "llmserve_model_architectures"),
        lambda: [f"{p.name} {p.version}" for p in plugin_infos(pm)])
    platform = select_platform(pm, args.device)
    backends = collect_registry(pm, "llmserve_structured_output_backends")
    if args.structured_outputs_backend != "auto" and args.structured_outputs_backend not in backends:
        raise ValueError(f"structured_outputs_backend must be 'auto' or one of "
                         f"{sorted(backends)}, got {args.structured_outputs_backend!r}")
    policies = collect_registry(pm, "llmserve_scheduling_policies")
    policy_cls = policies.get(args.scheduling_policy)
    if policy_cls is None:
        raise ValueError(f"scheduling_policy must be one of the installed policies "
                         f"{sorted(policies)}, got {args.scheduling_policy!r}")
    parse_policy_options(policy_cls, args.scheduling_policy_config)

    speculative = _speculative_config(args, pm)
    # With speculation, asynchronous scheduling is only taken when asked for: measured on the
    # H200 it is no faster at batch 1 (benchmarks/results/h200/2026-12-03-spec-async-ab.txt).
    async_scheduling = (args.async_scheduling if args.async_scheduling is not None
                        else platform.default_async_scheduling and speculative is None)
    if (speculative is not None and async_scheduling
            and not platform.model_runner_class().supports_async_speculation):
        raise ValueError(f"async_scheduling with speculative_config needs a runner that makes "
                         f"scheduled drafts; {platform.name!r}'s does not")

    dtype_name = args.canonical_dtype
    if dtype_name == "auto":
        torch_dtype = platform.resolve_dtype(checkpoint_dtype(hf_config))
    else:
        torch_dtype = _TORCH_DTYPES[dtype_name]

    limit = hf_config.get("max_position_embeddings") or 2048
    max_model_len = args.max_model_len or limit
    if max_model_len > limit:
        raise ValueError(
            f"max_model_len must be in [1, {limit}] (the model's max_position_embeddings), "
            f"got {max_model_len}")

    batched = args.max_num_batched_tokens
    if batched is None:
        batched = max(8192, max_model_len) if not args.enable_chunked_prefill else 8192
    model_cfg = ModelConfig(
        model=model_path,
        tokenizer=args.tokenizer or model_path,
        dtype=str(torch_dtype).removeprefix("torch."),
        max_model_len=max_model_len,
        seed=args.seed,
        architecture=arch,
        served_model_name=args.served_model_name or (args.model or "default"),
    )
    config = EngineConfig(
        model=model_cfg,
        cache=CacheConfig(block_size=args.block_size,
                          enable_prefix_caching=args.enable_prefix_caching,
                          kv_cache_memory=args.kv_cache_memory,
                          gpu_memory_utilization=args.gpu_memory_utilization,
                          num_gpu_blocks_override=args.num_gpu_blocks_override),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=batched,
                                  max_model_len=max_model_len,
                                  enable_chunked_prefill=args.enable_chunked_prefill,
                                  policy=args.scheduling_policy,
                                  policy_config=args.scheduling_policy_config or {},
                                  max_waiting_requests=args.max_waiting_requests,
                                  async_scheduling=async_scheduling),
        structured_outputs=StructuredOutputsConfig(backend=args.structured_outputs_backend),
        speculative=speculative,
        parallel=_parallel_config(args, hf_config, model_cls, speculative),
        device=platform.name,
    )
    return ResolvedEngine(config, hf_config, platform, model_cls, torch_dtype, args.load_format,
                          args.skip_tokenizer_init)


def _speculative_config(args: EngineArgs, pm) -> Optional[SpeculativeConfig]:
    """``speculative_config`` checked: its fields, and that its method is installed."""
    if args.speculative_config is None:
        return None
    try:
        config = SpeculativeConfig(**args.speculative_config)
    except ValidationError as exc:
        raise ValueError(f"speculative_config: {exc}") from None
    proposers = collect_registry(pm, "llmserve_speculative_proposers")
    if config.method not in proposers:
        raise ValueError(f"speculative_config.method must be one of the installed methods "
                         f"{sorted(proposers)}, got {config.method!r}")
    return config


def _parallel_config(args: EngineArgs, hf_config: dict[str, Any], model_cls: type,
                     speculative: Optional[SpeculativeConfig]) -> ParallelConfig:
    """The executor follows the world size unless named: one rank runs in the engine's
    process, more start one local worker process each."""
    layers = hf_config.get("num_hidden_layers")
    if layers is not None and args.pipeline_parallel_size > layers:
        raise ValueError(f"pipeline_parallel_size must be in [1, {layers}] (the model's "
                         f"num_hidden_layers), got {args.pipeline_parallel_size}")
    if args.pipeline_parallel_size > 1:
        if not getattr(model_cls, "supports_pipeline_parallel", False):
            raise ValueError(f"pipeline_parallel_size must be 1 for {model_cls.__name__}: it "
                             f"does not split its layers into stages")
        if speculative is not None:
            raise ValueError("speculative_config needs pipeline_parallel_size 1: draft "
                             "proposers run beside one stage's layers only")
    world = args.tensor_parallel_size * args.pipeline_parallel_size
    backend = args.distributed_executor_backend or ("uni" if world == 1 else "mp")
    if args.data_parallel_rank >= args.data_parallel_size:
        raise ValueError(f"data_parallel_rank must be in [0, {args.data_parallel_size - 1}] "
                         f"(data_parallel_size - 1), got {args.data_parallel_rank}")
    if backend == "uni" and world > 1:
        raise ValueError(f"distributed_executor_backend 'uni' runs one rank; tensor_parallel_size"
                         f" x pipeline_parallel_size is {world}: use 'mp' or 'ray'")
    return ParallelConfig(tensor_parallel_size=args.tensor_parallel_size,
                          pipeline_parallel_size=args.pipeline_parallel_size,
                          data_parallel_size=args.data_parallel_size,
                          data_parallel_rank=args.data_parallel_rank,
                          distributed_executor_backend=backend)
