"""llmserve-ssm: state-space models (Mamba, Mamba2, hybrids) for llmserve.

Only the torch reference kernels exist so far (`llmserve_ssm.ops`). They define the
semantics that the model code and the Triton kernels will be checked against.
"""

__version__ = "0.1.0"
