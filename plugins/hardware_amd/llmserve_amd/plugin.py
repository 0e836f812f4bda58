"""Hook implementations of the AMD plugin (entry point ``amd`` in group ``llmserve``)."""

from __future__ import annotations

from llmserve import hookimpl

#: The llmserve plugin API versions this plugin is written against (checked at load):
#: 1.8 for ``Platform.can_run_forced``.
LLMSERVE_PLUGIN_API = ">=1.8,<2"


@hookimpl
def llmserve_platforms():
    from llmserve_amd.platform import RocmPlatform

    return [RocmPlatform]


@hookimpl
def llmserve_attention_backends():
    from llmserve_amd.backend import RocmTritonAttention

    return {"triton_rocm": RocmTritonAttention}


@hookimpl
def llmserve_select_attention_backend(platform_name: str, model_arch: str):
    # On ROCm every architecture we serve runs on the CDNA-tuned Triton backend.
    return "triton_rocm" if platform_name == "rocm" else None
