"""llmserve: a high-throughput, memory-efficient LLM inference and serving engine.

The public API is small: ``LLM``, ``SamplingParams``, the output types and ``hookimpl`` for
plugin authors. Everything else may change between releases.
"""

from llmserve.outputs import CompletionOutput, Logprob, RequestOutput
from llmserve.plugin_markers import hookimpl
from llmserve.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob", "hookimpl",
           "__version__"]


def __getattr__(name: str):
    # LLM pulls in torch and the engine; import it only when asked for.
    if name == "LLM":
        from llmserve.llm import LLM

        return LLM
    raise AttributeError(f"module 'llmserve' has no attribute {name!r}")
