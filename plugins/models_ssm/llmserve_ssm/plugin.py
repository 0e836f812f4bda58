"""Hook implementations of llmserve-ssm (entry point ``ssm`` in group ``llmserve``).

Every llmserve process imports this module; the models (torch) are imported inside the hooks.
"""

from __future__ import annotations

from llmserve import hookimpl

#: The plugin API versions this plugin is written against (checked at load): state
#: snapshots for prefix caching and CUDA graphs over state slots arrived in 1.3.
LLMSERVE_PLUGIN_API = ">=1.3,<2"


@hookimpl
def llmserve_model_architectures():
    from llmserve_ssm.models.bamba import BambaForCausalLM
    from llmserve_ssm.models.mamba import MambaForCausalLM
    from llmserve_ssm.models.mamba2 import Mamba2ForCausalLM
    from llmserve_ssm.models.nemotron_h import NemotronHForCausalLM

    return {"MambaForCausalLM": MambaForCausalLM,
            "Mamba2ForCausalLM": Mamba2ForCausalLM,
            "BambaForCausalLM": BambaForCausalLM,
            "NemotronHForCausalLM": NemotronHForCausalLM}


@hookimpl
def llmserve_cache_specs():
    from llmserve_ssm.cache import MambaStateSpec

    return {MambaStateSpec.kind: MambaStateSpec}
