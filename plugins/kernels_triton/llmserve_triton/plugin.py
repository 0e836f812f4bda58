"""The ``triton`` entry point: contributes the Triton paged-attention backend.

The backend is only contributed here, not selected: the hardware plugins (NVIDIA, AMD) name
``"triton"`` as their platform's ``default_attention_backend`` or answer
``llmserve_select_attention_backend``. Every head size up to 256 is supported (sizes that are
not a power of two are padded inside the kernel), so no fallback rule is needed here.
"""

from __future__ import annotations

from llmserve import hookimpl

#: The llmserve plugin API versions this plugin is written against (checked at load).
LLMSERVE_PLUGIN_API = ">=1.0,<2"


@hookimpl
def llmserve_attention_backends():
    from llmserve_triton.backend import TritonPagedAttention

    return {"triton": TritonPagedAttention}
