"""Build a model from a local HF directory and stream its safetensors into it shard by shard.

Tensors are read one at a time from memory-mapped files and copied straight into the
parameters on the target device, so no second full copy of the weights is ever held.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from llmserve.layers.ops import TORCH_OPS, LayerOps
from llmserve.models.base import ModelBuildContext

if TYPE_CHECKING:
    from llmserve.attention.backend import AttentionBackend
    from llmserve.models.interface import CausalLM

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_hf_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; is it a Hugging Face model "
                                "directory?")
    return json.loads(path.read_text())


def checkpoint_dtype(cfg: dict[str, Any]) -> torch.dtype:
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return _DTYPES.get(str(name).replace("torch.", ""), torch.float32)


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's files: those listed by a sharded index, else every *.safetensors."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    return files


def iterate_weights(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in safetensors_files(model_dir):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def resolve_architecture(cfg: dict[str, Any], registry: dict[str, type[CausalLM]],
                         installed_plugins: Callable[[], list[str]]
                         ) -> tuple[str, type[CausalLM]]:
    """The model class for the config's ``architectures``; the error lists the supported
    names and ``installed_plugins()`` (asked only then: it calls every plugin)."""
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in registry:
            return arch, registry[arch]
    raise ValueError(
        f"model architecture {archs or '(none in config.json)'} is not supported. Supported: "
        f"{', '.join(sorted(registry))}. Installed plugins: {', '.join(installed_plugins())}"
    )


def fill_dummy_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Small random weights (norm scales stay 1) for benchmarks that need no checkpoint."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                # Drawn on the CPU in slices would be slow for 8B; draw on the device instead.
                p.uniform_(-1e-2, 1e-2, generator=gen if p.device.type == "cpu" else None)


def load_model(model_dir: str | Path, cfg: dict[str, Any], model_cls: type[CausalLM],
               dtype: torch.dtype, device: torch.device, attn_backend: type[AttentionBackend],
               max_position: int, load_format: str = "auto",
               ops: LayerOps = TORCH_OPS) -> torch.nn.Module:
    """Build ``model_cls`` on ``device`` and load its weights.

    ``model_cls`` comes from the architecture registry, whose entries were checked against
    the ``CausalLM`` protocol, so every method used here exists.
    """
    flags = model_cls.build_context_flags(cfg)
    ctx = ModelBuildContext(dtype=dtype, attn_backend=attn_backend, max_position=max_position,
                            flags=flags, ops=ops)
    with torch.device(device):
        model = model_cls(cfg, ctx)
    if load_format == "dummy":
        fill_dummy_weights(model)
        return model.eval()
    loaded = model.load_weights(iterate_weights(model_dir))
    expected = {n for n, _ in model.named_parameters()}
    missing = expected - loaded
    if missing:
        raise ValueError(f"checkpoint in {model_dir} lacks weights for: {sorted(missing)[:8]}")
    return model.eval()
