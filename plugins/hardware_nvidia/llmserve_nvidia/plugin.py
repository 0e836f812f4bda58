"""Hook implementations of the NVIDIA plugin (entry point ``nvidia`` in group ``llmserve``)."""

from __future__ import annotations

from llmserve import hookimpl

#: The llmserve plugin API versions this plugin is written against (checked at load).
LLMSERVE_PLUGIN_API = ">=1.0,<2"


@hookimpl
def llmserve_platforms():
    from llmserve_nvidia.platform import CudaPlatform

    return [CudaPlatform]


@hookimpl
def llmserve_select_attention_backend(platform_name: str, model_arch: str):
    # On CUDA every architecture we serve runs on the Triton paged-attention backend.
    return "triton" if platform_name == "cuda" else None
