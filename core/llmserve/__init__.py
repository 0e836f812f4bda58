"""llmserve: a high-throughput, memory-efficient LLM inference and serving engine.

Two public surfaces, each with its own stability promise:

- **Users:** ``LLM``, ``SamplingParams``, ``SchedulingHints`` and the output types (``RequestOutput``,
  ``CompletionOutput``, ``Logprob``), versioned with the package (``__version__``).
- **Plugin authors:** the plugin API, versioned on its own by ``PLUGIN_API_VERSION``
  (semantically: removals and incompatible changes only in a new major version, after a
  deprecation period). It is ``hookimpl``, the hook specifications in ``llmserve.hookspecs``,
  and exactly the modules listed in ``llmserve.plugin_api.PLUGIN_API_MODULES`` (platforms,
  attention backends, cache specs, scheduling policies, logits processors, CLI commands, the
  model interface and the layers models are built from); ``llmserve.plugin_api`` re-exports
  their public names and ``docs/plugins/api.md`` describes each module.

Every other module is internal and may change in any release.
"""

from llmserve.outputs import CompletionOutput, Logprob, RequestOutput
from llmserve.plugin_markers import PLUGIN_API_VERSION, hookimpl
from llmserve.request import SchedulingHints
from llmserve.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "SchedulingHints", "RequestOutput", "CompletionOutput", "Logprob", "hookimpl",
           "PLUGIN_API_VERSION", "__version__"]


def __getattr__(name: str):
    # LLM pulls in torch and the engine; import it only when asked for.
    if name == "LLM":
        from llmserve.llm import LLM

        return LLM
    raise AttributeError(f"module 'llmserve' has no attribute {name!r}")
